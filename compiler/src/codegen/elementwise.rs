//! Elementwise and data-movement kernels (simple, not tuned): relu, add, copy ([`FlatPlan`]), batch norm
//! ([`BatchNormPlan`]), zero padding ([`ZeroPadPlan`]) and softmax over the last axis ([`SoftmaxPlan`]).
//!
//! - Relu, add and copy run over the flat tensor in blocks of [`BLOCK`] floats, one task per block, four
//!   lanes at a time (f32x4) with a scalar tail in the last block. Relu is `x < 0 ? 0 : x`, so a NaN passes
//!   through as in the reference.
//! - Batch norm runs per pixel (one task per group of pixels) over the channel (last) axis, four channels at
//!   a time with a lane-wise tail. Its per-channel `scale = gamma / sqrt(var + eps)` is computed at compile
//!   time exactly as the reference does, and `y = (x - mean) * scale + beta` keeps the reference's order of
//!   f32 operations (no FMA), so results match it bit for bit.
//! - Zero padding writes whole output rows (zeros, the input row, zeros), one task per group of rows; every
//!   output element is written on every call (arena buffers are reused).
//! - Softmax copies each row of the last axis to the output and normalizes it there with the session's
//!   in-place softmax helper, one task per group of rows.

use super::family::{Helpers, KernelFamily, LayerWeights, TaskEnv};
use super::util::*;
use crate::ops::Pads;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use resnetc_runtime::AlignedBuf;

/// Floats per task of the elementwise kernels (a multiple of 4).
pub const BLOCK: usize = 8192;
/// Floats per task of the softmax kernel (rows are grouped up to this size).
const SOFTMAX_BLOCK: usize = 2048;

/// Elements of a non-empty shape without zero dimensions.
fn elems(shape: &[usize]) -> Result<usize, String> {
    if shape.is_empty() || shape.contains(&0) {
        return Err("zero-sized dimension".into());
    }
    Ok(shape.iter().product())
}

/// `[lo, hi)` of the items (blocks of `per_task`) that task `t` covers, clipped to `total`.
fn task_range(b: &mut FunctionBuilder, t: Value, per_task: usize, total: usize) -> (Value, Value) {
    let lo = b.ins().imul_imm_s(t, per_task as i64);
    let hi = b.ins().iadd_imm_s(lo, per_task as i64);
    let n = iconst(b, total);
    (lo, b.ins().umin(hi, n))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flat {
    /// `x < 0 ? 0 : x` (NaN passes through).
    Relu,
    /// `input + input2`.
    Add,
    Copy,
}

/// Relu, add or copy over a tensor of any shape, flat.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlatPlan {
    pub op: Flat,
    pub shape: Vec<usize>,
}

impl FlatPlan {
    pub fn new(op: Flat, shape: &[usize]) -> Result<FlatPlan, String> {
        elems(shape)?;
        Ok(FlatPlan { op, shape: shape.to_vec() })
    }

    fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

impl KernelFamily for FlatPlan {
    fn ntasks(&self) -> usize {
        self.len().div_ceil(BLOCK)
    }

    fn out_shape(&self) -> Vec<usize> {
        self.shape.clone()
    }

    fn reads_input2(&self) -> bool {
        self.op == Flat::Add
    }

