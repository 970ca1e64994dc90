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
    /// for more than the CPU has falls back to what it has); `MOBILENET_ENGINE_ISA=portable`, which
    /// caps the f32 kernels, caps these too, so one switch gives a portable-only run.
    pub fn detect() -> Int8Isa {
        let best = Self::best_available();
        let cap = |v: &str| match v.trim() {
            "portable" => Some(Int8Isa::Portable),
            "avx2" => Some(Int8Isa::Avx2),
            "vnni512" | "avx512vnni" => Some(Int8Isa::Vnni512),
            _ => None,
        };
        let wanted = std::env::var("MOBILENET_ENGINE_INT8_ISA").ok().and_then(|v| cap(&v)).or_else(|| {
            std::env::var("MOBILENET_ENGINE_ISA").ok().filter(|v| v.trim() == "portable").map(|_| Int8Isa::Portable)
        });
        match wanted {
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
}
