//! Pooling kernels (simple, not tuned): windowed max/avg pooling and global avg/max pooling, NHWC.
//!
//! Windowed pooling: one task per output row; for each output pixel the window is clipped to the input, so
//! padded positions never win a max and are not counted in an average (Keras `same` semantics). Channels go
//! four at a time (f32x4) with a lane-wise tail. Global pooling: one task per group of 4 channels, reducing
//! over all pixels; output `[C]`.

use super::util::*;
use super::{CodegenError, Kernel, Session};
use crate::ops::Pool;
use cranelift_codegen::ir::{condcodes::FloatCC, types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::Module;
use resnetc_runtime::AlignedBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Avg,
}

impl Session {
    /// Max pooling of an `[H, W, C]` input.
    pub fn max_pool(&mut self, name: &str, pool: &Pool, input: [usize; 3]) -> Result<Kernel, CodegenError> {
        self.window_pool(name, PoolKind::Max, pool, input)
    }

    /// Average pooling of an `[H, W, C]` input (padding not counted).
    pub fn avg_pool(&mut self, name: &str, pool: &Pool, input: [usize; 3]) -> Result<Kernel, CodegenError> {
        self.window_pool(name, PoolKind::Avg, pool, input)
    }

    pub fn window_pool(
        &mut self,
        name: &str,
        kind: PoolKind,
        pool: &Pool,
        input: [usize; 3],
    ) -> Result<Kernel, CodegenError> {
        let [h, w, c] = input;
        let [kh, kw] = pool.size;
        let [sh, sw] = pool.strides;
        if [h, w, c, kh, kw, sh, sw].contains(&0) {
            return Err(CodegenError::invalid(name, "zero-sized dimension"));
        }
        let pads = pool.padding.pads(h, w, pool.size, pool.strides);
        let (hp, wp) = (h + pads.top + pads.bottom, w + pads.left + pads.right);
        if hp < kh || wp < kw {
            return Err(CodegenError::invalid(name, "pool window larger than the padded input"));
        }
        let (oh, ow) = ((hp - kh) / sh + 1, (wp - kw) / sw + 1);
        let id = self.begin(name)?;
        let fcfg = self.module.isa().frontend_config();
        let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
        let [a, _work, start, end] = entry(&mut b);
        let [inp, _, out, _] = load_args(&mut b, a);
        for_range(&mut b, start, end, &[], |b, oy, _| {
            let t = b.ins().imul_imm_s(oy, sh as i64);
            let iy0 = b.ins().iadd_imm_s(t, -(pads.top as i64));
            let z = iconst(b, 0);
            let y0 = b.ins().smax(iy0, z);
            let t = b.ins().iadd_imm_s(iy0, kh as i64);
            let hv = iconst(b, h);
            let y1 = b.ins().smin(t, hv);
            let zero = iconst(b, 0);
            let owv = iconst(b, ow);
            for_range(b, zero, owv, &[], |b, ox, _| {
                let t = b.ins().imul_imm_s(ox, sw as i64);
                let ix0 = b.ins().iadd_imm_s(t, -(pads.left as i64));
                let z = iconst(b, 0);
                let x0 = b.ins().smax(ix0, z);
                let t = b.ins().iadd_imm_s(ix0, kw as i64);
                let wv = iconst(b, w);
                let x1 = b.ins().smin(t, wv);
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
                                        // max as compare + select (2-3 instructions; `fmax` lowers to ~7
                                        // for its NaN rules). A NaN candidate is skipped, as f32::max in
                                        // the reference interpreter does.
                                        PoolKind::Max => {
                                            let gt = b.ins().fcmp(FloatCC::GreaterThan, v, a);
                                            let m = b.ins().bitcast(types::F32X4, MemFlagsData::new(), gt);
                                            b.ins().bitselect(m, v, a)
                                        }
                                        PoolKind::Avg => b.ins().fadd(a, v),
                                    }
                                })
                                .collect()
                        })
                    });
                    for (j, mut v) in r.into_iter().enumerate() {
                        if let Some(inv) = inv {
                            v = b.ins().fmul(v, inv);
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
            vec![]
        });
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(fcfg);
        self.end(id, name, AlignedBuf::default(), oh, 0, false, vec![oh, ow, c])
    }

    /// Global average or max pooling: `[H, W, C]` -> `[C]`.
    pub fn global_pool(&mut self, name: &str, kind: PoolKind, input: [usize; 3]) -> Result<Kernel, CodegenError> {
        let [h, w, c] = input;
        if [h, w, c].contains(&0) {
            return Err(CodegenError::invalid(name, "zero-sized dimension"));
        }
        let hw = h * w;
        let ntasks = c.div_ceil(4);
        let id = self.begin(name)?;
        let fcfg = self.module.isa().frontend_config();
        let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
        let [a, _work, start, end] = entry(&mut b);
        let [inp, _, out, _] = load_args(&mut b, a);
        for_range(&mut b, start, end, &[], |b, t, _| {
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
            vec![]
        });
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(fcfg);
        self.end(id, name, AlignedBuf::default(), ntasks, 0, false, vec![c])
    }
}
