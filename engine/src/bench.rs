//! Latency measurement shared by the `bench` commands: warm up, then time repeated runs and
//! report the median and the minimum.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct BenchResult {
    pub median_ms: f64,
    pub min_ms: f64,
    pub runs: usize,
    pub batch: usize,
}

impl BenchResult {
    pub fn images_per_s(&self) -> f64 {
        self.batch as f64 / (self.median_ms / 1e3)
    }

    /// The lines scripts parse: `median_ms: X`, `min_ms: X`, `images_per_s: Y`.
    pub fn report(&self) -> String {
        format!(
            "median_ms: {:.3}\nmin_ms: {:.3}\nimages_per_s: {:.1}\nruns: {}",
            self.median_ms,
            self.min_ms,
            self.images_per_s(),
            self.runs
        )
    }
}

/// Runs `step` `warmup` times untimed, then until both `min_runs` runs and `min_time` have
/// passed; one call of `step` processes `batch` images.
pub fn measure(
    batch: usize,
    warmup: usize,
    min_runs: usize,
    min_time: Duration,
    mut step: impl FnMut(),
) -> BenchResult {
    for _ in 0..warmup {
        step();
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < min_runs || start.elapsed() < min_time {
        let t = Instant::now();
        step();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    BenchResult { median_ms: times[times.len() / 2], min_ms: times[0], runs: times.len(), batch }
}
