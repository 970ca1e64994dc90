//! The engine on its own, without the training stack: `bench` and `run` on a weights file.
//!
//! mobilenet-engine bench --model NAME [--width-mult W] [--batch N] [--threads T] [--image-size S] [--weights FILE]
//! mobilenet-engine run --weights FILE --input FILE.safetensors [--tensor NAME]

use std::time::Duration;

use mobilenet_engine::{bench, Arch, Engine, EngineOptions, Images, ModelSpec};

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
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
            let result = bench::measure(batch, 3, 10, Duration::from_secs_f64(seconds), || {
                engine.run(&images).expect("run");
            });
            println!("model: {} width {} isa {} threads {}", engine.spec().arch, engine.spec().width_mult, engine.isa(), engine.threads());
            println!("{}", result.report());
        }
        _ => return Err("usage: mobilenet-engine bench --model NAME [--width-mult W] [--batch N] [--threads T] [--image-size S] [--weights FILE]".into()),
    }
    Ok(())
}
