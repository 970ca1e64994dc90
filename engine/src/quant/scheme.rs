//! The numbers of the int8 scheme: how weights, activations and the int32 accumulator map to and
//! from integers. Everything here is scalar and is the definition the kernels must match.
//!
//! - **Weights**: symmetric int8 per output channel, `w ≈ scale[c] · q` with
//!   `scale[c] = max|w[c]| / qmax` and `q ∈ [-qmax, qmax]` (`qmax = 127`, or 63 where a kernel
//!   needs 7-bit weights; see [`crate::quant::gemm`]). -128 is never produced, as in torch's
//!   `per_channel_symmetric` with `reduce_range=False` and ONNX Runtime's symmetric weights.
//! - **Activations**: asymmetric u8 per tensor, `x ≈ scale · (q - zero_point)`, the range widened
//!   to contain 0 so that 0 (padding, ReLU's floor) is exactly representable.
//! - **Requantisation**: `out = clamp(round((acc + bias) · multiplier[c]) + zero_point)` with a
//!   float multiplier per channel (`in_scale · w_scale[c] / out_scale`); the input's zero point
//!   is folded into the int32 bias (`bias -= zp_in · Σ_k q_w`).
//!
//! Rounding is round-half-to-even everywhere (`f32::round_ties_even`): torch's quantize ops use
//! `std::nearbyint` under the default FP environment, which is half-to-even, and ONNX Runtime's
//! `QuantizeLinear` is specified as half-to-even too, so ours gives the same integers as both.

/// Largest weight magnitude of the full int8 scheme.
pub const WEIGHT_QMAX: i32 = 127;
/// Largest weight magnitude of the 7-bit scheme (`[-64, 63]` is what `vpmaddubsw` sums without
/// saturating; symmetric, so ±63).
pub const WEIGHT_QMAX_7BIT: i32 = 63;

/// Weights of one layer quantised per output channel.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeights {
    /// `[out][per_channel]` row-major, like the f32 input.
    pub values: Vec<i8>,
    /// One scale per output channel.
    pub scales: Vec<f32>,
    pub out_channels: usize,
    pub per_channel: usize,
}

impl QuantizedWeights {
    /// The weights back in f32 (`scale · q`): what a fake-quantised reference computes with.
    pub fn dequantize(&self) -> Vec<f32> {
        self.values.iter().enumerate().map(|(i, &q)| q as f32 * self.scales[i / self.per_channel]).collect()
    }

    /// `Σ_k q[c][k]` per channel: what the input zero point's correction multiplies.
    pub fn channel_sums(&self) -> Vec<i32> {
        self.values.chunks_exact(self.per_channel).map(|row| row.iter().map(|&q| q as i32).sum()).collect()
    }
}

/// Symmetric per-output-channel quantisation of `weights` (`[out][per_channel]`, e.g. a conv's
/// `[out, in, kh, kw]` flattened) to `[-qmax, qmax]`. A channel of zeros gets scale 1 (any scale
/// represents it exactly; 1 keeps the multiplier finite).
pub fn quantize_weights(weights: &[f32], out_channels: usize, qmax: i32) -> QuantizedWeights {
    assert!(
        out_channels > 0 && weights.len().is_multiple_of(out_channels),
        "weights do not split into {out_channels} channels"
    );
    assert!((1..=127).contains(&qmax), "qmax {qmax} out of 1..=127");
    let per_channel = weights.len() / out_channels;
    let mut values = Vec::with_capacity(weights.len());
    let mut scales = Vec::with_capacity(out_channels);
    for row in weights.chunks_exact(per_channel.max(1)).take(out_channels) {
        let max_abs = row.iter().fold(0.0f32, |m, w| m.max(w.abs()));
        let scale = if max_abs > 0.0 { max_abs / qmax as f32 } else { 1.0 };
        scales.push(scale);
        values.extend(row.iter().map(|&w| (w / scale).round_ties_even().clamp(-qmax as f32, qmax as f32) as i8));
    }
    QuantizedWeights { values, scales, out_channels, per_channel }
}

/// Per-tensor asymmetric u8 parameters: `x ≈ scale · (q - zero_point)`, `q ∈ [0, 255]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationQuant {
    pub scale: f32,
    pub zero_point: u8,
}

