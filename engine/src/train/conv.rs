//! Convolutions that are GEMMs: the 1x1 (pointwise) convs, the squeeze-excite's FCs and the
//! Linears ([`Dense`]: a weight `[out][in]` with the packed copies the three products read),
//! and the stem (a full k x k conv from the NCHW images) through [`im2col`].

use super::gemm::{matmul, MatMul};
use crate::simd::{pad_channels, Isa};

/// A weight `[out][in]` (torch's layout; a conv's `[out, in, 1, 1]`, or the stem's
/// `[out, in·k·k]`) with an optional bias, and the copies the GEMMs read, packed in panels of
/// two vectors of columns ([`super::gemm::pack_panels`], for the ISA's lanes) and zero-padded:
/// `wt`, Wᵀ `[in][out_p]` (forward, `Y = X · Wᵀ`), and `wp`, W `[out][in_p]` (input grad,
/// `dX = dY · W`). The weight gradient comes out as `grad [out][in_p]` (row-major).
#[derive(Debug, Clone)]
pub struct Dense {
    pub out: usize,
    pub inp: usize,
    pub out_p: usize,
    pub in_p: usize,
    /// Parameter ids in the store.
    pub weight: usize,
    pub bias: Option<usize>,
    pub wt: Vec<f32>,
    pub wp: Vec<f32>,
    /// Panel strides of `wt` and `wp`, and the lanes they were packed for.
    pub wt_panel: usize,
    pub wp_panel: usize,
    pub lanes: usize,
    pub grad: Vec<f32>,
    pub bias_grad: Vec<f32>,
    /// The bias, padded to `out_p` (zeros without one).
    pub bias_p: Vec<f32>,
}

impl Dense {
    pub fn new(out: usize, inp: usize, weight: usize, bias: Option<usize>) -> Dense {
        let (out_p, in_p) = (pad_channels(out), pad_channels(inp));
        Dense {
            out,
            inp,
            out_p,
            in_p,
            weight,
            bias,
            wt: Vec::new(),
            wp: Vec::new(),
            wt_panel: 0,
            wp_panel: 0,
            lanes: 0,
            grad: vec![0.0; out * in_p],
            bias_grad: vec![0.0; out],
            bias_p: vec![0.0; out_p],
        }
    }

    /// Rebuilds the packed copies from torch's `[out][in]` (and the bias), for `lanes`.
    pub fn pack(&mut self, w: &[f32], bias: Option<&[f32]>, lanes: usize) {
        let (out, inp) = (self.out, self.inp);
        let pw = 2 * lanes;
        // W [out][in_p] in panels over the inputs: each panel row is a slice of a row of W.
        let panels_in = inp.div_ceil(pw);
        self.wp.resize(panels_in * out * pw, 0.0);
        for q in 0..panels_in {
            let cols = pw.min(inp - q * pw);
            for o in 0..out {
                let dst = &mut self.wp[(q * out + o) * pw..(q * out + o + 1) * pw];
                dst[..cols].copy_from_slice(&w[o * inp + q * pw..o * inp + q * pw + cols]);
                dst[cols..].fill(0.0);
            }
        }
        self.wp_panel = out * pw;
        // Wᵀ [in][out_p] in panels over the outputs: each row of W becomes a panel column.
        let panels_out = out.div_ceil(pw);
        self.wt.resize(panels_out * inp * pw, 0.0);
        for q in 0..panels_out {
            let cols = pw.min(out - q * pw);
            let panel = &mut self.wt[q * inp * pw..(q + 1) * inp * pw];
            for c in 0..cols {
                let row = &w[(q * pw + c) * inp..(q * pw + c + 1) * inp];
                for (i, &v) in row.iter().enumerate() {
                    panel[i * pw + c] = v;
                }
            }
            if cols < pw {
                for i in 0..inp {
                    panel[i * pw + cols..(i + 1) * pw].fill(0.0);
                }
            }
        }
        self.wt_panel = inp * pw;
        self.lanes = lanes;
        if let Some(b) = bias {
            self.bias_p[..self.out].copy_from_slice(b);
        }
    }

    /// The weight gradient in torch's `[out][in]`.
    pub fn export_grad(&self, g: &mut [f32]) {
        for o in 0..self.out {
            g[o * self.inp..(o + 1) * self.inp].copy_from_slice(&self.grad[o * self.in_p..o * self.in_p + self.inp]);
        }
    }

