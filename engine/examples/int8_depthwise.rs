//! Speed of the int8 depthwise kernels against the f32 depthwise kernel at MobileNet V2's
//! depthwise shapes, one thread (issue 14):
//!
//! ```text
//! cargo run --release -p mobilenet-engine --example int8_depthwise
//! ```
//!
//! Every kernel this CPU has runs in each round, in turn, so a busy machine's noise hits all of
//! them alike; the table gives medians (`MIN=1`: the fastest round). `RUNS=n` sets the rounds
//! (default 30), `SHAPE=i` runs the i-th shape alone, `V3=1` adds V3-Large's 5x5 layers,
//! `SHAPES="h,w,c,k,s;..."` runs those shapes instead, `PORTABLE=0` leaves the portable int8 kernel out, `W7=0` the 7-bit-weight runs (`int8 <isa>
//! w7`: what an AVX2-only CPU's network quantises to).

use mobilenet_engine::quant::depthwise::speed_probe;

fn main() {
    // MIN=1: the fastest round instead of the median; MEAN=1: the mean.
    let min = std::env::var("MIN").is_ok_and(|v| v == "1");
    let mean = std::env::var("MEAN").is_ok_and(|v| v == "1");
    let pick = |s: &mobilenet_engine::quant::depthwise::DepthwiseSpeed| {
        if min {
            s.min_ms
        } else if mean {
            s.mean_ms
        } else {
            s.ms
        }
    };
    let runs = std::env::var("RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    // (h, w, c, kernel, stride): V2's depthwise layers at 224x224 (input sizes).
    let mut shapes =
        vec![(112, 112, 96, 3, 2), (56, 56, 144, 3, 1), (28, 28, 192, 3, 1), (14, 14, 576, 3, 1), (7, 7, 960, 3, 1)];
    // V3=1: V3-Large's 5x5 layers too.
    if std::env::var("V3").is_ok_and(|v| v == "1") {
        shapes.extend([(56, 56, 72, 5, 2), (28, 28, 120, 5, 1), (14, 14, 672, 5, 2), (7, 7, 960, 5, 1)]);
    }
    // SHAPES="h,w,c,k,s;...": these shapes instead.
    if let Ok(v) = std::env::var("SHAPES") {
        shapes = v
            .split(';')
            .map(|t| {
                let n: Vec<usize> = t.split(',').map(|x| x.trim().parse().expect("SHAPES: h,w,c,k,s;...")).collect();
                assert_eq!(n.len(), 5, "SHAPES: h,w,c,k,s;...");
                (n[0], n[1], n[2], n[3], n[4])
            })
            .collect();
    }
    let stat = if min {
        "fastest"
    } else if mean {
        "mean"
    } else {
        "median"
    };
    println!("one thread, {stat} of {runs} rounds; ratio = f32 time / int8 time at the same vector width");
    // PORTABLE=0: leave the (slow) portable int8 kernel out.
    let portable = std::env::var("PORTABLE").map_or(true, |v| v != "0");
    // W7=0: 8-bit weights only.
    let seven_bit = std::env::var("W7").map_or(true, |v| v != "0");
    // SHAPE=i: only the i-th shape (for profiling).
    let only: Option<usize> = std::env::var("SHAPE").ok().and_then(|v| v.parse().ok());
    for (i, (h, w, c, k, s)) in shapes.into_iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let speeds = speed_probe(h, w, c, k, s, runs, portable, seven_bit);
        let ms = |name: &str| speeds.iter().find(|x| x.kernel == name).map(pick);
        let mut line = format!("{h:>3}x{w:<3}x{c:<4} {k}x{k} s{s}:");
        for s in &speeds {
            line += &format!("  {} {:.3} ms", s.kernel, pick(s));
        }
        for (i8name, f32name) in
            [("int8 avx512-vnni", "f32 avx512"), ("int8 avx2", "f32 avx2+fma"), ("int8 avx2 w7", "f32 avx2+fma")]
        {
            if let (Some(a), Some(b)) = (ms(i8name), ms(f32name)) {
                line += &format!("  [{i8name} vs {f32name}: {:.2}x]", b / a);
            }
        }
        println!("{line}");
    }
}
