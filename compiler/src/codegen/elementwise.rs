//! Elementwise and data-movement kernels (simple, not tuned): relu, batch norm, add, copy, zero padding and
//! softmax over the last axis.
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
//! - Softmax copies each row of the last axis to the output and normalizes it there with the host helper
//!   [`super::dense::softmax_in_place`], one task per group of rows.

use super::util::*;
use super::{CodegenError, Kernel, Session};
use crate::ops::Pads;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::Module;
use resnetc_runtime::AlignedBuf;

/// Floats per task of the elementwise kernels (a multiple of 4).
pub const BLOCK: usize = 8192;
/// Floats per task of the softmax kernel (rows are grouped up to this size).
const SOFTMAX_BLOCK: usize = 2048;
/// Runs of at most this many f32x4 stores are unrolled; longer ones loop.
const UNROLL: usize = 4;

/// The per-channel weights of an inference-mode batch normalization (each `[C]`).
#[derive(Clone, Copy, Debug)]
pub struct BatchNormWeights<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub moving_mean: &'a [f32],
    pub moving_variance: &'a [f32],
    pub epsilon: f32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flat {
    Relu,
    Add,
    Copy,
}

fn elems(name: &str, shape: &[usize]) -> Result<usize, CodegenError> {
    if shape.is_empty() || shape.contains(&0) {
        return Err(CodegenError::invalid(name, "zero-sized dimension"));
    }
    Ok(shape.iter().product())
}

/// Stores `n` zeros at `dst + 4 * off` (bytes); `n` and `off` are compile-time constants.
fn zero_run(b: &mut FunctionBuilder, dst: Value, off: usize, n: usize) {
    if n == 0 {
        return;
    }
    let z4 = zero4(b);
    let nv = n / 4;
    if nv <= UNROLL {
        for i in 0..nv {
            b.ins().store(mf_rw(), z4, dst, (4 * (off + 4 * i)) as i32);
        }
    } else {
        let base = b.ins().iadd_imm_s(dst, (4 * off) as i64);
        let lo = iconst(b, 0);
        let hi = iconst(b, nv);
        for_range(b, lo, hi, &[], |b, i, _| {
            let d = addr(b, base, i, 16, 0);
            b.ins().store(mf_rw(), z4, d, 0);
            vec![]
        });
    }
    let z = b.ins().f32const(0.0);
    for j in nv * 4..n {
        b.ins().store(mf_rw(), z, dst, (4 * (off + j)) as i32);
    }
}

/// Copies `n` floats from `src` to `dst + 4 * off` (bytes); `n` and `off` are compile-time constants.
fn copy_run(b: &mut FunctionBuilder, src: Value, dst: Value, off: usize, n: usize) {
    if n == 0 {
        return;
    }
    let nv = n / 4;
    if nv <= UNROLL {
        for i in 0..nv {
            let v = b.ins().load(types::F32X4, mf_input(), src, (16 * i) as i32);
            b.ins().store(mf_rw(), v, dst, (4 * (off + 4 * i)) as i32);
        }
    } else {
        let base = b.ins().iadd_imm_s(dst, (4 * off) as i64);
        let lo = iconst(b, 0);
        let hi = iconst(b, nv);
        for_range(b, lo, hi, &[], |b, i, _| {
            let s = addr(b, src, i, 16, 0);
            let v = b.ins().load(types::F32X4, mf_input(), s, 0);
            let d = addr(b, base, i, 16, 0);
            b.ins().store(mf_rw(), v, d, 0);
            vec![]
        });
    }
    for j in nv * 4..n {
        let x = b.ins().load(types::F32, mf_input_scalar(), src, (4 * j) as i32);
        b.ins().store(mf_rw(), x, dst, (4 * (off + j)) as i32);
    }
}

/// `[lo, hi)` of the items (blocks of `per_task`) that tasks `[start, end)` cover, clipped to `total`.
fn task_range(b: &mut FunctionBuilder, start: Value, end: Value, per_task: usize, total: usize) -> (Value, Value) {
    let lo = b.ins().imul_imm_s(start, per_task as i64);
    let hi = b.ins().imul_imm_s(end, per_task as i64);
    let t = iconst(b, total);
    (lo, b.ins().umin(hi, t))
}