impl ActivationQuant {
    /// From a calibrated range, as torch's `MinMaxObserver` (quint8, affine) and ONNX Runtime's
    /// `compute_scale_zp` do: the range is widened to contain 0, `scale = (max - min) / 255`,
    /// `zero_point = round(-min / scale)` clamped to `[0, 255]`. An empty range (all zeros) gets
    /// scale 1, zero point 0.
    pub fn from_range(min: f32, max: f32) -> ActivationQuant {
        assert!(min.is_finite() && max.is_finite() && min <= max, "bad range [{min}, {max}]");
        let (min, max) = (min.min(0.0), max.max(0.0));
        if max == min {
            return ActivationQuant { scale: 1.0, zero_point: 0 };
        }
        let scale = (max - min) / 255.0;
        let zero_point = (-min / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        ActivationQuant { scale, zero_point }
    }

    /// `clamp(round(x / scale) + zero_point, 0, 255)`.
    #[inline]
    pub fn quantize(self, x: f32) -> u8 {
        ((x / self.scale).round_ties_even() + self.zero_point as f32).clamp(0.0, 255.0) as u8
    }

    #[inline]
    pub fn dequantize(self, q: u8) -> f32 {
        self.scale * (q as f32 - self.zero_point as f32)
    }

    /// The u8 the real value 0 maps to (exact by construction).
    pub fn zero(self) -> u8 {
        self.zero_point
    }
}

/// How one layer's int32 accumulators become its u8 output.
#[derive(Debug, Clone, PartialEq)]
pub struct Requant {
    /// Per output channel: the f32 bias in accumulator units, minus `zp_in · Σ_k q_w`.
    pub bias: Vec<i32>,
    /// Per output channel: `in_scale · w_scale[c] / out_scale`.
    pub multiplier: Vec<f32>,
    pub out_zero_point: u8,
    /// The output clamp in u8 (a fused ReLU is `lo = zero_point`; ReLU6 also sets `hi`).
    pub lo: u8,
    pub hi: u8,
    /// Hard-swish applied in the store, in output units; holds the output scale (see
    /// [`requantize_full`]).
    pub hardswish: Option<f32>,
    /// A residual map added in the store, after the activation (see [`requantize_full`]).
    pub residual: Option<ResidualQuant>,
}

/// How a residual map's u8 values join a store: `(r - zero_point) · multiplier` in output units,
/// `multiplier = residual_scale / out_scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResidualQuant {
    pub zero_point: u8,
    pub multiplier: f32,
}

impl ResidualQuant {
    pub fn new(residual: ActivationQuant, output: ActivationQuant) -> ResidualQuant {
        ResidualQuant { zero_point: residual.zero_point, multiplier: residual.scale / output.scale }
    }
}

impl Requant {
    /// For a layer with input parameters `input`, quantised weights `w`, f32 bias (or none) and
    /// output parameters `output`. The bias is rounded to the accumulator's scale
    /// (`in_scale · w_scale[c]`), as torch and ONNX Runtime quantise biases to int32.
    pub fn new(input: ActivationQuant, w: &QuantizedWeights, bias: Option<&[f32]>, output: ActivationQuant) -> Requant {
        let sums = w.channel_sums();
        let mut b = Vec::with_capacity(w.out_channels);
        let mut multiplier = Vec::with_capacity(w.out_channels);
        for c in 0..w.out_channels {
            let acc_scale = input.scale as f64 * w.scales[c] as f64;
            let fb = bias.map_or(0.0, |b| b[c] as f64);
            let qb = (fb / acc_scale).round_ties_even().clamp(i32::MIN as f64 / 2.0, i32::MAX as f64 / 2.0) as i64;
            b.push((qb - input.zero_point as i64 * sums[c] as i64) as i32);
            multiplier.push((acc_scale / output.scale as f64) as f32);
        }
        Requant {
            bias: b,
            multiplier,
            out_zero_point: output.zero_point,
            lo: 0,
            hi: 255,
            hardswish: None,
            residual: None,
        }
    }

    /// Clamps the output to the quantised image of `[lo, hi]` in real units (ReLU: `lo = 0`;
    /// ReLU6: `[0, 6]`).
    pub fn with_clamp(mut self, output: ActivationQuant, lo: Option<f32>, hi: Option<f32>) -> Requant {
        self.lo = lo.map_or(0, |x| output.quantize(x));
        self.hi = hi.map_or(255, |x| output.quantize(x));
        self
    }

    /// Hard-swish in the store (output parameters `output`).
    pub fn with_hardswish(mut self, output: ActivationQuant) -> Requant {
        self.hardswish = Some(output.scale);
        self
    }

    /// A residual map with parameters `residual` added in the store (output parameters
    /// `output`).
    pub fn with_residual(mut self, residual: ActivationQuant, output: ActivationQuant) -> Requant {
        self.residual = Some(ResidualQuant::new(residual, output));
        self
    }

    /// Channel `c`'s output for accumulator `acc` (a layer without a residual).
    #[inline]
    pub fn apply(&self, acc: i32, c: usize) -> u8 {
        debug_assert!(self.residual.is_none(), "a residual layer needs apply_with_residual");
        requantize_full(
            acc,
            self.bias[c],
            self.multiplier[c],
            self.out_zero_point,
            self.lo,
            self.hi,
            self.hardswish,
            None,
        )
    }

