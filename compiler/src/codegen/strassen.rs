//! 1x1 convolutions as one level of Strassen's algorithm: 7 half-size GEMMs instead of 8 (12.5 % fewer
//! multiplications), for the layers where the extra additions cost little and the half-size tiles stay
//! efficient: 100..=784 output pixels, >= 256 input and >= 256 output channels. In ResNet-50 that is every
//! 1x1 conv of stage 4 (14x14: isolated 41-43 -> 45-49 effective GFLOP/s) and stage 3's stride-2
//! projection (56x56 -> 28x28, 256 -> 512: 35-39 -> 40-45). Measured not to gain: 7x7 maps (stage 5: the
//! 25-row halves cut into uneven tiles; no gain in the network), K = 128 or 64 (the half-length K loops
//! lose more than the multiplications save: 28x28 128 -> 512 37 -> 29) and N = 128 or 64 (stage 3's
//! 512 -> 128: the same within noise).
//!
//! The conv is the GEMM `C[M x N] = A[M x K] * B[K x N]` (M output pixels, K = cin, N = cout). A is split
//! into row halves (pixels `0..M2` and `M2..M`, M2 = ceil(M/2), a missing last row reads as zero) and channel
//! halves, B into channel halves both ways, C into quadrants:
//!
//! | product | left (A) | right (B, combined at compile time) | added into |
//! |---|---|---|---|
//! | M1 | A11 + A22 | B11 + B22 | C11, C22 |
//! | M2 | A21 + A22 | B11 | C21, -C22 |
//! | M3 | A11 | B12 - B22 | C12, C22 |
//! | M4 | A22 | B21 - B11 | C11, C21 |
//! | M5 | A11 + A12 | B22 | -C11, C12 |
//! | M6 | A21 - A11 | B11 + B12 | C22 |
//! | M7 | A12 - A22 | B21 + B22 | C11 |
//!
//! - Constants: the 7 right operands packed as `T[product][panel][K/2][4]` (computed in f64), then the bias.
//! - Task = a block of row tiles of the top half (`mr` rows each, and the same rows of the bottom half), at
//!   least one per thread and at most `ConvTiling::strassen_task_rows` rows each (so that its left operands
//!   stay in L2), over all output channels. Per task: the 7 left operands of its rows are formed once into
//!   the work buffer (sums done while copying; `7 x rows x K/2` floats). Then per chunk of up to 32 panels
//!   of the right half: for each product and row tile, the usual `mr x 4` f32x4 micro-kernel runs over
//!   K/2 for each panel and the result is added into the 1-2 quadrant tiles it feeds, kept in a scratch
//!   area (`4 x rows x panels x 4` floats); then the fused epilogue (bias, relu, residual, relu after add)
//!   writes the chunk's four quadrants to the output.
//! - Numerics: one level adds a few roundings per output (the left sums, the compile-time right sums and
//!   the quadrant sums); ResNet-50 with it agrees with Keras to 2.3e-6 of the largest logit, as without.

