//! The 7x7 stride-2 stem convolution of few input channels as Winograd F(3x3, 4x4) on its polyphase form.
//!
//! A 7x7 stride-2 convolution is a 4x4 stride-1 convolution of the input's 2x2 polyphase decomposition:
//! with the kernel zero-padded to 8x8, tap (2a+py, 2b+px) of channel c becomes tap (a, b) of channel
//! ci = (2py+px)*cin + c, and padded input pixel (2Y+py, 2X+px) becomes pixel (Y, X) of channel ci.
//! F(3x3, 4x4) then takes 36 multiplications per 3x3 output tile and polyphase channel, where the direct
//! kernel takes 9 * 49 per input channel: ResNet-50's stem (3 channels) does 3x fewer.
//!
//! - Weights: U = G k Gᵀ per polyphase channel and output channel (f64 at compile time), packed
//!   `U[xi][panel][ci][4]` (`cinv = 4 * cin` channels, panels of 4 output channels), then the bias.
//! - Task = block of `nt` tiles of 3x3 outputs (tile t = ty * tiles_w + tx). Per tile: the 12x12 patch of the
//!   padded input at (6ty, 6tx) is gathered as 6x6 polyphase pixels of `cinv` channels into scratch (zeros
//!   outside the image; interior tiles copy without tests), and Bᵀ d B of every 4 channels goes to
//!   `V[xi][tile][cinv]`. Then per panel: 36 GEMMs `M[xi][tiles] = V[xi][tiles][cinv] * U[xi][panel]`
//!   (r x 4 micro-kernel, K = cinv) and the output transform Aᵀ m A with bias and relu, masked stores for
//!   the partial tiles at the right and bottom edges.
//!
//! Work buffer: `36 * nt * cinv` (V) + `36 * nt * 4` (M) + `36 * cinv` (scratch) floats.

use super::family::{Helpers, KernelFamily, LayerWeights, TaskEnv};
use super::gemm::*;
use super::transform::{transform2d, AT34, BT4, G34};
use super::util::*;
use super::x86::GemmUkernel;
use crate::ops::Conv;
use cranelift_codegen::ir::{condcodes::IntCC, types, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use resnetc_runtime::abi::align_floats;
use resnetc_runtime::AlignedBuf;

/// Transformed tile side, output tile side.
const A: usize = 6;
const M: usize = 3;

/// Whether [`StemPlan`] can compute this convolution: 7x7, stride 2, 1 to 4 input channels, no
/// residual, a non-empty output.
pub fn stem_applies(conv: &Conv, input: [usize; 3]) -> bool {
    let [h, w, c] = input;
    if conv.kernel != [7, 7] || conv.strides != [2, 2] || !(1..=4).contains(&c) || conv.residual || conv.filters == 0 {
        return false;
    }
    let p = conv.padding.pads(h, w, conv.kernel, conv.strides);
    h + p.top + p.bottom >= 7 && w + p.left + p.right >= 7
}

/// Everything about one stem convolution that the generated code bakes in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StemPlan {
    /// The GEMM micro-kernel tile: U is packed in panels of `gemm_tile.nr` channels.
    pub gemm_tile: Tile,
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    /// Polyphase channels, 4 * cin.
    pub cinv: usize,
    pub oh: usize,
    pub ow: usize,
    pub cout: usize,
    pub pt: usize,
    pub pl: usize,
    pub npan: usize,
    pub nfullpan: usize,
    pub ntail: usize,
    pub tiles_h: usize,
    pub tiles_w: usize,
    /// Batch items one call computes, and the tiles of all of them (tile `t` is tile `t % (tiles_h *
    /// tiles_w)` of item `t / (tiles_h * tiles_w)`).
    pub items: usize,
    pub ntiles: usize,
    /// Tiles per task (= micro-kernel rows), tasks.
    pub nt: usize,
    pub ntb: usize,
    pub epi: Epilogue,
}