    /// Channel `c`'s output for accumulator `acc` and residual value `r` (ignored without a
    /// residual).
    #[inline]
    pub fn apply_with_residual(&self, acc: i32, c: usize, r: u8) -> u8 {
        let res = self.residual.map(|q| (r, q));
        requantize_full(
            acc,
            self.bias[c],
            self.multiplier[c],
            self.out_zero_point,
            self.lo,
            self.hi,
            self.hardswish,
            res,
        )
    }
}

/// The whole store, the definition every kernel matches bit for bit. In f32, in this order, with
/// no fused multiply-adds:
///
/// ```text
/// t = (acc + bias) · multiplier                       // the output in output-scale units
/// hard-swish:  g = clamp(t · out_scale + 3, 0, 6);  t = (t · g) · (1/6)
/// residual:    t = t + (r - zp_r) · multiplier_r
/// out = clamp(round_half_even(t) + zero_point, lo, hi)
/// ```
///
/// Hard-swish is `x · relu6(x + 3) / 6` with `x = t · out_scale` the real value.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn requantize_full(
    acc: i32,
    bias: i32,
    multiplier: f32,
    zero_point: u8,
    lo: u8,
    hi: u8,
    hardswish: Option<f32>,
    residual: Option<(u8, ResidualQuant)>,
) -> u8 {
    let mut t = acc.wrapping_add(bias) as f32 * multiplier;
    if let Some(out_scale) = hardswish {
        let g = (t * out_scale + 3.0).clamp(0.0, 6.0);
        t = t * g * HARDSWISH_SIXTH;
    }
    if let Some((r, q)) = residual {
        t += (r as f32 - q.zero_point as f32) * q.multiplier;
    }
    (t.round_ties_even() + zero_point as f32).clamp(lo as f32, hi as f32) as u8
}

/// `1/6` as the hard-swish store multiplies by it.
pub const HARDSWISH_SIXTH: f32 = 1.0 / 6.0;