    fn emit_task(&self, b: &mut FunctionBuilder, env: &TaskEnv, task: Value) {
        let n = self.len();
        let TaskEnv { inp, res: inp2, out, .. } = *env;
        let (lo, hi) = task_range(b, task, BLOCK, n);
        // Blocks start at multiples of 4, so only the last one has a scalar tail.
        let vend = b.ins().band_imm_s(hi, -4i64);
        let op = self.op;
        let chunk = |b: &mut FunctionBuilder, i: Value, lanes: usize| {
            let src = addr(b, inp, i, 4, 0);
            let x = load_lanes(b, mf_input(), src, 0, lanes);
            let y = match op {
                Flat::Relu => relu4(b, x),
                Flat::Add => {
                    let src2 = addr(b, inp2, i, 4, 0);
                    let x2 = load_lanes(b, mf_input(), src2, 0, lanes);
                    b.ins().fadd(x, x2)
                }
                Flat::Copy => x,
            };
            let dst = addr(b, out, i, 4, 0);
            store_lanes(b, mf_rw(), y, dst, 0, lanes);
        };
        for_range_step(b, lo, vend, 4, &[], |b, i, _| {
            chunk(b, i, 4);
            vec![]
        });
        if !n.is_multiple_of(4) {
            for_range(b, vend, hi, &[], |b, i, _| {
                chunk(b, i, 1);
                vec![]
            });
        }
    }
}

/// Inference-mode batch normalization over the last axis of a tensor of any shape:
/// `y = (x - mean) * (gamma / sqrt(var + eps)) + beta`, in the reference's f32 operation order.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormPlan {
    pub shape: Vec<usize>,
    pub epsilon: f32,
}

impl Eq for BatchNormPlan {}

impl BatchNormPlan {
    pub fn new(shape: &[usize], epsilon: f32) -> Result<BatchNormPlan, String> {
        elems(shape)?;
        Ok(BatchNormPlan { shape: shape.to_vec(), epsilon })
    }

    fn channels(&self) -> usize {
        *self.shape.last().expect("non-empty shape")
    }

    /// Channels rounded up to a multiple of 4: the stride of the three constant vectors.
    fn c4(&self) -> usize {
        self.channels().div_ceil(4) * 4
    }

    /// Pixels per task.
    fn pixels_per_task(&self) -> usize {
        (BLOCK / self.channels()).max(1)
    }
}

impl KernelFamily for BatchNormPlan {
    fn ntasks(&self) -> usize {
        let pixels = self.shape.iter().product::<usize>() / self.channels();
        pixels.div_ceil(self.pixels_per_task())
    }

    fn out_shape(&self) -> Vec<usize> {
        self.shape.clone()
    }

    fn packed_floats(&self) -> usize {
        3 * self.c4()
    }

    /// Constants: mean, scale, beta, each padded to a multiple of 4 channels.
    fn pack(&self, w: &LayerWeights) -> Result<AlignedBuf, String> {
        let (c, c4) = (self.channels(), self.c4());
        let w = w.batch_norm.ok_or("no batch norm weights")?;
        for (what, t) in [
            ("gamma", w.gamma),
            ("beta", w.beta),
            ("moving_mean", w.moving_mean),
            ("moving_variance", w.moving_variance),
        ] {
            if t.len() != c {
                return Err(format!("{what} has {} floats, expected {c}", t.len()));
            }
        }
        let mut consts = AlignedBuf::zeroed(3 * c4);
        for ch in 0..c {
            consts[ch] = w.moving_mean[ch];
            consts[c4 + ch] = w.gamma[ch] / (w.moving_variance[ch] + self.epsilon).sqrt();
            consts[2 * c4 + ch] = w.beta[ch];
        }
        Ok(consts)
    }

    fn emit_task(&self, b: &mut FunctionBuilder, env: &TaskEnv, task: Value) {
        let (c, c4) = (self.channels(), self.c4());
        let npix = self.shape.iter().product::<usize>() / c;
        let TaskEnv { inp, out, cst, .. } = *env;
        let (lo, hi) = task_range(b, task, self.pixels_per_task(), npix);
        for_range(b, lo, hi, &[], |b, p, _| {
            let src = addr(b, inp, p, c * 4, 0);
            let dst = addr(b, out, p, c * 4, 0);
            let chunk = |b: &mut FunctionBuilder, coff: Value, lanes: usize| {
                let s = addr(b, src, coff, 4, 0);
                let x = load_lanes(b, mf_input(), s, 0, lanes);
                let k = addr(b, cst, coff, 4, 0);
                let mean = b.ins().load(types::F32X4, mf_packed(), k, 0);
                let scale = b.ins().load(types::F32X4, mf_packed(), k, (4 * c4) as i32);
                let beta = b.ins().load(types::F32X4, mf_packed(), k, (8 * c4) as i32);
                let d = b.ins().fsub(x, mean);
                let d = b.ins().fmul(d, scale);
                let y = b.ins().fadd(d, beta);
                let o = addr(b, dst, coff, 4, 0);
                store_lanes(b, mf_rw(), y, o, 0, lanes);
            };
            let z = iconst(b, 0);
            let cv = iconst(b, c / 4 * 4);
            for_range_step(b, z, cv, 4, &[], |b, coff, _| {
                chunk(b, coff, 4);
                vec![]
            });
            if !c.is_multiple_of(4) {
                let coff = iconst(b, c / 4 * 4);
                chunk(b, coff, c % 4);
            }
            vec![]
        });
    }
}