impl StemPlan {
    /// The plan for `items` batch items per call (their tiles are the GEMMs' rows).
    pub fn new(conv: &Conv, input: [usize; 3], items: usize, gemm_tile: Tile) -> Result<StemPlan, String> {
        if !stem_applies(conv, input) {
            return Err("the stem kernel needs a 7x7, stride-2 convolution of 1-4 channels without residual".into());
        }
        let [h, w, cin] = input;
        let p = conv.padding.pads(h, w, conv.kernel, conv.strides);
        let (oh, ow) = ((h + p.top + p.bottom - 7) / 2 + 1, (w + p.left + p.right - 7) / 2 + 1);
        let (tiles_h, tiles_w) = (oh.div_ceil(M), ow.div_ceil(M));
        let items = items.max(1);
        let ntiles = tiles_h * tiles_w * items;
        let nt = ntiles.div_ceil(ntiles.div_ceil(gemm_tile.mr));
        let nr = gemm_tile.nr;
        let cout = conv.filters;
        Ok(StemPlan {
            gemm_tile,
            h,
            w,
            cin,
            cinv: 4 * cin,
            oh,
            ow,
            cout,
            pt: p.top,
            pl: p.left,
            npan: cout.div_ceil(nr),
            nfullpan: cout / nr,
            ntail: cout % nr,
            tiles_h,
            tiles_w,
            items,
            ntiles,
            nt,
            ntb: ntiles.div_ceil(nt),
            epi: Epilogue::of(conv),
        })
    }

    fn v_floats(&self) -> usize {
        align_floats(A * A * self.nt * self.cinv)
    }

    fn m_floats(&self) -> usize {
        align_floats(A * A * self.nt * self.gemm_tile.nr)
    }

    pub fn bias_offset(&self) -> usize {
        A * A * self.npan * self.cinv * self.gemm_tile.nr
    }

    /// Transforms and packs the Keras kernel `[7, 7, cin, cout]` (and bias) into `U[xi][panel][ci][4]` + bias.
    pub fn pack_weights(&self, kernel: &[f32], bias: Option<&[f32]>) -> AlignedBuf {
        let (cin, cout, cinv) = (self.cin, self.cout, self.cinv);
        let mut out = AlignedBuf::zeroed(self.packed_floats());
        let mut k4 = [0f64; 16];
        for ci in 0..cinv {
            let (phase, c) = (ci / cin, ci % cin);
            let (py, px) = (phase / 2, phase % 2);
            for n in 0..cout {
                for a in 0..4 {
                    for bb in 0..4 {
                        let (ky, kx) = (2 * a + py, 2 * bb + px);
                        k4[a * 4 + bb] =
                            if ky < 7 && kx < 7 { kernel[((ky * 7 + kx) * cin + c) * cout + n] as f64 } else { 0.0 };
                    }
                }
                for (i, gi) in G34.iter().enumerate() {
                    for (j, gj) in G34.iter().enumerate() {
                        let mut u = 0.0;
                        for (a, &ga) in gi.iter().enumerate() {
                            for (bb, &gb) in gj.iter().enumerate() {
                                u += ga * gb * k4[a * 4 + bb];
                            }
                        }
                        let (xi, p, nr) = (i * A + j, n / self.gemm_tile.nr, self.gemm_tile.nr);
                        out[((xi * self.npan + p) * cinv + ci) * nr + n % nr] = u as f32;
                    }
                }
            }
        }
        put_bias(&mut out, self.bias_offset(), bias);
        out
    }
}

impl StemPlan {
    /// Tile `t` of the call as (its tile in its item, the pointers moved to that item's input and output).
    fn item_of<'a>(&self, b: &mut FunctionBuilder, t: Value, ptrs: Ptrs<'a>) -> (Value, Ptrs<'a>) {
        if self.items == 1 {
            return (t, ptrs);
        }
        let per_item = self.tiles_h * self.tiles_w;
        let (item, t) = (b.ins().udiv_imm_u(t, per_item as i64), b.ins().urem_imm_u(t, per_item as i64));
        let inp = addr(b, ptrs.inp, item, self.h * self.w * self.cin * 4, 0);
        let out = addr(b, ptrs.out, item, self.oh * self.ow * self.cout * 4, 0);
        (t, Ptrs { inp, out, ..ptrs })
    }
}

#[derive(Clone, Copy)]
struct Ptrs<'a> {
    env: &'a TaskEnv<'a>,
    inp: Value,
    out: Value,
    cst: Value,
    v: Value,
    mm: Value,
    scr: Value,
}

impl KernelFamily for StemPlan {
    fn ntasks(&self) -> usize {
        self.ntb
    }

    fn items(&self) -> usize {
        self.items
    }