/// `clamp(round_half_even((acc + bias) · multiplier) + zero_point, lo, hi)`. The product is
/// taken in f32, as the vector kernels will: `acc + bias` converts exactly below 2^24 in
/// magnitude, and beyond that its rounding is far below one output step.
#[inline]
pub fn requantize(acc: i32, bias: i32, multiplier: f32, zero_point: u8, lo: u8, hi: u8) -> u8 {
    let v = (acc.wrapping_add(bias) as f32 * multiplier).round_ties_even() + zero_point as f32;
    v.clamp(lo as f32, hi as f32) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so the tests need no dependency.
    fn floats(seed: u64, n: usize, spread: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * spread
            })
            .collect()
    }

    #[test]
    fn weights_match_the_f64_formula() {
        let (out, per) = (7, 19);
        let mut w = floats(1, out * per, 0.5);
        w[3 * per..4 * per].fill(0.0); // an all-zero channel
        w[5 * per] = -2.0; // a channel whose extreme is negative
        for qmax in [WEIGHT_QMAX, WEIGHT_QMAX_7BIT] {
            let q = quantize_weights(&w, out, qmax);
            for c in 0..out {
                let row = &w[c * per..(c + 1) * per];
                let max = row.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs()));
                let want_scale = if max > 0.0 { max / qmax as f64 } else { 1.0 };
                assert!((q.scales[c] as f64 - want_scale).abs() <= want_scale * 1e-6, "scale of channel {c}");
                for (j, &x) in row.iter().enumerate() {
                    let got = q.values[c * per + j] as i32;
                    assert!(got.abs() <= qmax);
                    // Within half a step of the exact quotient (ties may go either way by f32 rounding).
                    let exact = x as f64 / q.scales[c] as f64;
                    assert!((got as f64 - exact).abs() <= 0.5 + 1e-5, "channel {c} item {j}: {got} vs {exact}");
                }
                if max > 0.0 {
                    // The extreme maps to ±qmax exactly.
                    assert!(q.values[c * per..(c + 1) * per].iter().any(|&v| (v as i32).abs() == qmax));
                }
            }
            // Dequantised weights are within half a step.
            for (i, (&a, b)) in w.iter().zip(q.dequantize()).enumerate() {
                assert!((a - b).abs() <= q.scales[i / per] * 0.5 * (1.0 + 1e-5));
            }
        }
    }

    #[test]
    fn ties_round_to_even() {
        // Scale 1 (max 127): 2.5 -> 2, 3.5 -> 4, -2.5 -> -2, as torch's nearbyint does.
        let q = quantize_weights(&[127.0, 2.5, 3.5, -2.5, -3.5, 0.5], 1, 127);
        assert_eq!(q.scales, vec![1.0]);
        assert_eq!(q.values, vec![127, 2, 4, -2, -4, 0]);
        let a = ActivationQuant { scale: 1.0, zero_point: 10 };
        assert_eq!([a.quantize(0.5), a.quantize(1.5), a.quantize(-0.5)], [10, 12, 10]);
    }

    #[test]
    fn activation_ranges_keep_zero_exact() {
        for (min, max) in [(-1.0f32, 3.0f32), (0.0, 6.0), (0.5, 2.0), (-4.0, -1.0), (-0.37, 11.3), (0.0, 0.0)] {
            let a = ActivationQuant::from_range(min, max);
            let (lo, hi) = ((min as f64).min(0.0), (max as f64).max(0.0));
            if hi == lo {
                assert_eq!(a, ActivationQuant { scale: 1.0, zero_point: 0 });
                continue;
            }
            let scale = (hi - lo) / 255.0;
            let zp = (-lo / scale).round().clamp(0.0, 255.0);
            assert!((a.scale as f64 - scale).abs() <= scale * 1e-6);
            assert_eq!(a.zero_point as f64, zp, "range [{min}, {max}]");
            assert_eq!(a.dequantize(a.quantize(0.0)), 0.0, "0 is exact for [{min}, {max}]");
            // The range's ends are within half a step, and values beyond saturate.
            for x in [lo as f32, hi as f32] {
                assert!((a.dequantize(a.quantize(x)) - x).abs() <= a.scale * 0.5 * (1.0 + 1e-4));
            }
            assert_eq!(a.quantize(hi as f32 + 100.0 * a.scale), 255);
            assert_eq!(a.quantize(lo as f32 - 100.0 * a.scale), 0);
        }
    }

    #[test]
    fn requantisation_matches_the_f64_formula() {
        let input = ActivationQuant::from_range(-0.8, 5.0);
        let output = ActivationQuant::from_range(-2.0, 9.0);
        let (out, k) = (5, 33);
        let wf = floats(2, out * k, 0.3);
        let bias = floats(3, out, 0.7);
        let w = quantize_weights(&wf, out, WEIGHT_QMAX);
        let xs: Vec<f32> = floats(4, k, 1.0).iter().map(|v| (v + 1.0) * 2.9 - 0.8).collect();
        let xq: Vec<u8> = xs.iter().map(|&x| input.quantize(x)).collect();
        for relu in [false, true] {
            let mut r = Requant::new(input, &w, Some(&bias), output);
            if relu {
                r = r.with_clamp(output, Some(0.0), Some(6.0));
            }
            for (c, &fbias) in bias.iter().enumerate() {
                // The kernel's accumulator: Σ q_x · q_w (no zero point; the bias carries it).
                let acc: i32 = (0..k).map(|j| xq[j] as i32 * w.values[c * k + j] as i32).sum();
                let got = r.apply(acc, c);
                // The f64 formula on the dequantised operands.
                let real: f64 = (0..k)
                    .map(|j| input.dequantize(xq[j]) as f64 * (w.values[c * k + j] as f64 * w.scales[c] as f64))
                    .sum::<f64>()
                    + fbias as f64;
                let mut want = (real / output.scale as f64).round() + output.zero_point as f64;
                let (lo, hi) = if relu { (r.lo as f64, r.hi as f64) } else { (0.0, 255.0) };
                want = want.clamp(lo, hi);
                // Equal up to the bias's rounding to the accumulator scale (half a unit there,
                // which is far below one output step) and ties.
                assert!((got as f64 - want).abs() <= 1.0, "channel {c} relu {relu}: {got} vs {want}");
                let exact = (real / output.scale as f64 + output.zero_point as f64).clamp(lo, hi);
                assert!((got as f64 - exact).abs() <= 0.5 + 1e-3 + r.multiplier[c] as f64 * 0.5, "{got} vs {exact}");
            }
            if relu {
                assert_eq!(r.lo, output.zero_point);
                assert_eq!(r.hi, output.quantize(6.0));
            }
        }
    }

    #[test]
    fn requantize_rounds_and_saturates() {
        assert_eq!(requantize(5, 0, 0.5, 0, 0, 255), 2); // 2.5 -> 2
        assert_eq!(requantize(7, 0, 0.5, 0, 0, 255), 4); // 3.5 -> 4
        assert_eq!(requantize(-100, 0, 1.0, 10, 0, 255), 0);
        assert_eq!(requantize(1000, 0, 1.0, 10, 0, 255), 255);
        assert_eq!(requantize(1000, -990, 1.0, 10, 0, 255), 20);
        assert_eq!(requantize(50, 0, 1.0, 10, 12, 40), 40);
        assert_eq!(requantize(-50, 0, 1.0, 10, 12, 40), 12);
    }
}
