//! Which int8 kernels a CPU runs, picked at run time like the f32 [`crate::Isa`].

use std::fmt;

/// The instruction set of the int8 kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Isa {
    /// AVX512-VNNI: `vpdpbusd` on zmm (u8 · s8, four products summed into each i32 lane in one
    /// instruction). Zen 4, Intel since Ice Lake.
    Vnni512,
    /// AVX2: `vpmaddubsw` + `vpmaddwd`, or a widening `vpmaddwd` path for weights outside 7 bits
    /// (see [`crate::quant::gemm`]).
    Avx2,
    /// Plain Rust; any CPU.
    Portable,
}

impl Int8Isa {
    /// The best this CPU has. `MOBILENET_ENGINE_INT8_ISA=portable|avx2|vnni512` caps it (a request
    /// for more than the CPU has falls back to what it has); without it, the f32 kernels' cap
    /// `MOBILENET_ENGINE_ISA=portable|avx2` caps these too (`avx2`: the AVX2 int8 kernels, so
    /// an AVX2-proxy run measures what an AVX2-only CPU would run).
    pub fn detect() -> Int8Isa {
        Self::capped(
            Self::best_available(),
            std::env::var("MOBILENET_ENGINE_INT8_ISA").ok().as_deref(),
            std::env::var("MOBILENET_ENGINE_ISA").ok().as_deref(),
        )
    }

    /// `best` under the two overrides' values (unknown values are ignored).
    fn capped(best: Int8Isa, int8: Option<&str>, f32: Option<&str>) -> Int8Isa {
        let parse = |v: &str| match v.trim() {
            "portable" => Some(Int8Isa::Portable),
            "avx2" => Some(Int8Isa::Avx2),
            "vnni512" | "avx512vnni" => Some(Int8Isa::Vnni512),
            _ => None,
        };
        let from_f32 = |v: &str| match v.trim() {
            "portable" => Some(Int8Isa::Portable),
            "avx2" => Some(Int8Isa::Avx2),
            _ => None,
        };
        match int8.and_then(parse).or_else(|| f32.and_then(from_f32)) {
            Some(w) if w.rank() < best.rank() => w,
            _ => best,
        }
    }

    fn rank(self) -> u8 {
        match self {
            Int8Isa::Portable => 0,
            Int8Isa::Avx2 => 1,
            Int8Isa::Vnni512 => 2,
        }
    }

    fn best_available() -> Int8Isa {
        #[cfg(engine_x86)]
        {
            let avx2 = is_x86_feature_detected!("avx2");
            if avx2 && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni") {
                return Int8Isa::Vnni512;
            }
            if avx2 {
                return Int8Isa::Avx2;
            }
        }
        Int8Isa::Portable
    }

    /// Every int8 instruction set this CPU can run (for tests that cover all paths).
    pub fn all_available() -> Vec<Int8Isa> {
        let best = Self::best_available();
        [Int8Isa::Vnni512, Int8Isa::Avx2, Int8Isa::Portable].into_iter().filter(|i| i.rank() <= best.rank()).collect()
    }

    pub fn is_available(self) -> bool {
        self.rank() <= Self::best_available().rank()
    }
}

impl fmt::Display for Int8Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Int8Isa::Vnni512 => "avx512-vnni",
            Int8Isa::Avx2 => "avx2",
            Int8Isa::Portable => "portable",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_is_consistent() {
        let all = Int8Isa::all_available();
        assert!(all.contains(&Int8Isa::Portable));
        assert!(all.contains(&Int8Isa::detect()));
        #[cfg(not(engine_x86))]
        assert_eq!(all, vec![Int8Isa::Portable]);
    }

    #[test]
    fn overrides_cap_and_never_raise() {
        use Int8Isa::*;
        let c = Int8Isa::capped;
        assert_eq!(c(Vnni512, None, None), Vnni512);
        assert_eq!(c(Vnni512, Some("avx2"), None), Avx2);
        assert_eq!(c(Vnni512, Some(" portable "), None), Portable);
        assert_eq!(c(Avx2, Some("vnni512"), None), Avx2); // more than the CPU has
        assert_eq!(c(Portable, Some("avx2"), None), Portable);
        assert_eq!(c(Vnni512, Some("nonsense"), None), Vnni512);
        // The f32 cap applies when the int8 one is absent or unknown.
        assert_eq!(c(Vnni512, None, Some("avx2")), Avx2);
        assert_eq!(c(Vnni512, None, Some("portable")), Portable);
        assert_eq!(c(Vnni512, None, Some("avx512")), Vnni512);
        assert_eq!(c(Vnni512, Some("vnni512"), Some("portable")), Vnni512);
        assert_eq!(c(Vnni512, Some("portable"), Some("avx2")), Portable);
    }
}