    /// `y [rows][ldy] = x [rows][ldx] · Wᵀ` (no bias).
    pub fn forward(&self, isa: Isa, x: *const f32, ldx: usize, rows: usize, y: *mut f32, ldy: usize) {
        matmul(
            isa,
            &MatMul {
                m: rows,
                n: self.out_p,
                k: self.inp,
                a: x,
                lda: ldx,
                trans_a: false,
                b: self.wt.as_ptr(),
                ldb: 2 * self.lanes,
                b_panel: self.wt_panel,
                c: y,
                ldc: ldy,
                accumulate: false,
            },
        );
    }

    /// `grad = dyᵀ · x` over `rows` (dy `[rows][ldd]`, x `[rows][ldx]`).
    pub fn backward_weight(&mut self, isa: Isa, dy: *const f32, ldd: usize, x: *const f32, ldx: usize, rows: usize) {
        let c = self.grad.as_mut_ptr();
        matmul(
            isa,
            &MatMul {
                m: self.out,
                n: self.in_p,
                k: rows,
                a: dy,
                lda: ldd,
                trans_a: true,
                b: x,
                ldb: ldx,
                b_panel: 0,
                c,
                ldc: self.in_p,
                accumulate: false,
            },
        );
    }

    /// `dx [rows][ldx] = dy [rows][ldd] · W` (all `in_p` columns written).
    pub fn backward_input(&self, isa: Isa, dy: *const f32, ldd: usize, rows: usize, dx: *mut f32, ldx: usize) {
        matmul(
            isa,
            &MatMul {
                m: rows,
                n: self.in_p,
                k: self.out,
                a: dy,
                lda: ldd,
                trans_a: false,
                b: self.wp.as_ptr(),
                ldb: 2 * self.lanes,
                b_panel: self.wp_panel,
                c: dx,
                ldc: ldx,
                accumulate: false,
            },
        );
    }
}

/// The stem's patches: for images `n0..n1` of an NCHW batch, one row per output pixel,
/// `[(n · oh + oy) · ow + ox][ci · k · k + ky · k + kx]` (torch's weight order, so the stem's
/// weight is a [`Dense`] `[out][cin · k · k]` as stored), zero outside the image and in the
/// padding columns up to `ld`.
///
/// # Safety
/// `col` must be valid for `n1 · oh · ow` rows of `ld` floats.
pub unsafe fn im2col(
    images: &[f32],
    n0: usize,
    n1: usize,
    cin: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    oh: usize,
    ow: usize,
    ld: usize,
    col: *mut f32,
) {
    let pad = (k - 1) / 2;
    for n in n0..n1 {
        let img = &images[n * cin * h * w..(n + 1) * cin * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let row = unsafe { std::slice::from_raw_parts_mut(col.add(((n * oh + oy) * ow + ox) * ld), ld) };
                row.fill(0.0);
                for ci in 0..cin {
                    for ky in 0..k {
                        let iy = (oy * stride + ky) as isize - pad as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..k {
                            let ix = (ox * stride + kx) as isize - pad as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            row[(ci * k + ky) * k + kx] = img[(ci * h + iy as usize) * w + ix as usize];
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::gemm::pack_panels;

    /// The packed copies are [`pack_panels`] of Wᵀ and W, for every lane width.
    #[test]
    fn dense_packing_matches_pack_panels() {
        for &(out, inp) in &[(10usize, 27usize), (96, 16), (40, 72), (1000, 1280), (17, 33)] {
            let w: Vec<f32> = (0..out * inp).map(|i| i as f32 * 0.5 - 3.0).collect();
            let mut wt = vec![0.0; inp * out];
            for o in 0..out {
                for i in 0..inp {
                    wt[i * out + o] = w[o * inp + i];
                }
            }
            for lanes in [8, 16] {
                let mut d = Dense::new(out, inp, 0, None);
                d.pack(&w, None, lanes);
                assert_eq!((d.wt.clone(), d.wt_panel), pack_panels(&wt, inp, out, out, lanes), "{out}x{inp} wt");
                assert_eq!((d.wp.clone(), d.wp_panel), pack_panels(&w, out, inp, inp, lanes), "{out}x{inp} wp");
            }
        }
    }
}