    /// V, M and the patch scratch.
    fn work_floats(&self) -> usize {
        self.v_floats() + self.m_floats() + align_floats(A * A * self.cinv)
    }

    fn out_shape(&self) -> Vec<usize> {
        vec![self.oh, self.ow, self.cout]
    }

    fn packed_floats(&self) -> usize {
        self.bias_offset() + self.npan * self.gemm_tile.nr
    }

    fn helpers(&self) -> Helpers {
        Helpers { ukernels: self.gemm_tile.is_wide(), ..Default::default() }
    }

    fn pack(&self, w: &LayerWeights) -> Result<AlignedBuf, String> {
        let (kernel, bias) = w.checked(49 * self.cin * self.cout, self.epi.bias, self.cout)?;
        Ok(self.pack_weights(kernel, bias))
    }

    fn emit_task(&self, b: &mut FunctionBuilder, env: &TaskEnv, task: Value) {
        let mm = b.ins().iadd_imm_s(env.work, (self.v_floats() * 4) as i64);
        let scr = b.ins().iadd_imm_s(mm, (self.m_floats() * 4) as i64);
        emit_task(b, self, Ptrs { env, inp: env.inp, out: env.out, cst: env.cst, v: env.work, mm, scr }, task)
    }
}

fn emit_task(b: &mut FunctionBuilder, p: &StemPlan, ptrs: Ptrs, task: Value) {
    let t0 = b.ins().imul_imm_s(task, p.nt as i64);
    let tend = b.ins().iadd_imm_s(t0, p.nt as i64);
    let ntiles = iconst(b, p.ntiles);
    let tend = b.ins().umin(tend, ntiles);
    let count = b.ins().isub(tend, t0);
    let lo = iconst(b, 0);
    for_range(b, lo, count, &[], |b, i, _| {
        let t = b.ins().iadd(t0, i);
        emit_input_transform(b, p, ptrs, t, i);
        vec![]
    });
    let (lo, hi) = (iconst(b, 0), iconst(b, p.nfullpan));
    for_range(b, lo, hi, &[], |b, pan, _| {
        emit_panel(b, p, ptrs, pan, count, t0, p.gemm_tile.nr);
        vec![]
    });
    if p.ntail > 0 {
        let pan = iconst(b, p.nfullpan);
        emit_panel(b, p, ptrs, pan, count, t0, p.ntail);
    }
}

