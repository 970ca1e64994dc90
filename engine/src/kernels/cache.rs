//! The data-cache sizes the GEMM's blocking is shaped for, read once per process.
//!
//! Linux reports each core's caches under `/sys/devices/system/cpu/cpu0/cache/index*/` (level,
//! type, size); elsewhere, or where that is missing, the sizes default to the smallest of the
//! x86 cores this engine targets (32 KB L1d, 512 KB L2: AMD Zen 2/3, Intel Skylake client), so
//! an unknown machine gets the conservative blocking. `MOBILENET_ENGINE_L2_KB` overrides the L2
//! size (to try another machine's blocking, or a core whose L2 is shared).

use std::sync::OnceLock;

/// Per-core data-cache sizes in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSizes {
    pub l1d: usize,
    pub l2: usize,
}

impl CacheSizes {
    pub const FALLBACK: CacheSizes = CacheSizes { l1d: 32 * 1024, l2: 512 * 1024 };

    /// This machine's, read once.
    pub fn get() -> CacheSizes {
        static SIZES: OnceLock<CacheSizes> = OnceLock::new();
        *SIZES.get_or_init(|| {
            let mut sizes = Self::detect().unwrap_or(Self::FALLBACK);
            let l2_kb = std::env::var("MOBILENET_ENGINE_L2_KB").ok().and_then(|v| v.trim().parse::<usize>().ok());
            if let Some(kb) = l2_kb.filter(|&kb| kb >= 64) {
                sizes.l2 = kb * 1024;
            }
            sizes
        })
    }

    #[cfg(target_os = "linux")]
    fn detect() -> Option<CacheSizes> {
        let (mut l1d, mut l2) = (None, None);
        for index in 0..8 {
            let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{index}");
            let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).ok();
            let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size")) else {
                continue;
            };
            let size = parse_size(size.trim())?;
            match (level.trim(), kind.trim()) {
                ("1", "Data") => l1d = Some(size),
                ("2", "Data" | "Unified") => l2 = Some(size),
                _ => {}
            }
        }
        // Implausible figures (a hypervisor's zeros) fall back.
        let l1d = l1d.filter(|s| (8 * 1024..=1024 * 1024).contains(s))?;
        let l2 = l2.filter(|s| (128 * 1024..=64 * 1024 * 1024).contains(s))?;
        Some(CacheSizes { l1d, l2 })
    }

    #[cfg(not(target_os = "linux"))]
    fn detect() -> Option<CacheSizes> {
        None
    }
}

/// `48K`, `1024K`, `2M`, `512` (bytes).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_size(s: &str) -> Option<usize> {
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    };
    let n: usize = digits.parse().ok()?;
    match unit {
        "" => Some(n),
        "K" | "KB" | "KiB" => Some(n * 1024),
        "M" | "MB" | "MiB" => Some(n * 1024 * 1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("48K"), Some(48 * 1024));
        assert_eq!(parse_size("2M"), Some(2 * 1024 * 1024));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("x"), None);
        let sizes = CacheSizes::get();
        assert!(sizes.l1d >= 8 * 1024 && sizes.l2 >= 64 * 1024, "{sizes:?}");
    }
}