use super::family::{Helpers, KernelFamily, LayerWeights, TaskEnv};
use super::gemm::*;
use super::util::*;
use crate::ops::Conv;
use cranelift_codegen::ir::{condcodes::IntCC, types, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use resnetc_runtime::abi::align_floats;
use resnetc_runtime::AlignedBuf;

/// Left operands: (row half, channel half, negated) terms.
const LEFT: [&[(usize, usize, bool)]; 7] = [
    &[(0, 0, false), (1, 1, false)],
    &[(1, 0, false), (1, 1, false)],
    &[(0, 0, false)],
    &[(1, 1, false)],
    &[(0, 0, false), (0, 1, false)],
    &[(1, 0, false), (0, 0, true)],
    &[(0, 1, false), (1, 1, true)],
];
/// Right operands: (channel half, output half, negated) terms of B.
const RIGHT: [&[(usize, usize, bool)]; 7] = [
    &[(0, 0, false), (1, 1, false)],
    &[(0, 0, false)],
    &[(0, 1, false), (1, 1, true)],
    &[(1, 0, false), (0, 0, true)],
    &[(1, 1, false)],
    &[(0, 0, false), (0, 1, false)],
    &[(1, 0, false), (1, 1, false)],
];
/// Quadrant (0 = C11, 1 = C12, 2 = C21, 3 = C22) each product is added into, and whether subtracted.
const TARGETS: [&[(usize, bool)]; 7] = [
    &[(0, false), (3, false)],
    &[(2, false), (3, true)],
    &[(1, false), (3, false)],
    &[(0, false), (2, false)],
    &[(0, true), (1, false)],
    &[(3, false)],
    &[(0, false)],
];

/// Everything about one Strassen convolution that the generated code bakes in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StrassenPlan {
    pub w: usize,
    pub cin: usize,
    pub cout: usize,
    pub sh: usize,
    pub sw: usize,
    pub oh: usize,
    pub ow: usize,
    pub m: usize,
    /// Rows of the top half (ceil(M/2)) and of the bottom half (M - M2).
    pub m2: usize,
    pub mb: usize,
    pub k2: usize,
    pub n2: usize,
    pub npan2: usize,
    /// Rows per tile, tiles over the top half, rows of the last tile, tiles per task, tasks.
    pub mr: usize,
    pub mtiles: usize,
    pub mlast: usize,
    pub tpt: usize,
    pub ntasks: usize,
    /// Panels per chunk (the quadrant scratch holds one chunk), chunks.
    pub ncp: usize,
    pub nchunks: usize,
    pub epi: Epilogue,
}

/// Blocking of Strassen convolutions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StrassenTiling {
    /// Tasks at least (each task forms its left operands once; more would repeat that work).
    pub min_tasks: usize,
    /// Rows of the top half per task at most, so that a task's left operands (`7 x rows x K/2` floats)
    /// stay in L2.
    pub task_rows: usize,
    /// Micro-kernel rows at most (<= `MR`).
    pub mr_max: usize,
}

impl Default for StrassenTiling {
    fn default() -> Self {
        StrassenTiling { min_tasks: 1, task_rows: 128, mr_max: MR }
    }
}

/// Whether [`StrassenPlan`] can compute this convolution: an unpadded 1x1 conv (any stride) with at least
/// 2 output pixels and channel counts that split into whole vectors (cin and cout multiples of 8). Where
/// it pays is the lowering's decision (`lower::Rules`).
pub fn strassen_applies(conv: &Conv, input: [usize; 3]) -> bool {
    let [h, w, cin] = input;
    if conv.kernel != [1, 1] || h == 0 || w == 0 || conv.strides.contains(&0) {
        return false;
    }
    if !conv.padding.pads(h, w, conv.kernel, conv.strides).is_zero() {
        return false;
    }
    let m = h.div_ceil(conv.strides[0]) * w.div_ceil(conv.strides[1]);
    m >= 2 && cin.is_multiple_of(8) && conv.filters.is_multiple_of(8)
}

impl StrassenPlan {
    pub fn new(conv: &Conv, input: [usize; 3], t: &StrassenTiling) -> Result<StrassenPlan, String> {
        if !strassen_applies(conv, input) {
            return Err("Strassen needs an unpadded 1x1 conv with channel counts divisible by 8".into());
        }
        let [h, w, cin] = input;
        let [sh, sw] = conv.strides;
        let (oh, ow) = ((h - 1) / sh + 1, (w - 1) / sw + 1);
        let m = oh * ow;
        let m2 = m.div_ceil(2);
        let cout = conv.filters;
        let (k2, n2) = (cin / 2, cout / 2);
        let npan2 = n2 / NR;
        // Tasks are blocks of row tiles: each forms its left operands once (all 7, kept in the work buffer)
        // and reads all right operands (from L2/L3; they are reused by every row tile of the task). The
        // tile count is rounded up to a multiple of the task count, so the tasks are even.
        let ntasks0 = t.min_tasks.max(m2.div_ceil(t.task_rows.max(1))).clamp(1, m2);
        let nt = m2.div_ceil(t.mr_max.clamp(1, MR)).next_multiple_of(ntasks0).min(m2);
        let mr = m2.div_ceil(nt);
        let mtiles = m2.div_ceil(mr);
        let mlast = m2 - (mtiles - 1) * mr;
        let tpt = mtiles.div_ceil(ntasks0);
        let ntasks = mtiles.div_ceil(tpt);
        // Panels in chunks of at most 32: the quadrant scratch of a chunk stays within L2.
        let nchunks = npan2.div_ceil(32);
        let ncp = npan2.div_ceil(nchunks);
        Ok(StrassenPlan {
            w,
            cin,
            cout,
            sh,
            sw,
            oh,
            ow,
            m,
            m2,
            mb: m - m2,
            k2,
            n2,
            npan2,
            mr,
            mtiles,
            mlast,
            tpt,
            ntasks,
            ncp,
            nchunks,
            epi: Epilogue::of(conv),
        })
    }

