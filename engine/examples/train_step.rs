//! Speed probe of the engine's CPU training: times full training steps (forward in train mode,
//! loss, backward, and a plain SGD update) on random data.
//!
//! ```text
//! cargo run --release -p mobilenet-engine --example train_step -- \
//!     --model v3_small --batch 128 --image-size 32 --threads 2 [--steps 10] [--classes 10] [--width 1.0]
//! ```
//! Prints `median_ms` and `images_per_s` (from the median step).

use std::time::Instant;

use mobilenet_engine::train::{TrainConfig, Trainer};
use mobilenet_engine::{Arch, ModelSpec};

fn main() {
    let mut model = "v3_small".to_string();
    let (mut batch, mut size, mut threads, mut steps, mut classes, mut width) =
        (128usize, 32usize, 2usize, 10usize, 10usize, 1.0f64);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--model" => model = value,
            "--batch" => batch = value.parse().expect("--batch"),
            "--image-size" => size = value.parse().expect("--image-size"),
            "--threads" => threads = value.parse().expect("--threads"),
            "--steps" => steps = value.parse().expect("--steps"),
            "--classes" => classes = value.parse().expect("--classes"),
            "--width" => width = value.parse().expect("--width"),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    let arch = Arch::parse(&model).expect("--model v1|v2|v3_large|v3_small");
    let spec = ModelSpec::new(arch).with_num_classes(classes).with_width_mult(width);
    let config = TrainConfig::new(arch, batch, size, size).with_threads(threads);
    let mut trainer = Trainer::new(&spec, config).expect("trainer");
    let mut state = 1u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let images: Vec<f32> = (0..batch * 3 * size * size).map(|_| next() * 2.0 - 1.0).collect();
    let labels: Vec<usize> = (0..batch).map(|_| (next() * classes as f32) as usize % classes).collect();
    // Warm-up (page faults, caches).
    trainer.step(&images, &labels).expect("step");
    trainer.sgd(0.01);
    let mut times = Vec::new();
    let mut loss = 0.0;
    let cpu0 = cpu_seconds();
    for _ in 0..steps {
        let t = Instant::now();
        loss = trainer.step(&images, &labels).expect("step");
        trainer.sgd(0.01);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let cpu_ms = (cpu_seconds() - cpu0) / steps as f64 * 1e3;
    times.sort_by(f64::total_cmp);
    if std::env::var("PROFILE").is_ok() {
        trainer.start_profile();
        for _ in 0..3 {
            trainer.step(&images, &labels).expect("step");
            trainer.sgd(0.01);
        }
        let mut prof = trainer.take_profile();
        let total: f64 = prof.iter().map(|p| p.seconds).sum();
        prof.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        for p in prof.iter().take(15) {
            println!(
                "{:>7.2} ms {:>5.1}%  {:<16} {:<14} {}",
                p.seconds / 3.0 * 1e3,
                p.seconds / total * 100.0,
                p.phase,
                p.kind,
                p.key
            );
        }
        let mut kinds: Vec<(&str, &str, f64)> = Vec::new();
        for p in &prof {
            match kinds.iter_mut().find(|k| k.0 == p.kind && k.1 == p.phase) {
                Some(k) => k.2 += p.seconds,
                None => kinds.push((p.kind, p.phase, p.seconds)),
            }
        }
        kinds.sort_by(|a, b| b.2.total_cmp(&a.2));
        println!("by kind (total {:.1} ms):", total / 3.0 * 1e3);
        for (kind, phase, t) in kinds {
            println!("{:>7.2} ms {:>5.1}%  {phase:<16} {kind}", t / 3.0 * 1e3, t / total * 100.0);
        }
    }
    let median = times[times.len() / 2];
    println!(
        "model={} batch={batch} image_size={size} threads={threads} classes={classes} width={width} isa={} arena_mb={:.0} loss={loss:.4}",
        arch.name(),
        trainer.isa(),
        trainer.arena_bytes() as f64 / 1e6
    );
    println!(
        "min_ms={:.1} median_ms={median:.1} max_ms={:.1} images_per_s={:.0}",
        times[0],
        times[times.len() - 1],
        batch as f64 / median * 1e3
    );
    // CPU time of the process per step (all threads, spinning included): with one thread, a
    // figure a busy machine disturbs less than the wall clock.
    println!("cpu_ms_per_step={cpu_ms:.1}");
}

/// User + system CPU seconds of this process (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which is in parentheses): utime is the 14th, stime the 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
