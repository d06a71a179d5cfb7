//! Pooling kernels (simple, not tuned): windowed max/avg pooling and global avg/max pooling, NHWC.
//!
//! Windowed pooling: one task per output row; for each output pixel the window is clipped to the input, so
//! padded positions never win a max and are not counted in an average (Keras `same` semantics). Channels go
//! four at a time (f32x4) with a lane-wise tail. Global pooling: one task per group of 4 channels, reducing
//! over all pixels; output `[C]`.

use super::family::{KernelFamily, TaskEnv};
use super::util::*;
use crate::ops::Pool;
use cranelift_codegen::ir::{condcodes::IntCC, types, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolKind {
    Max,
    Avg,
}

/// Windowed max or average pooling of an `[h, w, c]` input into `[oh, ow, c]`: one task per output row.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WindowPoolPlan {
    pub kind: PoolKind,
    pub input: [usize; 3],
    pub size: [usize; 2],
    pub strides: [usize; 2],
    pub pad_top: usize,
    pub pad_left: usize,
    pub oh: usize,
    pub ow: usize,
    /// Some window lies entirely in padding (explicit pads at least the window size): its max is 0, what
    /// the zero padding it came from gives (see `reference::pool`).
    pub empty_windows: bool,
}

impl WindowPoolPlan {
    pub fn new(kind: PoolKind, pool: &Pool, input: [usize; 3]) -> Result<WindowPoolPlan, String> {
        let [h, w, c] = input;
        let [kh, kw] = pool.size;
        let [sh, sw] = pool.strides;
        if [h, w, c, kh, kw, sh, sw].contains(&0) {
            return Err("zero-sized dimension".into());
        }
        let pads = pool.padding.pads(h, w, pool.size, pool.strides);
        let (hp, wp) = (h + pads.top + pads.bottom, w + pads.left + pads.right);
        if hp < kh || wp < kw {
            return Err("pool window larger than the padded input".into());
        }
        let (oh, ow) = ((hp - kh) / sh + 1, (wp - kw) / sw + 1);
        Ok(WindowPoolPlan {
            kind,
            input,
            size: pool.size,
            strides: pool.strides,
            pad_top: pads.top,
            pad_left: pads.left,
            oh,
            ow,
            empty_windows: pads.top >= kh || pads.bottom >= kh || pads.left >= kw || pads.right >= kw,
        })
    }
}

/// The input rows (or columns) `[start, end)` of output position `o`'s window that lie inside the input:
/// the window starts at `o * stride - pad` and is `k` long; padding never enters a max or an average.
fn window_in_bounds(
    b: &mut FunctionBuilder,
    o: Value,
    stride: usize,
    pad: usize,
    k: usize,
    size: usize,
) -> (Value, Value) {
    let t = b.ins().imul_imm_s(o, stride as i64);
    let first = b.ins().iadd_imm_s(t, -(pad as i64));
    let zero = iconst(b, 0);
    let start = b.ins().smax(first, zero);
    let past = b.ins().iadd_imm_s(first, k as i64);
    let size = iconst(b, size);
    let end = b.ins().smin(past, size);
    (start, end)
}

impl KernelFamily for WindowPoolPlan {
    fn ntasks(&self) -> usize {
        self.oh
    }

    fn out_shape(&self) -> Vec<usize> {
        vec![self.oh, self.ow, self.input[2]]
    }