    /// Rows of a task's tiles.
    fn task_rows(&self) -> usize {
        self.tpt * self.mr
    }

    fn left_floats(&self) -> usize {
        align_floats(7 * self.task_rows() * self.k2)
    }

    pub fn bias_offset(&self) -> usize {
        7 * self.npan2 * self.k2 * NR
    }

    /// Packs the Keras kernel `[1, 1, cin, cout]` into the 7 right operands `T[p][panel][K/2][4]` + bias.
    pub fn pack_weights(&self, kernel: &[f32], bias: Option<&[f32]>) -> AlignedBuf {
        let (k2, n2, cout) = (self.k2, self.n2, self.cout);
        let mut out = AlignedBuf::zeroed(self.bias_offset() + self.cout);
        let o = out.as_mut_slice();
        // Per product and row k of the right half: the sum of its terms' rows (contiguous in n, so the
        // loops vectorize), then scattered into the panels.
        let mut row = vec![0f64; n2];
        for (p, terms) in RIGHT.iter().enumerate() {
            for k in 0..k2 {
                row.iter_mut().for_each(|x| *x = 0.0);
                for &(kh, nh, neg) in terms.iter() {
                    let src = &kernel[(kh * k2 + k) * cout + nh * n2..][..n2];
                    let sign = if neg { -1.0 } else { 1.0 };
                    for (r, &x) in row.iter_mut().zip(src) {
                        *r += sign * x as f64;
                    }
                }
                for (pan, chunk) in row.chunks_exact(NR).enumerate() {
                    let dst = &mut o[((p * self.npan2 + pan) * k2 + k) * NR..][..NR];
                    for (d, &v) in dst.iter_mut().zip(chunk) {
                        *d = v as f32;
                    }
                }
            }
        }
        if let Some(b) = bias {
            let off = self.bias_offset();
            o[off..off + cout].copy_from_slice(b);
        }
        out
    }
}

impl KernelFamily for StrassenPlan {
    fn ntasks(&self) -> usize {
        self.ntasks
    }

    /// The 7 left operands of the task's rows, then the four quadrants of one panel chunk.
    fn work_floats(&self) -> usize {
        self.left_floats() + 4 * self.task_rows() * self.ncp * NR
    }

    fn out_shape(&self) -> Vec<usize> {
        vec![self.oh, self.ow, self.cout]
    }

    fn reads_input2(&self) -> bool {
        self.epi.residual
    }

    fn helpers(&self) -> Helpers {
        Helpers { prefetch: true, ..Default::default() }
    }

    fn packed_floats(&self) -> usize {
        self.bias_offset() + self.cout
    }

    fn pack(&self, w: &LayerWeights) -> Result<AlignedBuf, String> {
        let (kernel, bias) = w.checked(self.cin * self.cout, self.epi.bias, self.cout)?;
        Ok(self.pack_weights(kernel, bias))
    }

    fn emit_task(&self, b: &mut FunctionBuilder, env: &TaskEnv, task: Value) {
        emit_task(b, self, *env, task)
    }
}