/// Keras ZeroPadding2D of an `[h, w, c]` input: `[h + top + bottom, w + left + right, c]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ZeroPadPlan {
    pub pads: Pads,
    pub input: [usize; 3],
}

impl ZeroPadPlan {
    pub fn new(pads: &Pads, input: [usize; 3]) -> Result<ZeroPadPlan, String> {
        elems(&input)?;
        Ok(ZeroPadPlan { pads: *pads, input })
    }

    fn out_hw(&self) -> (usize, usize) {
        let [h, w, _] = self.input;
        (h + self.pads.top + self.pads.bottom, w + self.pads.left + self.pads.right)
    }

    fn rows_per_task(&self) -> usize {
        let (_, ow) = self.out_hw();
        (BLOCK / (ow * self.input[2])).max(1)
    }
}

impl KernelFamily for ZeroPadPlan {
    fn ntasks(&self) -> usize {
        self.out_hw().0.div_ceil(self.rows_per_task())
    }

    fn out_shape(&self) -> Vec<usize> {
        let (oh, ow) = self.out_hw();
        vec![oh, ow, self.input[2]]
    }

    fn emit_task(&self, b: &mut FunctionBuilder, env: &TaskEnv, task: Value) {
        let [h, w, c] = self.input;
        let (oh, ow) = self.out_hw();
        let pads = self.pads;
        let row = ow * c;
        let TaskEnv { inp, out, .. } = *env;
        let (lo, hi) = task_range(b, task, self.rows_per_task(), oh);
        for_range(b, lo, hi, &[], |b, oy, _| {
            let dst = addr(b, out, oy, row * 4, 0);
            // `oy - top` as unsigned: below `h` exactly for the rows holding input.
            let iy = b.ins().iadd_imm_s(oy, -(pads.top as i64));
            let inside = b.ins().icmp_imm_s(IntCC::UnsignedLessThan, iy, h as i64);
            if_else(
                b,
                inside,
                |b| {
                    let left = b.ins().iadd_imm_s(dst, 0);
                    zero_run(b, left, pads.left * c);
                    let src = addr(b, inp, iy, w * c * 4, 0);
                    let mid = b.ins().iadd_imm_s(dst, (pads.left * c * 4) as i64);
                    copy_run(b, src, mid, w * c);
                    let right = b.ins().iadd_imm_s(dst, ((pads.left + w) * c * 4) as i64);
                    zero_run(b, right, pads.right * c);
                },
                |b| zero_run(b, dst, row),
            );
            vec![]
        });
    }
}

/// Softmax over the last axis of a tensor of any shape (each row of the last axis on its own).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SoftmaxPlan {
    pub shape: Vec<usize>,
}

impl SoftmaxPlan {
    pub fn new(shape: &[usize]) -> Result<SoftmaxPlan, String> {
        elems(shape)?;
        Ok(SoftmaxPlan { shape: shape.to_vec() })
    }

    fn row_len(&self) -> usize {
        *self.shape.last().expect("non-empty shape")
    }

    fn rows_per_task(&self) -> usize {
        (SOFTMAX_BLOCK / self.row_len()).max(1)
    }
}

impl KernelFamily for SoftmaxPlan {
    fn ntasks(&self) -> usize {
        let rows = self.shape.iter().product::<usize>() / self.row_len();
        rows.div_ceil(self.rows_per_task())
    }

