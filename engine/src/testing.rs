//! Test support (the `testing` feature): the deterministic tensor filler mirrored from
//! tools/fixtures/make_fixtures.py. The parity fixtures' inputs and weights are these numbers,
//! so tests regenerate them instead of storing them. Used by the engine's tests and by the
//! `mobilenet` crate's (both enable the feature as a dev-dependency).

/// The torchvision parity fixtures' models: (torchvision constructor, width), as in
/// make_fixtures.py; parity.safetensors holds `{name}_w{width:.1}.logits` for each.
pub const EVAL_CASES: [(&str, f64); 7] = [
    ("mobilenet_v1", 1.0),
    ("mobilenet_v2", 1.0),
    ("mobilenet_v3_large", 1.0),
    ("mobilenet_v3_small", 1.0),
    ("mobilenet_v2", 0.5),
    ("mobilenet_v3_large", 0.5),
    ("mobilenet_v3_small", 0.5),
];

fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xCBF29CE484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001B3);
    }
    h
}

/// n floats in [-1, 1): splitmix64 keyed by FNV-1a(name), as in make_fixtures.py.
pub fn uniform(name: &str, n: usize) -> Vec<f32> {
    let seed = fnv1a64(name);
    (1..=n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_mul(0x9E3779B97F4A7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            let u = (z >> 40) as f64 / (1u64 << 24) as f64;
            (u * 2.0 - 1.0) as f32
        })
        .collect()
}

/// The deterministic value of a state_dict tensor (torch layout), as in make_fixtures.py.
pub fn fill(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let u = uniform(name, n);
    let leaf = name.rsplit('.').next().unwrap();
    match leaf {
        "running_var" => u.iter().map(|v| 1.0f32 + 0.5f32 * v).collect(),
        "running_mean" | "bias" => u.iter().map(|v| 0.1f32 * v).collect(),
        "weight" if shape.len() == 1 => u.iter().map(|v| 1.0f32 + 0.25f32 * v).collect(),
        _ => {
            let fan_in: usize = shape[1..].iter().product();
            let a = (3.0f64 / fan_in as f64).sqrt() as f32;
            u.iter().map(|v| v * a).collect()
        }
    }
}