fn emit_task(b: &mut FunctionBuilder, p: &StrassenPlan, ptrs: TaskEnv, t: Value) {
    let mt0 = b.ins().imul_imm_s(t, p.tpt as i64);
    let mt1 = b.ins().iadd_imm_s(mt0, p.tpt as i64);
    let full_end = iconst(b, p.mtiles - 1);
    let mt_end = b.ins().umin(mt1, full_end);
    let is_last = b.ins().icmp_imm_u(IntCC::Equal, t, (p.ntasks - 1) as i64);
    // Rows of the bottom half that exist in a tile: all of them except in the last tile when M is odd.
    let last_bottom = p.mb - (p.mtiles - 1) * p.mr;
    // Calls `f(tile's first top-half row, its row in the task, rows, bottom rows, first tile of the task)`
    // for the task's tiles; with `peel`, the first tile's call is emitted apart (with `first` set).
    type TileFn<'a> = &'a dyn Fn(&mut FunctionBuilder, Value, Value, usize, usize, bool);
    let tiles = |b: &mut FunctionBuilder, peel: bool, f: TileFn| {
        let full = |b: &mut FunctionBuilder, mt: Value, first: bool| {
            let r0 = b.ins().imul_imm_s(mt, p.mr as i64);
            let lt = b.ins().isub(mt, mt0);
            let lr = b.ins().imul_imm_s(lt, p.mr as i64);
            f(b, r0, lr, p.mr, p.mr, first);
        };
        let mut next = mt0;
        if peel {
            let any = b.ins().icmp(IntCC::SignedLessThan, mt0, mt_end);
            if_then(b, any, |b| full(b, mt0, true));
            next = b.ins().iadd_imm_s(mt0, 1);
        }
        for_range(b, next, mt_end, &[], |b, mt, _| {
            full(b, mt, false);
            vec![]
        });
        if_then(b, is_last, |b| {
            let r0 = iconst(b, (p.mtiles - 1) * p.mr);
            let lt = b.ins().isub(full_end, mt0);
            let lr = b.ins().imul_imm_s(lt, p.mr as i64);
            // The last task's first tile when that task has no full ones.
            f(b, r0, lr, p.mlast, last_bottom, peel && p.mtiles - 1 == (p.ntasks - 1) * p.tpt);
        });
    };
    tiles(b, false, &|b, r0, lr, rows, bottom, _| emit_left(b, p, ptrs, r0, lr, rows, bottom));
    let z = iconst(b, 0);
    let nc = iconst(b, p.nchunks);
    for_range(b, z, nc, &[], |b, c, _| {
        let p0 = b.ins().imul_imm_s(c, p.ncp as i64);
        let p1 = b.ins().iadd_imm_s(p0, p.ncp as i64);
        let np = iconst(b, p.npan2);
        let p_end = b.ins().umin(p1, np);
        for prod in 0..7 {
            // The first tile streams the right operands from memory; it prefetches them.
            tiles(b, true, &|b, _r0, lr, rows, _bottom, first| {
                emit_product(b, p, ptrs, prod, lr, rows, p0, p_end, first)
            });
        }
        tiles(b, false, &|b, r0, lr, rows, bottom, _| emit_epilogue(b, p, ptrs, r0, lr, rows, bottom, p0, p_end));
        vec![]
    });
}

/// Byte address of output pixel `row`'s input channel 0 (the 1x1 conv reads pixel (oy*sh, ox*sw)).
fn pixel_addr(b: &mut FunctionBuilder, p: &StrassenPlan, inp: Value, row: Value) -> Value {
    let e = if p.sh == 1 && p.sw == 1 {
        b.ins().imul_imm_s(row, p.cin as i64)
    } else {
        let oy = b.ins().udiv_imm_u(row, p.ow as i64);
        let ox = b.ins().urem_imm_u(row, p.ow as i64);
        let iy = b.ins().imul_imm_s(oy, (p.sh * p.w) as i64);
        let ix = b.ins().imul_imm_s(ox, p.sw as i64);
        let pix = b.ins().iadd(iy, ix);
        b.ins().imul_imm_s(pix, p.cin as i64)
    };
    addr(b, inp, e, 4, 0)
}

/// Quadrant scratch of the tile at row `lr` of the task: `quad[q][row][panel j][4]`.
fn quad_base(b: &mut FunctionBuilder, p: &StrassenPlan, ptrs: TaskEnv, lr: Value, p0: Value, pan: Value) -> Value {
    let j = b.ins().isub(pan, p0);
    let r = b.ins().imul_imm_s(lr, p.ncp as i64);
    let e = b.ins().iadd(r, j);
    addr(b, ptrs.work, e, NR * 4, (p.left_floats() * 4) as i64)
}