    fn emit_task(&self, b: &mut FunctionBuilder, env: &TaskEnv, oy: Value) {
        let [h, w, c] = self.input;
        let ([kh, kw], [sh, sw], (oh, ow)) = (self.size, self.strides, (self.oh, self.ow));
        let _ = oh;
        let (kind, empty_windows) = (self.kind, self.empty_windows);
        let pads = crate::ops::Pads { top: self.pad_top, left: self.pad_left, bottom: 0, right: 0 };
        let TaskEnv { inp, out, .. } = *env;
        let (y0, y1) = window_in_bounds(b, oy, sh, pads.top, kh, h);
        let zero = iconst(b, 0);
        let owv = iconst(b, ow);
        for_range(b, zero, owv, &[], |b, ox, _| {
            let (x0, x1) = window_in_bounds(b, ox, sw, pads.left, kw, w);
            let pix = b.ins().imul_imm_s(oy, ow as i64);
            let pix = b.ins().iadd(pix, ox);
            let obase = addr(b, out, pix, c * 4, 0);
            let inv = (kind == PoolKind::Avg).then(|| {
                let dy = b.ins().isub(y1, y0);
                let dx = b.ins().isub(x1, x0);
                let n = b.ins().imul(dy, dx);
                let one = iconst(b, 1);
                let n = b.ins().smax(n, one);
                let nf = b.ins().fcvt_from_sint(types::F32, n);
                let onef = b.ins().f32const(1.0);
                let r = b.ins().fdiv(onef, nf);
                b.ins().splat(types::F32X4, r)
            });
            // `n` vectors of `lanes` channels from `coff` on: the window loop carries one accumulator
            // per vector, so that up to 8 independent max/add chains are in flight.
            let group = |b: &mut FunctionBuilder, coff: Value, n: usize, lanes: usize| {
                let init = match kind {
                    PoolKind::Max => {
                        let m = b.ins().f32const(f32::NEG_INFINITY);
                        b.ins().splat(types::F32X4, m)
                    }
                    PoolKind::Avg => zero4(b),
                };
                let r = for_range(b, y0, y1, &vec![init; n], |b, y, acc| {
                    for_range(b, x0, x1, acc, |b, x, acc| {
                        let yw = b.ins().imul_imm_s(y, w as i64);
                        let p = b.ins().iadd(yw, x);
                        let e = b.ins().imul_imm_s(p, c as i64);
                        let e = b.ins().iadd(e, coff);
                        let src = addr(b, inp, e, 4, 0);
                        acc.iter()
                            .enumerate()
                            .map(|(j, &a)| {
                                let v = load_lanes(b, mf_input(), src, 16 * j as i32, lanes);
                                match kind {
                                    // `fmax` is NaN if either operand is: IEEE maximum, as Keras
                                    // propagates NaN through max pooling.
                                    PoolKind::Max => b.ins().fmax(a, v),
                                    PoolKind::Avg => b.ins().fadd(a, v),
                                }
                            })
                            .collect()
                    })
                });
                let empty = (kind == PoolKind::Max && empty_windows).then(|| {
                    let ye = b.ins().icmp(IntCC::SignedLessThanOrEqual, y1, y0);
                    let xe = b.ins().icmp(IntCC::SignedLessThanOrEqual, x1, x0);
                    b.ins().bor(ye, xe)
                });
                for (j, mut v) in r.into_iter().enumerate() {
                    if let Some(inv) = inv {
                        v = b.ins().fmul(v, inv);
                    }
                    if let Some(e) = empty {
                        let z = zero4(b);
                        v = b.ins().select(e, z, v);
                    }
                    let dst = addr(b, obase, coff, 4, 16 * j as i64);
                    store_lanes(b, mf_rw(), v, dst, 0, lanes);
                }
            };
            const G: usize = 8;
            let (full, rest) = ((c / 4) / G, (c / 4) % G);
            if full > 0 {
                let z = iconst(b, 0);
                let end = iconst(b, full * G * 4);
                for_range_step(b, z, end, (G * 4) as i64, &[], |b, coff, _| {
                    group(b, coff, G, 4);
                    vec![]
                });
            }
            if rest > 0 {
                let coff = iconst(b, full * G * 4);
                group(b, coff, rest, 4);
            }
            if c % 4 != 0 {
                let coff = iconst(b, c / 4 * 4);
                group(b, coff, 1, c % 4);
            }
            vec![]
        });
    }
}

/// Global average or max pooling: `[h, w, c]` -> `[c]`, one task per group of 4 channels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GlobalPoolPlan {
    pub kind: PoolKind,
    pub input: [usize; 3],
}

impl GlobalPoolPlan {
    pub fn new(kind: PoolKind, input: [usize; 3]) -> Result<GlobalPoolPlan, String> {
        if input.contains(&0) {
            return Err("zero-sized dimension".into());
        }
        Ok(GlobalPoolPlan { kind, input })
    }
}

impl KernelFamily for GlobalPoolPlan {
    fn ntasks(&self) -> usize {
        self.input[2].div_ceil(4)
    }

    fn out_shape(&self) -> Vec<usize> {
        vec![self.input[2]]
    }

    fn emit_task(&self, b: &mut FunctionBuilder, env: &TaskEnv, t: Value) {
        let [h, w, c] = self.input;
        let (hw, ntasks, kind) = (h * w, self.ntasks(), self.kind);
        let TaskEnv { inp, out, .. } = *env;
        let chunk = |b: &mut FunctionBuilder, lanes: usize| {
            let init = match kind {
                PoolKind::Max => {
                    let m = b.ins().f32const(f32::NEG_INFINITY);
                    b.ins().splat(types::F32X4, m)
                }
                PoolKind::Avg => zero4(b),
            };
            let base = addr(b, inp, t, 16, 0);
            let z = iconst(b, 0);
            let n = iconst(b, hw);
            let r = for_range(b, z, n, &[init], |b, p, acc| {
                let src = addr(b, base, p, c * 4, 0);
                let v = load_lanes(b, mf_input(), src, 0, lanes);
                vec![match kind {
                    PoolKind::Max => b.ins().fmax(acc[0], v),
                    PoolKind::Avg => b.ins().fadd(acc[0], v),
                }]
            });
            let mut v = r[0];
            if kind == PoolKind::Avg {
                let s = b.ins().f32const(1.0 / hw as f32);
                let s = b.ins().splat(types::F32X4, s);
                v = b.ins().fmul(v, s);
            }
            let dst = addr(b, out, t, 16, 0);
            store_lanes(b, mf_rw(), v, dst, 0, lanes);
        };
        if c % 4 == 0 {
            chunk(b, 4);
        } else {
            let last = b.ins().icmp_imm_s(cranelift_codegen::ir::condcodes::IntCC::Equal, t, (ntasks - 1) as i64);
            if_else(b, last, |b| chunk(b, c % 4), |b| chunk(b, 4));
        }
    }
}