    fn out_shape(&self) -> Vec<usize> {
        self.shape.clone()
    }

    fn helpers(&self) -> Helpers {
        Helpers { softmax: true, ..Default::default() }
    }

    fn emit_task(&self, b: &mut FunctionBuilder, env: &TaskEnv, task: Value) {
        let n = self.row_len();
        let rows = self.shape.iter().product::<usize>() / n;
        let TaskEnv { inp, out, .. } = *env;
        let f = env.softmax.expect("the driver imports the softmax helper");
        let (lo, hi) = task_range(b, task, self.rows_per_task(), rows);
        for_range(b, lo, hi, &[], |b, r, _| {
            let src = addr(b, inp, r, n * 4, 0);
            let dst = addr(b, out, r, n * 4, 0);
            copy_run(b, src, dst, n);
            let nv = iconst(b, n);
            b.ins().call(f, &[dst, nv]);
            vec![]
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::family::{BatchNormWeights, LayerWeights};
    use super::super::{JitCode, Kernel, Session, SessionOptions};
    use super::*;
    use resnetc_runtime::{AlignedBuf, KernelArgs};

    fn session() -> Session {
        Session::with_options(SessionOptions { verify: true, ..SessionOptions::default() }).unwrap()
    }

    use crate::codegen::tests::rnd;

    /// Calls a kernel task by task (in reverse order) on inputs shifted by one float (unaligned), checking
    /// that nothing is written outside the output.
    fn call(code: &JitCode, k: &Kernel, input: &[f32], input2: Option<&[f32]>) -> Vec<f32> {
        let out_len: usize = k.out_shape.iter().product();
        let guard = 64;
        let poison = f32::from_bits(0x7fc0_dead);
        let mut out = AlignedBuf::zeroed(out_len + 2 * guard);
        out.as_mut_slice().fill(poison);
        let consts = AlignedBuf::from_slice(&k.consts);
        let shifted = |s: &[f32]| {
            let mut v = vec![0.0];
            v.extend_from_slice(s);
            AlignedBuf::from_slice(&v)
        };
        let inp = shifted(input);
        let in2 = input2.map(shifted);
        let args = KernelArgs {
            input: unsafe { inp.as_ptr().add(1) },
            input2: in2.as_ref().map_or(std::ptr::null(), |b| unsafe { b.as_ptr().add(1) }),
            output: unsafe { out.as_mut_ptr().add(guard) },
            consts: consts.as_ptr(),
        };
        let f = code.kernel(k.id);
        let mut work = AlignedBuf::zeroed(16);
        for t in (0..k.ntasks).rev() {
            unsafe { f(&args, work.as_mut_ptr(), t, t + 1) };
        }
        let s = out.as_slice();
        for g in s[..guard].iter().chain(&s[guard + out_len..]) {
            assert_eq!(g.to_bits(), poison.to_bits(), "kernel `{}` wrote outside its output", k.name);
        }
        s[guard..guard + out_len].to_vec()
    }

    fn same_bits(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "{what}[{i}]: got {g}, want {w}");
        }
    }

    #[test]
    fn codegen_relu_add_copy_match_scalar_code() {
        for n in [1, 3, 4, 7, 64, BLOCK - 1, BLOCK + 5, 2 * BLOCK] {
            let mut s = session();
            let none = LayerWeights::default();
            let relu = s.compile("relu", &FlatPlan::new(Flat::Relu, &[n]).unwrap(), &none).unwrap();
            let add = s.compile("add", &FlatPlan::new(Flat::Add, &[n]).unwrap(), &none).unwrap();
            let copy = s.compile("copy", &FlatPlan::new(Flat::Copy, &[n]).unwrap(), &none).unwrap();
            let code = s.finish().unwrap();
            assert!(add.uses_input2 && !relu.uses_input2);
            assert_eq!(relu.ntasks, n.div_ceil(BLOCK));
            let mut x = rnd(n, n as u64);
            x[0] = f32::NAN;
            let y = rnd(n, 7 + n as u64);
            let want: Vec<f32> = x.iter().map(|&v| if v < 0.0 { 0.0 } else { v }).collect();
            same_bits(&call(&code, &relu, &x, None), &want, "relu");
            let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
            same_bits(&call(&code, &add, &x, Some(&y)), &want, "add");
            same_bits(&call(&code, &copy, &x, None), &x, "copy");
        }
    }

    #[test]
    fn codegen_batch_norm_matches_the_reference_order() {
        for shape in [vec![3, 5, 7], vec![2, 2, 8], vec![10], vec![4, 3, 2049]] {
            let c = *shape.last().unwrap();
            let n: usize = shape.iter().product();
            let gamma: Vec<f32> = rnd(c, 1).iter().map(|v| 1.0 + 0.5 * v).collect();
            let beta = rnd(c, 2);
            let mean = rnd(c, 3);
            let var: Vec<f32> = rnd(c, 4).iter().map(|v| 1.2 + v).collect();
            let eps = 1e-3;
            let w = BatchNormWeights {
                gamma: &gamma,
                beta: &beta,
                moving_mean: &mean,
                moving_variance: &var,
                epsilon: eps,
            };
            let mut s = session();
            let plan = BatchNormPlan::new(&shape, eps).unwrap();
            let k = s.compile("bn", &plan, &LayerWeights { batch_norm: Some(w), ..Default::default() }).unwrap();
            let code = s.finish().unwrap();
            let x = rnd(n, 5);
            let want: Vec<f32> = x
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let ch = i % c;
                    (v - mean[ch]) * (gamma[ch] / (var[ch] + eps).sqrt()) + beta[ch]
                })
                .collect();
            same_bits(&call(&code, &k, &x, None), &want, &format!("batch_norm {shape:?}"));
        }
    }

    #[test]
    fn codegen_zero_padding_writes_every_element() {
        for (input, pads) in [
            ([3, 4, 5], Pads { top: 1, bottom: 2, left: 0, right: 3 }),
            ([2, 2, 1], Pads { top: 0, bottom: 0, left: 2, right: 1 }),
            ([5, 6, 20], Pads { top: 3, bottom: 1, left: 1, right: 1 }),
            ([4, 3, 3], Pads::default()),
        ] {
            let [h, w, c] = input;
            let mut s = session();
            let k = s.compile("pad", &ZeroPadPlan::new(&pads, input).unwrap(), &LayerWeights::default()).unwrap();
            let code = s.finish().unwrap();
            let (oh, ow) = (h + pads.top + pads.bottom, w + pads.left + pads.right);
            assert_eq!(k.out_shape, vec![oh, ow, c]);
            let x = rnd(h * w * c, 9);
            let mut want = vec![0f32; oh * ow * c];
            for y in 0..h {
                for xx in 0..w {
                    for ch in 0..c {
                        want[((y + pads.top) * ow + xx + pads.left) * c + ch] = x[(y * w + xx) * c + ch];
                    }
                }
            }
            same_bits(&call(&code, &k, &x, None), &want, &format!("zero_padding {input:?} {pads:?}"));
        }
    }

    #[test]
    fn codegen_softmax_rows_normalizes_each_row() {
        for shape in [vec![2, 3, 5], vec![1, 1, 4], vec![7], vec![3, 700]] {
            let n = *shape.last().unwrap();
            let total: usize = shape.iter().product();
            let mut s = session();
            let k = s.compile("sm", &SoftmaxPlan::new(&shape).unwrap(), &LayerWeights::default()).unwrap();
            let code = s.finish().unwrap();
            let x: Vec<f32> = rnd(total, 3).iter().map(|v| 5.0 * v).collect();
            let got = call(&code, &k, &x, None);
            for (r, (gr, xr)) in got.chunks(n).zip(x.chunks(n)).enumerate() {
                let m = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f64> = xr.iter().map(|&v| (v as f64 - m as f64).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (g, ei) in gr.iter().zip(&e) {
                    let want = (ei / sum) as f32;
                    assert!((g - want).abs() <= 1e-6, "softmax {shape:?} row {r}: got {g}, want {want}");
                }
            }
        }
    }
}