/// Gathers tile `t`'s polyphase patch into scratch and transforms it into row `i` of V.
fn emit_input_transform(b: &mut FunctionBuilder, p: &StemPlan, ptrs: Ptrs, t: Value, i: Value) {
    let (t, ptrs) = p.item_of(b, t, ptrs);
    let (ty, tx) = (b.ins().udiv_imm_u(t, p.tiles_w as i64), b.ins().urem_imm_u(t, p.tiles_w as i64));
    // Top-left input pixel of the 12x12 patch (may be negative).
    let iy0 = b.ins().imul_imm_s(ty, 2 * M as i64);
    let iy0 = b.ins().iadd_imm_s(iy0, -(p.pt as i64));
    let ix0 = b.ins().imul_imm_s(tx, 2 * M as i64);
    let ix0 = b.ins().iadd_imm_s(ix0, -(p.pl as i64));
    let c1 = b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, iy0, 0);
    let c2 = b.ins().icmp_imm_s(IntCC::SignedLessThanOrEqual, iy0, p.h as i64 - 2 * A as i64);
    let c3 = b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, ix0, 0);
    let c4 = b.ins().icmp_imm_s(IntCC::SignedLessThanOrEqual, ix0, p.w as i64 - 2 * A as i64);
    let c12 = b.ins().band(c1, c2);
    let c34 = b.ins().band(c3, c4);
    let interior = b.ins().band(c12, c34);
    let (cin, cinv) = (p.cin, p.cinv);
    let sf = mf_rw().with_aligned();
    // Input row `r` (0..12) of the patch: pixel C of channel c goes to scratch[r/2][C/2][(2(r%2) + C%2)cin + c].
    let row = |b: &mut FunctionBuilder, r: Value, checked: bool| {
        let iy = b.ins().iadd(iy0, r);
        let yw = b.ins().imul_imm_s(iy, p.w as i64);
        let pix = b.ins().iadd(yw, ix0);
        let src = addr(b, ptrs.inp, pix, cin * 4, 0);
        let u = b.ins().ushr_imm_u(r, 1);
        let py = b.ins().band_imm_u(r, 1);
        let d0 = addr(b, ptrs.scr, u, A * cinv * 4, 0);
        let dst = addr(b, d0, py, 2 * cin * 4, 0);
        for col in 0..2 * A {
            let off = ((col / 2) * cinv + (col % 2) * cin) * 4;
            let copy = |b: &mut FunctionBuilder| {
                for c in 0..cin {
                    let x = b.ins().load(types::F32, mf_input_scalar(), src, ((col * cin + c) * 4) as i32);
                    b.ins().store(mf_rw(), x, dst, (off + c * 4) as i32);
                }
            };
            if checked {
                let ix = b.ins().iadd_imm_s(ix0, col as i64);
                let ok = b.ins().icmp_imm_s(IntCC::UnsignedLessThan, ix, p.w as i64);
                if_then(b, ok, copy);
            } else {
                copy(b);
            }
        }
    };
    if_else(
        b,
        interior,
        |b| {
            let (lo, hi) = (iconst(b, 0), iconst(b, 2 * A));
            for_range(b, lo, hi, &[], |b, r, _| {
                row(b, r, false);
                vec![]
            });
        },
        |b| {
            zero_run(b, ptrs.scr, A * A * cinv);
            let (lo, hi) = (iconst(b, 0), iconst(b, 2 * A));
            for_range(b, lo, hi, &[], |b, r, _| {
                let iy = b.ins().iadd(iy0, r);
                let ok = b.ins().icmp_imm_s(IntCC::UnsignedLessThan, iy, p.h as i64);
                if_then(b, ok, |b| row(b, r, true));
                vec![]
            });
        },
    );
    // Bᵀ d B per 4 channels into V[xi][i][cinv].
    let bt: Vec<Vec<f64>> = BT4.iter().map(|r| r.to_vec()).collect();
    let dst = addr(b, ptrs.v, i, cinv * 4, 0);
    for g in 0..cinv / 4 {
        let d: Vec<Value> =
            (0..A * A).map(|q| b.ins().load(types::F32X4, sf, ptrs.scr, ((q * cinv + 4 * g) * 4) as i32)).collect();
        let v = transform2d(b, &bt, &d, A);
        for (xi, &x) in v.iter().enumerate() {
            b.ins().store(sf, x, dst, ((xi * p.nt * cinv + 4 * g) * 4) as i32);
        }
    }
}