/// Byte offset in the quadrant scratch of quadrant `q`, tile row `i`.
fn quad_off(p: &StrassenPlan, q: usize, i: usize) -> i32 {
    (((q * p.task_rows() + i) * p.ncp) * NR * 4) as i32
}

/// Byte address of left operand `prod`'s row `lr` (row of the task) in the work buffer.
fn left_addr(b: &mut FunctionBuilder, p: &StrassenPlan, ptrs: TaskEnv, prod: usize, lr: Value) -> Value {
    addr(b, ptrs.work, lr, p.k2 * 4, (prod * p.task_rows() * p.k2 * 4) as i64)
}

/// Forms the 7 left operands of one row tile (`rows` rows of the top half from `r0`, of which the first
/// `bottom` exist in the bottom half) at row `lr` of the task's left-operand area: per row and vector of
/// K/2, the four input quadrant vectors are loaded once and the 7 sums and differences stored (a missing
/// bottom row reads as zero). Rows are a run-time loop, so the code does not grow with the tile.
#[allow(clippy::too_many_arguments)]
fn emit_left(
    b: &mut FunctionBuilder,
    p: &StrassenPlan,
    ptrs: TaskEnv,
    r0: Value,
    lr: Value,
    rows: usize,
    bottom: usize,
) {
    let row_bytes = p.k2 * 4;
    let prod_bytes = p.task_rows() * p.k2 * 4;
    let row_loop = |b: &mut FunctionBuilder, i0: usize, i1: usize, with_bottom: bool| {
        if i0 >= i1 {
            return;
        }
        let (lo, hi) = (iconst(b, i0), iconst(b, i1));
        for_range(b, lo, hi, &[], |b, i, _| {
            let r = b.ins().iadd(r0, i);
            let top = pixel_addr(b, p, ptrs.inp, r);
            let bot = with_bottom.then(|| {
                let rb = b.ins().iadd_imm_s(r, p.m2 as i64);
                pixel_addr(b, p, ptrs.inp, rb)
            });
            let li = b.ins().iadd(lr, i);
            let dst = left_addr(b, p, ptrs, 0, li);
            let z = iconst(b, 0);
            let n = iconst(b, p.k2 / 4);
            for_range(b, z, n, &[], |b, v, _| {
                let off = b.ins().imul_imm_s(v, 16);
                let ld = |b: &mut FunctionBuilder, base: Value, kh: usize| {
                    let a = b.ins().iadd(base, off);
                    b.ins().load(types::F32X4, mf_input(), a, (kh * row_bytes) as i32)
                };
                let q = [
                    [Some(ld(b, top, 0)), Some(ld(b, top, 1))],
                    bot.map_or([None, None], |x| [Some(ld(b, x, 0)), Some(ld(b, x, 1))]),
                ];
                let d = b.ins().iadd(dst, off);
                for (prod, terms) in LEFT.iter().enumerate() {
                    let mut acc: Option<Value> = None;
                    for &(rh, kh, neg) in terms.iter() {
                        let Some(x) = q[rh][kh] else { continue };
                        acc = Some(match (acc, neg) {
                            (None, false) => x,
                            (None, true) => b.ins().fneg(x),
                            (Some(s), false) => b.ins().fadd(s, x),
                            (Some(s), true) => b.ins().fsub(s, x),
                        });
                    }
                    let val = acc.unwrap_or_else(|| zero4(b));
                    b.ins().store(mf_rw(), val, d, (prod * prod_bytes) as i32);
                }
                vec![]
            });
            vec![]
        });
    };
    row_loop(b, 0, bottom.min(rows), true);
    row_loop(b, bottom.min(rows), rows, false);
}