impl Session {
    /// Relu over a tensor of any shape: `x < 0 ? 0 : x` (NaN passes through).
    pub fn relu(&mut self, name: &str, shape: &[usize]) -> Result<Kernel, CodegenError> {
        self.flat(name, shape, Flat::Relu)
    }

    /// Elementwise sum of two tensors of `shape`: `input + input2` (the kernel reads `KernelArgs::input2`).
    pub fn add(&mut self, name: &str, shape: &[usize]) -> Result<Kernel, CodegenError> {
        self.flat(name, shape, Flat::Add)
    }

    /// Copies a tensor of `shape` (e.g. when the model output is the model input itself).
    pub fn copy(&mut self, name: &str, shape: &[usize]) -> Result<Kernel, CodegenError> {
        self.flat(name, shape, Flat::Copy)
    }

    fn flat(&mut self, name: &str, shape: &[usize], op: Flat) -> Result<Kernel, CodegenError> {
        let n = elems(name, shape)?;
        let ntasks = n.div_ceil(BLOCK);
        let id = self.begin(name)?;
        let fcfg = self.module.isa().frontend_config();
        let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
        let [a, _work, start, end] = entry(&mut b);
        let [inp, inp2, out, _] = load_args(&mut b, a);
        let (lo, hi) = task_range(&mut b, start, end, BLOCK, n);
        // Blocks start at multiples of 4, so only the last one has a scalar tail.
        let vend = b.ins().band_imm_s(hi, -4i64);
        let chunk = |b: &mut FunctionBuilder, i: Value, lanes: usize| {
            let src = addr(b, inp, i, 4, 0);
            let x = load_lanes(b, mf_input(), src, 0, lanes);
            let y = match op {
                Flat::Relu => {
                    let z = zero4(b);
                    let neg = b.ins().fcmp(FloatCC::LessThan, x, z);
                    let m = b.ins().bitcast(types::F32X4, MemFlagsData::new(), neg);
                    b.ins().band_not(x, m)
                }
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
        for_range_step(&mut b, lo, vend, 4, &[], |b, i, _| {
            chunk(b, i, 4);
            vec![]
        });
        if !n.is_multiple_of(4) {
            for_range(&mut b, vend, hi, &[], |b, i, _| {
                chunk(b, i, 1);
                vec![]
            });
        }
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(fcfg);
        self.end(id, name, AlignedBuf::default(), ntasks, 0, op == Flat::Add, shape.to_vec())
    }

    /// Inference-mode batch normalization over the last axis of a tensor of any shape:
    /// `y = (x - mean) * (gamma / sqrt(var + eps)) + beta`, in the reference's f32 operation order.
    pub fn batch_norm(&mut self, name: &str, shape: &[usize], w: &BatchNormWeights) -> Result<Kernel, CodegenError> {
        let n = elems(name, shape)?;
        let c = *shape.last().expect("non-empty shape");
        for (what, t) in [
            ("gamma", w.gamma),
            ("beta", w.beta),
            ("moving_mean", w.moving_mean),
            ("moving_variance", w.moving_variance),
        ] {
            if t.len() != c {
                return Err(CodegenError::invalid(name, format!("{what} has {} floats, expected {c}", t.len())));
            }
        }
        // Constants: mean, scale, beta, each padded to a multiple of 4 channels.
        let c4 = c.div_ceil(4) * 4;
        let mut consts = vec![0f32; 3 * c4];
        for ch in 0..c {
            consts[ch] = w.moving_mean[ch];
            consts[c4 + ch] = w.gamma[ch] / (w.moving_variance[ch] + w.epsilon).sqrt();
            consts[2 * c4 + ch] = w.beta[ch];
        }
        let npix = n / c;
        let ppt = (BLOCK / c).max(1);
        let ntasks = npix.div_ceil(ppt);
        let id = self.begin(name)?;
        let fcfg = self.module.isa().frontend_config();
        let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
        let [a, _work, start, end] = entry(&mut b);
        let [inp, _, out, cst] = load_args(&mut b, a);
        let (lo, hi) = task_range(&mut b, start, end, ppt, npix);
        for_range(&mut b, lo, hi, &[], |b, p, _| {
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
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(fcfg);
        self.end(id, name, AlignedBuf::from_slice(&consts), ntasks, 0, false, shape.to_vec())
    }

    /// Keras ZeroPadding2D of an `[H, W, C]` input: `[H + top + bottom, W + left + right, C]`.
    pub fn zero_padding(&mut self, name: &str, pads: &Pads, input: [usize; 3]) -> Result<Kernel, CodegenError> {
        let [h, w, c] = input;
        elems(name, &input)?;
        let (oh, ow) = (h + pads.top + pads.bottom, w + pads.left + pads.right);
        let row = ow * c;
        let rpt = (BLOCK / row).max(1);
        let ntasks = oh.div_ceil(rpt);
        let id = self.begin(name)?;
        let fcfg = self.module.isa().frontend_config();
        let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
        let [a, _work, start, end] = entry(&mut b);
        let [inp, _, out, _] = load_args(&mut b, a);
        let (lo, hi) = task_range(&mut b, start, end, rpt, oh);
        for_range(&mut b, lo, hi, &[], |b, oy, _| {
            let dst = addr(b, out, oy, row * 4, 0);
            // `oy - top` as unsigned: below `h` exactly for the rows holding input.
            let iy = b.ins().iadd_imm_s(oy, -(pads.top as i64));
            let inside = b.ins().icmp_imm_s(IntCC::UnsignedLessThan, iy, h as i64);
            if_else(
                b,
                inside,
                |b| {
                    zero_run(b, dst, 0, pads.left * c);
                    let src = addr(b, inp, iy, w * c * 4, 0);
                    copy_run(b, src, dst, pads.left * c, w * c);
                    zero_run(b, dst, (pads.left + w) * c, pads.right * c);
                },
                |b| zero_run(b, dst, 0, row),
            );
            vec![]
        });
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(fcfg);
        self.end(id, name, AlignedBuf::default(), ntasks, 0, false, vec![oh, ow, c])
    }

    /// Softmax over the last axis of a tensor of any shape (each row of the last axis on its own).
    pub fn softmax_rows(&mut self, name: &str, shape: &[usize]) -> Result<Kernel, CodegenError> {
        let total = elems(name, shape)?;
        let n = *shape.last().expect("non-empty shape");
        let rows = total / n;
        let rpt = (SOFTMAX_BLOCK / n).max(1);
        let ntasks = rows.div_ceil(rpt);
        let f = self.softmax_import()?;
        let id = self.begin(name)?;
        let fr = self.module.declare_func_in_func(f, &mut self.ctx.func);
        let fcfg = self.module.isa().frontend_config();
        let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
        let [a, _work, start, end] = entry(&mut b);
        let [inp, _, out, _] = load_args(&mut b, a);
        let (lo, hi) = task_range(&mut b, start, end, rpt, rows);
        for_range(&mut b, lo, hi, &[], |b, r, _| {
            let src = addr(b, inp, r, n * 4, 0);
            let dst = addr(b, out, r, n * 4, 0);
            copy_run(b, src, dst, 0, n);
            let nv = iconst(b, n);
            b.ins().call(fr, &[dst, nv]);
            vec![]
        });
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(fcfg);
        self.end(id, name, AlignedBuf::default(), ntasks, 0, false, shape.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{JitCode, SessionOptions};
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
            let relu = s.relu("relu", &[n]).unwrap();
            let add = s.add("add", &[n]).unwrap();
            let copy = s.copy("copy", &[n]).unwrap();
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
            let k = s.batch_norm("bn", &shape, &w).unwrap();
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
            let k = s.zero_padding("pad", &pads, input).unwrap();
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
            let k = s.softmax_rows("sm", &shape).unwrap();
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