/// The 36 GEMMs of panel `pan` over the task's tiles, then the output transform and epilogue of its
/// `count` tiles (the first is `t0`); `lanes` output channels of the panel are real.
fn emit_panel(b: &mut FunctionBuilder, p: &StemPlan, ptrs: Ptrs, pan: Value, count: Value, t0: Value, lanes: usize) {
    let nr = p.gemm_tile.nr;
    let (lo, hi) = (iconst(b, 0), iconst(b, A * A));
    for_range(b, lo, hi, &[], |b, xi, _| {
        let xp = b.ins().imul_imm_s(xi, p.npan as i64);
        let xp = b.ins().iadd(xp, pan);
        let ub = addr(b, ptrs.cst, xp, p.cinv * nr * 4, 0);
        let vb = addr(b, ptrs.v, xi, p.nt * p.cinv * 4, 0);
        let mb = addr(b, ptrs.mm, xi, p.nt * nr * 4, 0);
        if p.gemm_tile.is_wide() {
            // Whole panels into M (U's padding columns are zero; their results are never read).
            let uk = GemmUkernel {
                isa: p.gemm_tile.isa,
                rows: p.nt,
                nr,
                lanes: nr,
                k: p.cinv,
                a_row_stride: p.cinv * 4,
                b_k_stride: nr * 4,
                c_row_stride: nr * 4,
                accumulate: false,
                epilogue: Epilogue::NONE,
                prefetch_b: None,
            };
            call_wide(b, ptrs.env, &WideCall { uk, a: vb, b: ub, c: mb, bias: None, residual: None });
            return vec![];
        }
        let accs: Vec<Value> = (0..p.nt).map(|_| zero4(b)).collect();
        let sets = accumulator_sets(p.nt);
        let kl = KLoop {
            b0: ub,
            a0: vb,
            a_kstride: 4,
            a_rowstride: p.cinv * 4,
            a_flags: mf_packed(),
            steps: p.cinv,
            unroll: k_unroll(false, p.nt, sets, 2),
            sets,
            fma_b_first: false,
            prefetch: None,
        };
        let accs = emit_k_loop(b, &kl, accs);
        for (r, &acc) in accs.iter().enumerate() {
            b.ins().store(mf_rw().with_aligned(), acc, mb, (r * 16) as i32);
        }
        vec![]
    });
    let at: Vec<Vec<f64>> = AT34.iter().map(|r| r.to_vec()).collect();
    let lo = iconst(b, 0);
    for_range(b, lo, count, &[], |b, i, _| {
        let t = b.ins().iadd(t0, i);
        let (t, ptrs) = p.item_of(b, t, ptrs);
        let (ty, tx) = (b.ins().udiv_imm_u(t, p.tiles_w as i64), b.ins().urem_imm_u(t, p.tiles_w as i64));
        let oy0 = b.ins().imul_imm_s(ty, M as i64);
        let ox0 = b.ins().imul_imm_s(tx, M as i64);
        let yw = b.ins().imul_imm_s(oy0, p.ow as i64);
        let pix = b.ins().iadd(yw, ox0);
        let e = b.ins().imul_imm_s(pix, p.cout as i64);
        let col = b.ins().imul_imm_s(pan, nr as i64);
        let e = b.ins().iadd(e, col);
        let mrow = addr(b, ptrs.mm, i, nr * 4, 0);
        let c1 = b.ins().icmp_imm_s(IntCC::SignedLessThanOrEqual, oy0, p.oh as i64 - M as i64);
        let c2 = b.ins().icmp_imm_s(IntCC::SignedLessThanOrEqual, ox0, p.ow as i64 - M as i64);
        let full = b.ins().band(c1, c2);
        // Quad `g` of the panel: channels pan*nr + 4g .. + q_lanes.
        let quad = |b: &mut FunctionBuilder, g: Value, q_lanes: usize| {
            let ge = b.ins().imul_imm_s(g, 4);
            let e = b.ins().iadd(e, ge);
            let op = addr(b, ptrs.out, e, 4, 0);
            let mq = addr(b, mrow, g, 16, 0);
            let mf = mf_rw().with_aligned();
            let mv: Vec<Value> =
                (0..A * A).map(|xi| b.ins().load(types::F32X4, mf, mq, (xi * p.nt * nr * 4) as i32)).collect();
            let y = transform2d(b, &at, &mv, A);
            let bias = p.epi.bias.then(|| {
                let ch = b.ins().imul_imm_s(pan, nr as i64);
                let ch = b.ins().iadd(ch, ge);
                let bo = addr(b, ptrs.cst, ch, 4, (p.bias_offset() * 4) as i64);
                b.ins().load(types::F32X4, mf_packed(), bo, 0)
            });
            let store_all = |b: &mut FunctionBuilder, masked: bool| {
                for (q, &yv) in y.iter().enumerate() {
                    let (dy, dx) = (q / M, q % M);
                    let off = ((dy * p.ow + dx) * p.cout * 4) as i32;
                    let store = |b: &mut FunctionBuilder| {
                        let v = conv_epilogue(b, yv, bias, p.epi.relu, None, false);
                        store_lanes(b, mf_rw(), v, op, off, q_lanes);
                    };
                    if masked {
                        let yok = b.ins().icmp_imm_s(IntCC::SignedLessThan, oy0, p.oh as i64 - dy as i64);
                        let xok = b.ins().icmp_imm_s(IntCC::SignedLessThan, ox0, p.ow as i64 - dx as i64);
                        let ok = b.ins().band(yok, xok);
                        if_then(b, ok, store);
                    } else {
                        store(b);
                    }
                }
            };
            if_else(b, full, |b| store_all(b, false), |b| store_all(b, true));
        };
        if lanes >= 4 {
            let (z, nq) = (iconst(b, 0), iconst(b, lanes / 4));
            for_range(b, z, nq, &[], |b, g, _| {
                quad(b, g, 4);
                vec![]
            });
        }
        if lanes % 4 > 0 {
            let g = iconst(b, lanes / 4);
            quad(b, g, lanes % 4);
        }
        vec![]
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::{Session, SessionOptions};
    use crate::ops::{Padding, Pads};

    fn rnd(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        crate::codegen::tests::rnd(n, seed).into_iter().map(|x| x * scale).collect()
    }

    /// Runs the stem kernel on random data and returns its largest error relative to the largest output of a
    /// direct f64 convolution.
    fn check(h: usize, w: usize, cin: usize, cout: usize, padding: Padding, relu: bool, tile: Tile) -> f64 {
        let mut conv = Conv::new(cout, [7, 7], [2, 2], padding, true);
        conv.relu = relu;
        let input = [h, w, cin];
        let p = StemPlan::new(&conv, input, 1, tile).unwrap();
        let (x, k, bias) = (rnd(h * w * cin, 1, 2.0), rnd(49 * cin * cout, 2, 0.3), rnd(cout, 3, 0.5));
        let mut s = Session::with_options(SessionOptions { verify: true, ..SessionOptions::default() }).unwrap();
        let kern = s.compile("stem", &p, &LayerWeights::kernel(&k, Some(&bias))).unwrap();
        assert_eq!(kern.out_shape, vec![p.oh, p.ow, cout]);
        let code = s.finish().unwrap();
        // Guards around the output, NaN-filled work buffer, tasks one at a time in reverse order.
        let out = crate::codegen::tests::call(&code, &kern, &x, None);
        let pads = conv.padding.pads(h, w, [7, 7], [2, 2]);
        let (mut err, mut big) = (0f64, 0f64);
        for oy in 0..p.oh {
            for ox in 0..p.ow {
                for n in 0..cout {
                    let mut acc = bias[n] as f64;
                    for ky in 0..7 {
                        for kx in 0..7 {
                            let (iy, ix) =
                                ((2 * oy + ky) as i64 - pads.top as i64, (2 * ox + kx) as i64 - pads.left as i64);
                            if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                                continue;
                            }
                            for c in 0..cin {
                                let xv = x[((iy as usize) * w + ix as usize) * cin + c] as f64;
                                acc += xv * k[((ky * 7 + kx) * cin + c) * cout + n] as f64;
                            }
                        }
                    }
                    if relu {
                        acc = acc.max(0.0);
                    }
                    big = big.max(acc.abs());
                    let got = out[(oy * p.ow + ox) * cout + n] as f64;
                    assert!(got.is_finite(), "{h}x{w}x{cin}: output ({oy}, {ox}, {n}) is {got}");
                    err = err.max((acc - got).abs());
                }
            }
        }
        err / big.max(1e-30)
    }

    #[test]
    fn stem_matches_direct_convolution() {
        let explicit = |t, b, l, r| Padding::Explicit(Pads { top: t, bottom: b, left: l, right: r });
        let cases = [
            (224, 224, 3, 64, explicit(3, 3, 3, 3), true),
            (64, 64, 3, 64, explicit(3, 3, 3, 3), false),
            (7, 7, 1, 5, Padding::Valid, false),
            (20, 13, 2, 6, Padding::Same, true),
            (9, 16, 4, 9, explicit(0, 2, 1, 0), false),
            (11, 8, 3, 1, Padding::Same, false),
        ];
        for isa in crate::codegen::tests::tiers() {
            for &(h, w, cin, cout, pad, relu) in &cases {
                let e = check(h, w, cin, cout, pad, relu, Tile::of(isa));
                eprintln!("{isa}: {h}x{w}x{cin} -> {cout}: relative error {e:e}");
                assert!(e < 1e-5, "{isa}: {h}x{w}x{cin} -> {cout} {pad:?}: relative error {e:e}");
            }
        }
    }

    #[test]
    fn stem_applies_to_7x7_stride_2_of_few_channels_only() {
        let c = Conv::new(64, [7, 7], [2, 2], Padding::Same, true);
        assert!(stem_applies(&c, [224, 224, 3]));
        assert!(!stem_applies(&c, [224, 224, 5]));
        assert!(!stem_applies(&Conv::new(64, [7, 7], [1, 1], Padding::Same, true), [32, 32, 3]));
        assert!(!stem_applies(&Conv::new(64, [5, 5], [2, 2], Padding::Same, true), [32, 32, 3]));
        let mut r = c.clone();
        r.residual = true;
        assert!(!stem_applies(&r, [224, 224, 3]));
    }
}