/// Product `prod` for one row tile (`rows` rows at row `lr` of the task) over the panels `p0..p_end` of
/// the right half, added into the quadrant scratch. The task's first tile (`first`) reads the right
/// operands from memory; it prefetches the next panel's while it computes.
#[allow(clippy::too_many_arguments)]
fn emit_product(
    b: &mut FunctionBuilder,
    p: &StrassenPlan,
    ptrs: TaskEnv,
    prod: usize,
    lr: Value,
    rows: usize,
    p0: Value,
    p_end: Value,
    first: bool,
) {
    let row_bytes = p.k2 * 4;
    let left = left_addr(b, p, ptrs, prod, lr);
    let sets = accumulator_sets(rows);
    let pf = if first { ptrs.prefetch.map(|f| (f, p.k2 * NR * 4)) } else { None };
    // The product for each panel, added into its quadrant tiles.
    for_range(b, p0, p_end, &[], |b, pan, _| {
        let bo = b.ins().imul_imm_s(pan, (p.k2 * NR * 4) as i64);
        let b0 = b.ins().iadd(ptrs.cst, bo);
        let b0 = b.ins().iadd_imm_s(b0, (prod * p.npan2 * p.k2 * NR * 4) as i64);
        let zeros: Vec<Value> = (0..rows).map(|_| zero4(b)).collect();
        let kl = KLoop {
            b0,
            a0: left,
            a_kstride: 4,
            a_rowstride: row_bytes,
            a_flags: mf_packed(),
            steps: p.k2,
            unroll: k_unroll(pf.is_some(), rows, sets, 2),
            sets,
            fma_b_first: false,
            prefetch: pf,
        };
        let accs = emit_k_loop(b, &kl, zeros);
        let qcol = quad_base(b, p, ptrs, lr, p0, pan);
        for &(q, neg) in TARGETS[prod] {
            // The first product feeding a quadrant stores; the others add (all first touches are +).
            let first = TARGETS[..prod].iter().all(|ts| ts.iter().all(|&(q2, _)| q2 != q));
            for (i, &acc) in accs.iter().enumerate() {
                let off = quad_off(p, q, i);
                let v = if first {
                    acc
                } else {
                    let c = b.ins().load(types::F32X4, mf_rw(), qcol, off);
                    if neg {
                        b.ins().fsub(c, acc)
                    } else {
                        b.ins().fadd(c, acc)
                    }
                };
                b.ins().store(mf_rw(), v, qcol, off);
            }
        }
        vec![]
    });
}

/// The epilogue of one row tile: its four quadrant tiles to the output (bottom rows past M are dropped).
#[allow(clippy::too_many_arguments)]
fn emit_epilogue(
    b: &mut FunctionBuilder,
    p: &StrassenPlan,
    ptrs: TaskEnv,
    r0: Value,
    lr: Value,
    rows: usize,
    bottom: usize,
    p0: Value,
    p_end: Value,
) {
    for_range(b, p0, p_end, &[], |b, pan, _| {
        let qcol = quad_base(b, p, ptrs, lr, p0, pan);
        for q in 0..4 {
            let (rh, ch) = (q / 2, q % 2);
            let nrows = if rh == 0 { rows } else { bottom };
            // Output channel of lane 0: ch*n2 + pan*4.
            let c0 = b.ins().imul_imm_s(pan, NR as i64);
            let c0 = b.ins().iadd_imm_s(c0, (ch * p.n2) as i64);
            let bias = p.epi.bias.then(|| {
                let ba = addr(b, ptrs.cst, c0, 4, (p.bias_offset() * 4) as i64);
                b.ins().load(types::F32X4, mf_input(), ba, 0)
            });
            let r = b.ins().iadd_imm_s(r0, (rh * p.m2) as i64);
            let rc = b.ins().imul_imm_s(r, p.cout as i64);
            let e = b.ins().iadd(rc, c0);
            let obase = addr(b, ptrs.out, e, 4, 0);
            let rbase = p.epi.residual.then(|| addr(b, ptrs.res, e, 4, 0));
            for i in 0..nrows {
                let v = b.ins().load(types::F32X4, mf_rw(), qcol, quad_off(p, q, i));
                let off = (i * p.cout * 4) as i32;
                let v = conv_epilogue(b, v, bias, p.epi.relu, rbase.map(|rb| (rb, off, NR)), p.epi.relu_after_add);
                b.ins().store(mf_rw(), v, obase, off);
            }
        }
        vec![]
    });
}
