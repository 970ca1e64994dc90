//! The engine on its own, without the training stack (a 1.6 MB binary).
//!
//! mobilenet-engine bench --model NAME [--width-mult W] [--batch N] [--threads T] [--image-size S] [--weights FILE] [--profile]
//! mobilenet-engine run --weights FILE --input FILE.safetensors [--tensor NAME] [--threads T]
//!
//! `run` reads an `[N, 3, H, W]` f32 tensor (default name `input`, as `mobilenet infer` reads)
//! and prints each image's top class and logit.

use std::time::Duration;

use mobilenet_engine::{bench, Arch, Engine, EngineOptions, Images, ModelSpec};

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The calling thread's CPU time, in ms (0 where there is no such clock).
fn thread_cpu_ms() -> f64 {
    #[cfg(target_os = "linux")]
    {
        let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `t` is a valid timespec to write.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0 {
            return t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6;
        }
    }
    0.0
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn parse<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, String> {
    match flag(args, name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("{name}: cannot parse '{v}'")),
    }
}

fn real_main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads = parse(&args, "--threads", 1usize)?;
    let options = EngineOptions::default().with_threads(threads);
    match args.first().map(String::as_str) {
        Some("bench") => {
            let engine = match flag(&args, "--weights") {
                Some(path) => Engine::load_with(path, options)?,
                None => {
                    let name = flag(&args, "--model").ok_or("bench needs --model NAME or --weights FILE")?;
                    let arch: Arch = name.parse()?;
                    let spec = ModelSpec::new(arch).with_width_mult(parse(&args, "--width-mult", 1.0)?);
                    Engine::random(&spec, 0, options)?
                }
            };
            let batch = parse(&args, "--batch", 1usize)?;
            let size = parse(&args, "--image-size", 224usize)?;
            let pixels: Vec<f32> = (0..batch * 3 * size * size).map(|i| ((i % 251) as f32 / 125.0) - 1.0).collect();
            let images = Images::new(&pixels, batch, size, size)?;
            let seconds = parse(&args, "--seconds", 3.0f64)?;
            // The calling thread's CPU time per run, besides wall time: on a shared machine a
            // run that is descheduled for a while keeps its CPU time (1 thread only).
            let mut cpu_ms = Vec::new();
            let result = bench::measure(batch, 3, 10, Duration::from_secs_f64(seconds), || {
                let t = thread_cpu_ms();
                engine.run(&images).expect("run");
                cpu_ms.push(thread_cpu_ms() - t);
            });
            println!("model: {} width {} isa {} threads {}", engine.spec().arch, engine.spec().width_mult, engine.isa(), engine.threads());
            println!("{}", result.report());
            if engine.threads() == 1 && cfg!(target_os = "linux") {
                let timed = &mut cpu_ms[3..];
                timed.sort_by(f64::total_cmp);
                println!("median_cpu_ms: {:.3}\nmin_cpu_ms: {:.3}", timed[timed.len() / 2], timed[0]);
            }
            if args.iter().any(|a| a == "--profile") {
                let peak = engine.fma_peak_gmacs();
                let (l1d, l2) = engine.cache_sizes();
                println!(
                    "fma peak: {peak:.1} GMAC/s ({} on one core, measured); caches: L1d {} KB, L2 {} KB",
                    engine.isa(),
                    l1d / 1024,
                    l2 / 1024
                );
                print_profile(&engine.profile(&images, 50), peak);
            }
        }
        Some("run") => {
            let weights = flag(&args, "--weights").ok_or("run needs --weights FILE")?;
            let input = flag(&args, "--input").ok_or("run needs --input FILE.safetensors")?;
            let name = flag(&args, "--tensor").unwrap_or("input");
            let engine = Engine::load_with(weights, options)?;
            let (_, tensors) = mobilenet_engine::read_safetensors(std::path::Path::new(input))?;
            let (shape, data) = tensors.get(name).ok_or_else(|| format!("{input}: no tensor '{name}'"))?;
            let images = Images::from_shape(data, shape).map_err(|e| format!("{input}: {e}"))?;
            let logits = engine.run(&images)?;
            for i in 0..logits.batch {
                let k = logits.argmax(i);
                println!("image {i}: class {k} (logit {:.4})", logits.row(i)[k]);
            }
        }
        _ => return Err("usage: mobilenet-engine bench --model NAME [--width-mult W] [--batch N] [--threads T] [--image-size S] [--weights FILE] [--profile]\n       mobilenet-engine run --weights FILE --input FILE.safetensors [--tensor NAME] [--threads T]".into()),
    }
    Ok(())
}

/// Per layer and per kind: time, MACs, GMAC/s and bytes (the "measure before optimising").
fn print_profile(layers: &[mobilenet_engine::LayerProfile], peak: f64) {
    let total: f64 = layers.iter().map(|l| l.ms).sum();
    let total_net: f64 = layers.iter().map(|l| l.ms_in_network).sum();
    println!(
        "{:>3}  {:<30} {:>9} {:>8} {:>8} {:>9} {:>8} {:>6} {:>7}",
        "#", "layer", "out", "alone ms", "in net", "MMACs", "GMAC/s", "%peak", "KB"
    );
    for (i, l) in layers.iter().enumerate() {
        let in_net = if l.fused { "(fused)".to_string() } else { format!("{:.3}", l.ms_in_network) };
        println!(
            "{:>3}  {:<30} {:>9} {:>8.3} {:>8} {:>9.2} {:>8.1} {:>6.0} {:>7}",
            i,
            l.kind,
            format!("{}x{}", l.out_hw.0, l.out_hw.1),
            l.ms,
            in_net,
            l.macs as f64 / 1e6,
            l.macs as f64 / l.ms / 1e6,
            100.0 * l.macs as f64 / l.ms / 1e6 / peak,
            l.bytes / 1024
        );
    }
    let mut kinds: Vec<(String, f64, usize)> = Vec::new();
    for l in layers {
        let kind = l.kind.split_whitespace().next().unwrap_or("").to_string();
        match kinds.iter_mut().find(|k| k.0 == kind) {
            Some(k) => {
                k.1 += l.ms;
                k.2 += l.macs;
            }
            None => kinds.push((kind, l.ms, l.macs)),
        }
    }
    println!("\nby kind, each step alone (sum {total:.3} ms; in whole passes the steps take {total_net:.3} ms):");
    for (kind, ms, macs) in kinds {
        println!(
            "  {kind:<16} {ms:>8.3} ms {:>5.1}%  {:>8.1} MMACs  {:>6.1} GMAC/s {:>4.0}% of peak",
            100.0 * ms / total,
            macs as f64 / 1e6,
            macs as f64 / ms / 1e6,
            100.0 * macs as f64 / ms / 1e6 / peak
        );
    }
}
