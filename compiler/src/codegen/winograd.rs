//! Winograd convolution kernels for 3x3, stride-1 convolutions padded by 1 on every side (`same`), NHWC f32.
//!
//! F(m x m, 3x3) with m = 2 (alpha = 4, 16 transformed positions) or m = 4 (alpha = 6, 36 positions):
//! the output is cut into m x m tiles (tile t = ty * tiles_w + tx, partial tiles at the right/bottom edges).
//!
//! - Weights: U = G g Gᵀ computed at compile time (in f64) and packed as `U[xi][panel][cin][4]` (panels of 4
//!   output channels, zero-padded), followed by the bias padded to `npan * 4`. That is [`Kernel::consts`].
//! - Task = (block of `nt` tiles) x (group of output-channel blocks). Per task:
//!   1. input transform: for each tile, Bᵀ d B over 4 channels at a time (f32x4) into `V[xi][tile][cinp]` in
//!      the work buffer. Interior tiles read the NHWC input directly; border tiles first copy their
//!      alpha x alpha patch (zeros outside the image) into a scratch area of the work buffer.
//!   2. for each output-channel block (`cbp` panels of 4): for each position xi, a GEMM
//!      `M[xi][tiles][4*cbp] = V[xi][tiles][cin] * U[xi][cin][4*cbp]` with an `r` x 4 f32x4 micro-kernel
//!      (one broadcast load of V per FMA, the U vector in a register, cin loop with a header test and an
//!      unconditional back edge, unrolled by 2), then
//!   3. output transform Aᵀ m A per tile and 4 channels, fused epilogue (bias, relu, residual from `input2`,
//!      relu after add), masked stores for partial tiles and channel tails.
//!
//! Work buffer: `alpha² * nt * cinp` (V) + `alpha² * nt * 4 * cbp` (M) + `alpha² * cinp` (scratch) floats.

use super::family::{Helpers, KernelFamily, LayerWeights, TaskEnv};
use super::gemm::*;
pub use super::transform::WinogradTile;
use super::transform::{mats, transform2d, Mats};
use super::util::*;
use super::x86::GemmUkernel;
use crate::ops::Conv;
use cranelift_codegen::ir::{condcodes::IntCC, types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;
use resnetc_runtime::abi::align_floats;
use resnetc_runtime::AlignedBuf;

/// Blocking parameters of Winograd kernels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WinogradTiling {
    pub tile: WinogradTile,
    /// Micro-kernel rows (tiles) at most (<= the tile's rows).
    pub rows: usize,
    /// Row blocks per task at most (tiles per task = rows * row_blocks), further bounded by `v_budget`.
    /// Default 1: with 2-3 blocks, V and M of a task (221 KB each on 56x56x64) fell out of L2's sweet spot;
    /// one block made ResNet-50's 56x56x64 layers 25 % faster (bench winograd 114 -> 142 effective
    /// GFLOP/s; 2.04-2.10 -> 1.69-1.77 ms each inside the network), the notebook's 15x15x64 6 %.
    pub row_blocks: usize,
    /// Floats of the transformed input V a task may hold (bounds row_blocks).
    pub v_budget: usize,
    /// Output channels per channel block, in units of 4 (so 16 = 64 channels; at least one panel of the
    /// tile).
    pub cout_panels: usize,
    /// Split channel blocks into groups until there are at least this many tasks.
    pub min_tasks: usize,
    /// The GEMM micro-kernel tile of the CPU tier (rows at most, and the width U is packed in).
    pub gemm_tile: Tile,
    /// Threads the kernel will run on: with more than one, the plan may take fewer micro-kernel rows or
    /// more channel groups when that shortens the modelled makespan (see `makespan`). ResNet-50's 28x28x128
    /// layers have 5 tile blocks, which 2 threads ran as 3 + 2 (1.62-1.69x faster than 1 thread, where the
    /// other layers reach 1.8-1.9x); 2 groups make 10 equal tasks at the price of a second input transform.
    pub threads: usize,
    /// Maps of at most this many tiles (each GEMM has that many rows: weights are reused that often) prefetch
    /// the transformed weights `prefetch_distance` bytes ahead (see `ConvTiling::prefetch_max_m`).
    pub prefetch_max_tiles: usize,
    pub prefetch_distance: usize,
}

impl Default for WinogradTiling {
    fn default() -> Self {
        WinogradTiling {
            tile: WinogradTile::F2,
            rows: 12,
            row_blocks: 1,
            v_budget: 64 * 1024,
            cout_panels: 16,
            min_tasks: 4,
            gemm_tile: Tile::default(),
            threads: 1,
            prefetch_max_tiles: 24,
            prefetch_distance: 8192,
        }
    }
}

/// Whether [`WinogradPlan`] can compute this convolution: 3x3 kernel, stride 1, padding 1 on each side
/// (`same` or explicit), non-empty input.
pub fn winograd_applies(conv: &Conv, input: [usize; 3]) -> bool {
    let [h, w, c] = input;
    if conv.kernel != [3, 3] || conv.strides != [1, 1] || h == 0 || w == 0 || c == 0 || conv.filters == 0 {
        return false;
    }
    let p = conv.padding.pads(h, w, conv.kernel, conv.strides);
    p.top == 1 && p.bottom == 1 && p.left == 1 && p.right == 1
}

impl WinogradTiling {
    /// The default tiling with the tile size that measured fastest for this input: F(4x4) from 7x7 maps up,
    /// F(2x2) below. (14x14 and 7x7 maps used F(2x2) until the weight prefetch of small tile counts made
    /// F(4x4) faster there: 14x14 by 10-25 %, ResNet-50's three 7x7 layers 12.1-14.7 -> 10.9-14.3 ms on one
    /// thread and 8.7-10.3 -> 6.7-7.0 ms on two. ResNet-50 is 2.3e-6 of Keras with it. Smaller maps stream
    /// their weights, which F(4x4) makes 4x larger than the direct kernel's, F(2x2) only 1.8x.)
    pub fn for_input(input: [usize; 3]) -> WinogradTiling {
        let [h, w, _] = input;
        let tile = if h.min(w) >= 7 { WinogradTile::F4 } else { WinogradTile::F2 };
        WinogradTiling { tile, ..WinogradTiling::default() }
    }
}

/// Everything about one Winograd convolution that the generated code bakes in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WinogradPlan {
    pub tile: WinogradTile,
    /// The GEMM micro-kernel tile: U is packed in panels of `gemm_tile.nr` channels.
    pub gemm_tile: Tile,
    /// Output tile size m and transformed tile size a = m + 2.
    pub m: usize,
    pub a: usize,
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    /// cin rounded up to a multiple of 4 (row stride of V).
    pub cinp: usize,
    pub cout: usize,
    pub npan: usize,
    pub nfullpan: usize,
    pub ntail: usize,
    pub tiles_h: usize,
    pub tiles_w: usize,
    /// Batch items one call computes, and the tiles of all of them (`items * tiles_h * tiles_w`; tile `t` is
    /// tile `t % (tiles_h * tiles_w)` of item `t / (tiles_h * tiles_w)`).
    pub items: usize,
    pub ntiles: usize,
    /// Micro-kernel rows, row blocks per task, tiles per task (= r * nrb).
    pub r: usize,
    pub nrb: usize,
    pub nt: usize,
    /// Tile blocks.
    pub ntb: usize,
    /// Panels per output-channel block, number of blocks, blocks per group, groups.
    pub cbp: usize,
    pub ncb: usize,
    pub cpg: usize,
    pub ng: usize,
    pub epi: Epilogue,
    /// Weight prefetch distance in bytes, 0 for none.
    pub prefetch: usize,
}

/// Makespan of a Winograd layer's tasks on `threads` threads, tasks taken in order by whichever thread is
/// free (as `ThreadPool` does). Task `tb * ng + g` covers the tiles of block `tb` (`nt` each, the last block
/// the rest of `ntiles`) and the channel blocks of group `g` (`ncb` in all); `cost(nt, tiles, blocks)`
/// models one task.
fn makespan(
    ntiles: usize,
    nt: usize,
    ng: usize,
    ncb: usize,
    threads: usize,
    cost: &impl Fn(usize, usize, usize) -> f64,
) -> f64 {
    let cpg = ncb.div_ceil(ng);
    let ng = ncb.div_ceil(cpg);
    let mut free = vec![0f64; threads.max(1)];
    for tb in 0..ntiles.div_ceil(nt) {
        let tiles = nt.min(ntiles - tb * nt);
        for g in 0..ng {
            let blocks = cpg.min(ncb - g * cpg);
            let i = (0..free.len()).min_by(|&x, &y| free[x].total_cmp(&free[y])).unwrap_or(0);
            free[i] += cost(nt, tiles, blocks);
        }
    }
    free.into_iter().fold(0f64, f64::max)
}

impl WinogradPlan {
    /// The plan for one batch item per call.
    pub fn new(conv: &Conv, input: [usize; 3], t: &WinogradTiling) -> Result<WinogradPlan, String> {
        WinogradPlan::batched(conv, input, 1, t)
    }

    /// The plan for `items` batch items per call (their tiles are the GEMMs' rows).
    pub fn batched(conv: &Conv, input: [usize; 3], items: usize, t: &WinogradTiling) -> Result<WinogradPlan, String> {
        if !winograd_applies(conv, input) {
            return Err("winograd needs a 3x3, stride-1 convolution padded by 1 on each side".into());
        }
        let [h, w, cin] = input;
        let cout = conv.filters;
        let m = match t.tile {
            WinogradTile::F2 => 2,
            WinogradTile::F4 => 4,
        };
        let a = m + 2;
        let cinp = cin.next_multiple_of(4);
        let nr = t.gemm_tile.nr;
        let npan = cout.div_ceil(nr);
        let (tiles_h, tiles_w) = (h.div_ceil(m), w.div_ceil(m));
        let items = items.max(1);
        let ntiles = tiles_h * tiles_w * items;
        let rmax = t.rows.clamp(1, t.gemm_tile.mr);
        let r = ntiles.div_ceil(ntiles.div_ceil(rmax));
        // Maps that stream their transformed weights (at most `prefetch_max_tiles` tiles) take all their tiles
        // in every task, as row blocks under each panel of U, so U is read from memory once; channel groups
        // then make the parallelism. (ResNet-50's 14x14x256 layers on AVX-512: two tile blocks of 8 read the
        // 9.4 MB of U twice; in one task the six layers went 8.8 -> 7.7-7.9 ms on one thread, now faster than
        // the GEMM kernel's.) Larger maps: one row block per task (see `row_blocks`), within `v_budget`.
        let streaming = ntiles <= t.prefetch_max_tiles;
        // Channel blocks of `cbp` panels; groups of them split a layer's tasks by output channels.
        let cbp = (t.cout_panels * 4 / nr).max(1).min(npan);
        let ncb = npan.div_ceil(cbp);
        let rb_budget = (t.v_budget / (a * a * r * cinp)).max(1);
        let mut nrb =
            if streaming { ntiles.div_ceil(r) } else { t.row_blocks.max(1).min(rb_budget).min(ntiles.div_ceil(r)) };
        // Fewer row blocks per task before channel groups, which would repeat the input transform; when
        // streaming, only if the channel groups cannot make `min_tasks` tasks (e.g. 64 output channels).
        let groups = if streaming { ncb } else { 1 };
        while nrb > 1 && ntiles.div_ceil(r * nrb) * groups < t.min_tasks {
            nrb -= 1;
        }
        let nt = r * nrb;
        let ntb = ntiles.div_ceil(nt);
        // Groups of channel blocks: more groups (each repeats the input transform) only for parallelism.
        let min_groups = |ntb: usize| (1..=ncb).find(|g| ntb * g >= t.min_tasks).unwrap_or(ncb);
        let ng = min_groups(ntb);
        // On several threads, other row counts (one row block per task) and more channel groups, when the
        // modelled makespan is more than 2 % shorter each: ResNet-50's 28x28x128 layers have 5 tile blocks
        // (3 + 2 on two threads) and take 2 channel groups (10 equal tasks, the input transform done
        // twice); its 56x56x64 layers (196 tiles, one channel block) take 11 rows, 18 blocks, for 17.
        let (mut r, mut nt, mut ng) = (r, nt, ng);
        if t.threads > 1 {
            // Cycles, roughly: the input transform (~0.9 per float of V) and the GEMM (2 FMAs of the tier's
            // vector width per cycle over all `nt` rows, partial blocks included); the output transform rides
            // with the GEMM.
            let a2 = (a * a) as f64;
            let vectors = (cbp * nr).div_ceil(t.gemm_tile.isa.vector_floats()) as f64;
            let cost = |nt: usize, tiles: usize, blocks: usize| {
                tiles as f64 * a2 * cinp as f64 * 0.9 + nt as f64 * a2 * cin as f64 * blocks as f64 * vectors / 2.0
            };
            let mut best = makespan(ntiles, nt, ng, ncb, t.threads, &cost);
            let rows = if nrb == 1 { rmax.saturating_sub(3).max(1)..=rmax } else { r..=r };
            for r2 in std::iter::once(r).chain(rows.rev()) {
                for ng2 in min_groups(ntiles.div_ceil(r2 * nrb))..=ncb {
                    let m = makespan(ntiles, r2 * nrb, ng2, ncb, t.threads, &cost);
                    if m < best * 0.98 {
                        (r, nt, ng, best) = (r2, r2 * nrb, ng2, m);
                    }
                }
            }
        }
        let ntb = ntiles.div_ceil(nt);
        let cpg = ncb.div_ceil(ng);
        let ng = ncb.div_ceil(cpg);
        Ok(WinogradPlan {
            tile: t.tile,
            gemm_tile: t.gemm_tile,
            m,
            a,
            h,
            w,
            cin,
            cinp,
            cout,
            npan,
            nfullpan: cout / nr,
            ntail: cout % nr,
            tiles_h,
            tiles_w,
            items,
            ntiles,
            r,
            nrb,
            nt,
            ntb,
            cbp,
            ncb,
            cpg,
            ng,
            epi: Epilogue::of(conv),
            prefetch: if ntiles <= t.prefetch_max_tiles { t.prefetch_distance } else { 0 },
        })
    }

    fn v_floats(&self) -> usize {
        align_floats(self.a * self.a * self.nt * self.cinp)
    }

    fn m_floats(&self) -> usize {
        align_floats(self.a * self.a * self.nt * self.cbp * self.gemm_tile.nr)
    }

    /// Float offset of the bias in the packed constants.
    pub fn bias_offset(&self) -> usize {
        self.a * self.a * self.npan * self.cin * self.gemm_tile.nr
    }

    /// Transforms and packs the Keras kernel `[3, 3, cin, cout]` (and bias) into `U[xi][panel][cin][4]` + bias.
    pub fn pack_weights(&self, kernel: &[f32], bias: Option<&[f32]>) -> AlignedBuf {
        let g = mats(self.tile).g;
        let (a, cin, cout) = (self.a, self.cin, self.cout);
        let mut out = AlignedBuf::zeroed(self.packed_floats());
        // Per input channel, transform all output channels at once: the Keras kernel is contiguous in
        // `cout`, so each step below is a loop over n that the compiler vectorizes (this runs for
        // every (cin, cout) pair of every 3x3 layer at compile time). Channels go in groups of 4, so that
        // each 64-byte line of U (4 channels x 4 outputs of one panel) is written once, whole: written
        // channel by channel, the lines of a 38 MB F(4x4) layer were revisited 4 times, far apart.
        let mut t = vec![0f64; a * 3 * cout]; // t[i][kx][n] = sum_ky G[i][ky] g[ky][kx][n]
        let mut u = vec![0f64; 4 * a * a * cout]; // u[cc][xi][n] for the channels of the group
        let o = out.as_mut_slice();
        for c0 in (0..cin).step_by(4) {
            let nc = (cin - c0).min(4);
            for cc in 0..nc {
                let c = c0 + cc;
                let k = |tap: usize| &kernel[(tap * cin + c) * cout..(tap * cin + c + 1) * cout];
                t.iter_mut().for_each(|x| *x = 0.0);
                for i in 0..a {
                    for kx in 0..3 {
                        let row = &mut t[(i * 3 + kx) * cout..(i * 3 + kx + 1) * cout];
                        for (ky, &gk) in g[i].iter().enumerate().take(3) {
                            if gk != 0.0 {
                                for (r, &w) in row.iter_mut().zip(k(ky * 3 + kx)) {
                                    *r += gk * w as f64;
                                }
                            }
                        }
                    }
                }
                for i in 0..a {
                    for (j, gj) in g.iter().enumerate() {
                        let xi = i * a + j;
                        let ux = &mut u[(cc * a * a + xi) * cout..(cc * a * a + xi + 1) * cout];
                        ux.iter_mut().for_each(|x| *x = 0.0);
                        for (kx, &gv) in gj.iter().enumerate().take(3) {
                            if gv != 0.0 {
                                let row = &t[(i * 3 + kx) * cout..(i * 3 + kx + 1) * cout];
                                for (x, &tv) in ux.iter_mut().zip(row) {
                                    *x += tv * gv;
                                }
                            }
                        }
                    }
                }
            }
            let nr = self.gemm_tile.nr;
            for xi in 0..a * a {
                for p in 0..self.npan {
                    let base = ((xi * self.npan + p) * cin + c0) * nr;
                    for cc in 0..nc {
                        let ux = &u[(cc * a * a + xi) * cout..(cc * a * a + xi + 1) * cout];
                        for j in 0..nr.min(cout - p * nr) {
                            o[base + cc * nr + j] = ux[p * nr + j] as f32;
                        }
                    }
                }
            }
        }
        put_bias(&mut out, self.bias_offset(), bias);
        out
    }
}

impl KernelFamily for WinogradPlan {
    fn ntasks(&self) -> usize {
        self.ntb * self.ng
    }

    fn items(&self) -> usize {
        self.items
    }

    /// V, M and the border-patch scratch.
    fn work_floats(&self) -> usize {
        self.v_floats() + self.m_floats() + align_floats(self.a * self.a * self.cinp)
    }

    fn out_shape(&self) -> Vec<usize> {
        vec![self.h, self.w, self.cout]
    }

    fn reads_input2(&self) -> bool {
        self.epi.residual
    }

    fn helpers(&self) -> Helpers {
        Helpers { prefetch: self.prefetch > 0, ukernels: self.gemm_tile.is_wide(), ..Default::default() }
    }

    fn packed_floats(&self) -> usize {
        self.bias_offset() + self.npan * self.gemm_tile.nr
    }

    fn pack(&self, w: &LayerWeights) -> Result<AlignedBuf, String> {
        let (kernel, bias) = w.checked(9 * self.cin * self.cout, self.epi.bias, self.cout)?;
        Ok(self.pack_weights(kernel, bias))
    }

    fn emit_task(&self, b: &mut FunctionBuilder, env: &TaskEnv, task: Value) {
        let mm = b.ins().iadd_imm_s(env.work, (self.v_floats() * 4) as i64);
        let scr = b.ins().iadd_imm_s(env.work, ((self.v_floats() + self.m_floats()) * 4) as i64);
        let ptrs = Ptrs {
            env,
            inp: env.inp,
            res: env.res,
            out: env.out,
            cst: env.cst,
            v: env.work,
            mm,
            scr,
            pf: env.prefetch,
        };
        emit_task(b, self, &mats(self.tile), ptrs, task)
    }
}

impl WinogradPlan {
    /// Tile `t` of the call as (its tile in its item, the pointers moved to that item's input, residual
    /// and output).
    fn item_of<'a>(&self, b: &mut FunctionBuilder, t: Value, ptrs: Ptrs<'a>) -> (Value, Ptrs<'a>) {
        if self.items == 1 {
            return (t, ptrs);
        }
        let per_item = self.tiles_h * self.tiles_w;
        let (item, t) = (b.ins().udiv_imm_u(t, per_item as i64), b.ins().urem_imm_u(t, per_item as i64));
        let (hw, cin, cout) = (self.h * self.w, self.cin, self.cout);
        let inp = addr(b, ptrs.inp, item, hw * cin * 4, 0);
        let res = addr(b, ptrs.res, item, hw * cout * 4, 0);
        let out = addr(b, ptrs.out, item, hw * cout * 4, 0);
        (t, Ptrs { inp, res, out, ..ptrs })
    }
}

/// The pointers of one task: `KernelArgs`' and the V, M and scratch areas of the work buffer.
#[derive(Clone, Copy)]
struct Ptrs<'a> {
    env: &'a TaskEnv<'a>,
    inp: Value,
    res: Value,
    out: Value,
    cst: Value,
    v: Value,
    mm: Value,
    scr: Value,
    pf: Option<cranelift_codegen::ir::FuncRef>,
}

fn emit_task(b: &mut FunctionBuilder, p: &WinogradPlan, mt: &Mats, ptrs: Ptrs, task: Value) {
    let (tb, g) = if p.ng == 1 {
        (task, iconst(b, 0))
    } else {
        (b.ins().udiv_imm_u(task, p.ng as i64), b.ins().urem_imm_u(task, p.ng as i64))
    };
    let t0 = b.ins().imul_imm_s(tb, p.nt as i64);
    emit_input_transform(b, p, mt, ptrs, t0);
    let cb0 = b.ins().imul_imm_s(g, p.cpg as i64);
    let cb1 = b.ins().iadd_imm_s(cb0, p.cpg as i64);
    let ncb = iconst(b, p.ncb);
    let cb_end = b.ins().umin(cb1, ncb);
    for_range(b, cb0, cb_end, &[], |b, cb, _| {
        emit_gemm(b, p, ptrs, cb);
        emit_output_transform(b, p, mt, ptrs, t0, cb);
        vec![]
    });
}

/// Input transform of tiles `t0 .. t0 + nt` into V.
fn emit_input_transform(b: &mut FunctionBuilder, p: &WinogradPlan, mt: &Mats, ptrs: Ptrs, t0: Value) {
    let (a, m) = (p.a as i64, p.m as i64);
    let lo = iconst(b, 0);
    let hi = iconst(b, p.nt);
    for_range(b, lo, hi, &[], |b, i, _| {
        let t = b.ins().iadd(t0, i);
        let (t, ptrs) = p.item_of(b, t, ptrs);
        let (ty, tx) = (b.ins().udiv_imm_u(t, p.tiles_w as i64), b.ins().urem_imm_u(t, p.tiles_w as i64));
        let iy0 = b.ins().imul_imm_s(ty, m);
        let iy0 = b.ins().iadd_imm_s(iy0, -1);
        let ix0 = b.ins().imul_imm_s(tx, m);
        let ix0 = b.ins().iadd_imm_s(ix0, -1);
        let c1 = b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, iy0, 0);
        let c2 = b.ins().icmp_imm_s(IntCC::SignedLessThanOrEqual, iy0, p.h as i64 - a);
        let c3 = b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, ix0, 0);
        let c4 = b.ins().icmp_imm_s(IntCC::SignedLessThanOrEqual, ix0, p.w as i64 - a);
        let c12 = b.ins().band(c1, c2);
        let c34 = b.ins().band(c3, c4);
        let interior = b.ins().band(c12, c34);
        let dst = addr(b, ptrs.v, i, p.cinp * 4, 0);
        if_else(
            b,
            interior,
            |b| {
                let yw = b.ins().imul_imm_s(iy0, p.w as i64);
                let pix = b.ins().iadd(yw, ix0);
                let src = addr(b, ptrs.inp, pix, p.cin * 4, 0);
                transform_channels(b, p, mt, src, (p.w * p.cin * 4, p.cin * 4), mf_input(), dst);
            },
            |b| {
                fill_scratch(b, p, ptrs, iy0, ix0);
                let f = mf_rw().with_aligned();
                transform_channels(b, p, mt, ptrs.scr, (p.a * p.cinp * 4, p.cinp * 4), f, dst);
            },
        );
        vec![]
    });
}

/// Copies the a x a patch at (iy0, ix0) into the scratch area as `[dy][dx][cinp]`, zeros outside the image.
fn fill_scratch(b: &mut FunctionBuilder, p: &WinogradPlan, ptrs: Ptrs, iy0: Value, ix0: Value) {
    let lo = iconst(b, 0);
    let hi = iconst(b, p.a * p.a);
    for_range(b, lo, hi, &[], |b, q, _| {
        let dy = b.ins().udiv_imm_u(q, p.a as i64);
        let dx = b.ins().urem_imm_u(q, p.a as i64);
        let iy = b.ins().iadd(iy0, dy);
        let ix = b.ins().iadd(ix0, dx);
        let yok = b.ins().icmp_imm_s(IntCC::UnsignedLessThan, iy, p.h as i64);
        let xok = b.ins().icmp_imm_s(IntCC::UnsignedLessThan, ix, p.w as i64);
        let ok = b.ins().band(yok, xok);
        let dst = addr(b, ptrs.scr, q, p.cinp * 4, 0);
        if_else(
            b,
            ok,
            |b| {
                let yw = b.ins().imul_imm_s(iy, p.w as i64);
                let pix = b.ins().iadd(yw, ix);
                let src = addr(b, ptrs.inp, pix, p.cin * 4, 0);
                copy_run(b, src, dst, p.cin);
                let pad = b.ins().iadd_imm_s(dst, (p.cin * 4) as i64);
                zero_run(b, pad, p.cinp - p.cin);
            },
            |b| zero_run(b, dst, p.cinp),
        );
        vec![]
    });
}

/// Bᵀ d B for every group of 4 channels of the patch at `src` (strides in bytes: (row, pixel)), stored to
/// `V[xi][tile][c]` with `dst` = V + tile*cinp*4.
#[allow(clippy::too_many_arguments)]
fn transform_channels(
    b: &mut FunctionBuilder,
    p: &WinogradPlan,
    mt: &Mats,
    src: Value,
    (rs, ps): (usize, usize),
    lf: MemFlagsData,
    dst: Value,
) {
    let st = mf_rw().with_aligned();
    let a = p.a;
    let xi_stride = (p.nt * p.cinp * 4) as i32;
    let one = |b: &mut FunctionBuilder, s: Value, d: Value, lanes: usize| {
        let dv: Vec<Value> =
            (0..a * a).map(|q| load_lanes(b, lf, s, ((q / a) * rs + (q % a) * ps) as i32, lanes)).collect();
        let v = transform2d(b, &mt.bt, &dv, a);
        for (xi, &x) in v.iter().enumerate() {
            b.ins().store(st, x, d, xi as i32 * xi_stride);
        }
    };
    let groups = p.cin / 4;
    if groups > 0 {
        let z = iconst(b, 0);
        let n = iconst(b, groups);
        for_range(b, z, n, &[], |b, c, _| {
            let s = addr(b, src, c, 16, 0);
            let d = addr(b, dst, c, 16, 0);
            one(b, s, d, 4);
            vec![]
        });
    }
    if !p.cin.is_multiple_of(4) {
        let s = b.ins().iadd_imm_s(src, (groups * 16) as i64);
        let d = b.ins().iadd_imm_s(dst, (groups * 16) as i64);
        one(b, s, d, p.cin % 4);
    }
}

/// For every position xi and panel of channel block `cb`: M[xi][tiles][panel] = V[xi] * U[xi][panel].
fn emit_gemm(b: &mut FunctionBuilder, p: &WinogradPlan, ptrs: Ptrs, cb: Value) {
    let nr = p.gemm_tile.nr;
    let pan0 = b.ins().imul_imm_s(cb, p.cbp as i64);
    let pan1 = b.ins().iadd_imm_s(pan0, p.cbp as i64);
    let npan = iconst(b, p.npan);
    let pan_end = b.ins().umin(pan1, npan);
    let np = b.ins().isub(pan_end, pan0);
    let lo = iconst(b, 0);
    let hi = iconst(b, p.a * p.a);
    for_range(b, lo, hi, &[], |b, xi, _| {
        // U[xi][pan0] and V[xi], M[xi].
        let xp = b.ins().imul_imm_s(xi, p.npan as i64);
        let xp = b.ins().iadd(xp, pan0);
        let ubase = addr(b, ptrs.cst, xp, p.cin * nr * 4, 0);
        let vbase = addr(b, ptrs.v, xi, p.nt * p.cinp * 4, 0);
        let mbase = addr(b, ptrs.mm, xi, p.nt * p.cbp * nr * 4, 0);
        let z = iconst(b, 0);
        for_range(b, z, np, &[], |b, pl, _| {
            let up = addr(b, ubase, pl, p.cin * nr * 4, 0);
            let mp = addr(b, mbase, pl, nr * 4, 0);
            let rb_block = |b: &mut FunctionBuilder, rb: Value| {
                let vp = addr(b, vbase, rb, p.r * p.cinp * 4, 0);
                let mq = addr(b, mp, rb, p.r * p.cbp * nr * 4, 0);
                micro(b, p, ptrs, vp, up, mq);
            };
            for_n(b, p.nrb, rb_block);
            vec![]
        });
        vec![]
    });
}

/// `r` rows x `nr` columns over K = cin: rows of A at `vp + i*cinp*4`, B at `up + k*nr*4`, C rows at
/// `mq + i*cbp*nr*4` (whole panels: U's padding columns are zero, their results are never read).
fn micro(b: &mut FunctionBuilder, p: &WinogradPlan, ptrs: Ptrs, vp: Value, up: Value, mq: Value) {
    let rows = p.r;
    if p.gemm_tile.is_wide() {
        let nr = p.gemm_tile.nr;
        let uk = GemmUkernel {
            isa: p.gemm_tile.isa,
            rows,
            nr,
            lanes: nr,
            k: p.cin,
            a_row_stride: p.cinp * 4,
            b_k_stride: nr * 4,
            c_row_stride: p.cbp * nr * 4,
            accumulate: false,
            epilogue: Epilogue::NONE,
            prefetch_b: (p.prefetch > 0).then_some(p.prefetch),
        };
        call_wide(b, ptrs.env, &WideCall { uk, a: vp, b: up, c: mq, bias: None, residual: None });
        return;
    }
    let accs: Vec<Value> = (0..rows).map(|_| zero4(b)).collect();
    let sets = accumulator_sets(rows);
    let kl = KLoop {
        b0: up,
        a0: vp,
        a_kstride: 4,
        a_rowstride: p.cinp * 4,
        a_flags: mf_packed(),
        steps: p.cin,
        unroll: if ptrs.pf.is_some() { 4 } else { 2.max(sets) },
        sets,
        fma_b_first: false,
        prefetch: ptrs.pf.map(|f| (f, p.prefetch)),
    };
    let accs = emit_k_loop(b, &kl, accs);
    let st = mf_rw().with_aligned();
    for (i, &acc) in accs.iter().enumerate() {
        b.ins().store(st, acc, mq, (i * p.cbp * 16) as i32);
    }
}

/// Output transform of tiles `t0 .. t0 + nt` (those < ntiles) for channel block `cb`, with the epilogue.
fn emit_output_transform(b: &mut FunctionBuilder, p: &WinogradPlan, mt: &Mats, ptrs: Ptrs, t0: Value, cb: Value) {
    // Channels in quads of 4 (one f32x4): block `cb` holds quads `q0..q0 + qpb` of M's rows.
    let m = p.m;
    let qpb = p.cbp * p.gemm_tile.nr / 4;
    let q0 = b.ins().imul_imm_s(cb, qpb as i64);
    let q1 = b.ins().iadd_imm_s(q0, qpb as i64);
    let nfull = iconst(b, p.cout / 4);
    let full_end = b.ins().umin(q1, nfull);
    let has_tail = (p.cout % 4 > 0).then(|| b.ins().icmp_imm_s(IntCC::Equal, cb, (p.ncb - 1) as i64));
    let lo = iconst(b, 0);
    let tend = b.ins().iadd_imm_s(t0, p.nt as i64);
    let ntiles = iconst(b, p.ntiles);
    let tend = b.ins().umin(tend, ntiles);
    let hi = b.ins().isub(tend, t0);
    // A signed range: t0 may exceed ntiles only if the plan is wrong; hi >= 1 otherwise.
    for_range(b, lo, hi, &[], |b, i, _| {
        let t = b.ins().iadd(t0, i);
        let (t, ptrs) = p.item_of(b, t, ptrs);
        let (ty, tx) = (b.ins().udiv_imm_u(t, p.tiles_w as i64), b.ins().urem_imm_u(t, p.tiles_w as i64));
        let oy0 = b.ins().imul_imm_s(ty, m as i64);
        let ox0 = b.ins().imul_imm_s(tx, m as i64);
        let yw = b.ins().imul_imm_s(oy0, p.w as i64);
        let pix = b.ins().iadd(yw, ox0);
        let obase = b.ins().imul_imm_s(pix, p.cout as i64);
        let mrow = addr(b, ptrs.mm, i, qpb * 16, 0);
        let c1 = b.ins().icmp_imm_s(IntCC::SignedLessThanOrEqual, oy0, p.h as i64 - m as i64);
        let c2 = b.ins().icmp_imm_s(IntCC::SignedLessThanOrEqual, ox0, p.w as i64 - m as i64);
        let full = if p.h >= m && p.w >= m { Some(b.ins().band(c1, c2)) } else { None };
        let tile_body = |b: &mut FunctionBuilder, masks: Option<&[Value]>| {
            let quad = |b: &mut FunctionBuilder, q: Value, lanes: usize| {
                let ql = b.ins().isub(q, q0);
                let mp = addr(b, mrow, ql, 16, 0);
                let col = b.ins().imul_imm_s(q, 4);
                let e = b.ins().iadd(obase, col);
                let op = addr(b, ptrs.out, e, 4, 0);
                let rp = p.epi.residual.then(|| addr(b, ptrs.res, e, 4, 0));
                let mf = mf_rw().with_aligned();
                let xi_stride = p.nt * qpb * 16;
                let mv: Vec<Value> =
                    (0..p.a * p.a).map(|xi| b.ins().load(types::F32X4, mf, mp, (xi * xi_stride) as i32)).collect();
                let y = transform2d(b, &mt.at, &mv, p.a);
                let bias = p.epi.bias.then(|| {
                    let bo = addr(b, ptrs.cst, q, 16, (p.bias_offset() * 4) as i64);
                    b.ins().load(types::F32X4, mf_packed(), bo, 0)
                });
                for (q, &yv) in y.iter().enumerate() {
                    let (dy, dx) = (q / m, q % m);
                    let off = ((dy * p.w + dx) * p.cout * 4) as i32;
                    let store = |b: &mut FunctionBuilder| {
                        let v =
                            conv_epilogue(b, yv, bias, p.epi.relu, rp.map(|rp| (rp, off, lanes)), p.epi.relu_after_add);
                        store_lanes(b, mf_rw(), v, op, off, lanes);
                    };
                    match masks {
                        None => store(b),
                        Some(mk) => if_then(b, mk[q], store),
                    }
                }
            };
            for_range(b, q0, full_end, &[], |b, q, _| {
                quad(b, q, 4);
                vec![]
            });
            if let Some(ht) = has_tail {
                if_then(b, ht, |b| {
                    let q = iconst(b, p.cout / 4);
                    quad(b, q, p.cout % 4);
                });
            }
        };
        let partial = |b: &mut FunctionBuilder| {
            let masks: Vec<Value> = (0..m * m)
                .map(|q| {
                    let (dy, dx) = (q / m, q % m);
                    let yok = b.ins().icmp_imm_s(IntCC::SignedLessThan, oy0, p.h as i64 - dy as i64);
                    let xok = b.ins().icmp_imm_s(IntCC::SignedLessThan, ox0, p.w as i64 - dx as i64);
                    b.ins().band(yok, xok)
                })
                .collect();
            tile_body(b, Some(&masks));
        };
        match full {
            Some(f) => if_else(b, f, |b| tile_body(b, None), partial),
            None => partial(b),
        }
        vec![]
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::{Session, SessionOptions};
    use crate::ops::{Padding, Pads};
    use proptest::prelude::*;

    /// Tasks come from tile blocks before channel groups (which repeat the input transform): the notebook's
    /// 15x15x64 layer on two threads, and ResNet-50's 56x56x64 which has plenty of tile blocks.
    #[test]
    fn tasks_split_tiles_before_channels() {
        let conv = Conv::new(64, [3, 3], [1, 1], Padding::Same, true);
        let t = WinogradTiling { min_tasks: 4, ..WinogradTiling::for_input([15, 15, 64]) };
        let p = WinogradPlan::new(&conv, [15, 15, 64], &t).unwrap();
        assert_eq!((p.ng, p.ntb), (1, 2), "{p:?}");
        let plan = |min_tasks| {
            let t = WinogradTiling { min_tasks, ..WinogradTiling::for_input([56, 56, 64]) };
            WinogradPlan::new(&conv, [56, 56, 64], &t).unwrap()
        };
        let (p1, p4) = (plan(1), plan(4));
        assert_eq!((p4.ng, p4.nrb), (1, p1.nrb), "{p4:?}");
        assert!(p4.ntasks() >= 4);
    }

    /// On two threads, ResNet-50's 28x28x128 layers (5 tile blocks, which would run as 3 + 2) split their two
    /// channel blocks into groups: 10 equal tasks, and its 56x56x64 layers take 11 rows instead of 12. One
    /// thread keeps the plan; layers whose blocks already balance (14x14x256: 2 blocks, 7x7x512) too.
    #[test]
    fn two_threads_balance_odd_tile_blocks() {
        let conv = |f| Conv::new(f, [3, 3], [1, 1], Padding::Same, true);
        let plan = |input: [usize; 3], threads| {
            let t = WinogradTiling { min_tasks: threads, threads, ..WinogradTiling::for_input(input) };
            WinogradPlan::new(&conv(input[2]), input, &t).unwrap()
        };
        let (p1, p2) = (plan([28, 28, 128], 1), plan([28, 28, 128], 2));
        assert_eq!((p1.ntb, p1.ng, p1.ntasks()), (5, 1, 5), "{p1:?}");
        assert_eq!((p2.ntb, p2.ng, p2.ntasks()), (5, 2, 10), "{p2:?}");
        // 196 tiles: 17 blocks of 12 rows (the last of 4) would run as 9 + 8; 18 of 11 run as 9 + 9.
        let (p1, p2) = (plan([56, 56, 64], 1), plan([56, 56, 64], 2));
        assert_eq!((p1.r, p1.ntb), (12, 17), "{p1:?}");
        assert_eq!((p2.r, p2.ntb, p2.ng), (11, 18, 1), "{p2:?}");
        for input in [[14, 14, 256], [7, 7, 512]] {
            let a = plan(input, 2);
            let t = WinogradTiling { min_tasks: 2, threads: 1, ..WinogradTiling::for_input(input) };
            let unbalanced = WinogradPlan::new(&conv(input[2]), input, &t).unwrap();
            assert_eq!((a.ng, a.ntb), (unbalanced.ng, unbalanced.ntb), "{input:?}: {a:?}");
        }
    }

    /// Maps that stream U (at most `prefetch_max_tiles` tiles) keep all their tiles in one task, so U is read
    /// once, and take their parallelism from channel groups; with too few channels for that (the notebook's
    /// 15x15x64), from tile blocks as before.
    #[test]
    fn streaming_maps_read_u_once() {
        let conv = |f| Conv::new(f, [3, 3], [1, 1], Padding::Same, true);
        let plan = |input: [usize; 3], threads| {
            let gemm_tile = Tile::of(crate::codegen::x86::Isa::Avx512);
            let t = WinogradTiling {
                min_tasks: threads,
                threads,
                gemm_tile,
                rows: gemm_tile.mr,
                ..WinogradTiling::for_input(input)
            };
            WinogradPlan::new(&conv(input[2]), input, &t).unwrap()
        };
        let p1 = plan([14, 14, 256], 1);
        assert_eq!((p1.r, p1.nrb, p1.ntb, p1.ng), (8, 2, 1, 1), "{p1:?}");
        let p2 = plan([14, 14, 256], 2);
        assert_eq!((p2.ntb, p2.ng), (1, 2), "{p2:?}");
        let p2 = plan([15, 15, 64], 2);
        assert_eq!((p2.ntb, p2.ng), (2, 1), "{p2:?}");
        // Larger maps keep one row block per task.
        assert_eq!(plan([28, 28, 128], 1).nrb, 1);
    }

    /// The shared codegen test vector, scaled.
    fn rnd(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        crate::codegen::tests::rnd(n, seed).into_iter().map(|x| x * scale).collect()
    }

    #[derive(Clone, Debug)]
    struct Case {
        h: usize,
        w: usize,
        cin: usize,
        cout: usize,
        explicit: bool,
        bias: bool,
        relu: bool,
        residual: bool,
        relu_after_add: bool,
    }

    fn naive(c: &Case, x: &[f32], wt: &[f32], bias: &[f32], res: &[f32]) -> Vec<f64> {
        let mut y = vec![0f64; c.h * c.w * c.cout];
        for oy in 0..c.h {
            for ox in 0..c.w {
                for n in 0..c.cout {
                    let mut acc = 0f64;
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = ((oy + ky) as isize - 1, (ox + kx) as isize - 1);
                            if iy < 0 || ix < 0 || iy >= c.h as isize || ix >= c.w as isize {
                                continue;
                            }
                            for ci in 0..c.cin {
                                acc += x[(iy as usize * c.w + ix as usize) * c.cin + ci] as f64
                                    * wt[((ky * 3 + kx) * c.cin + ci) * c.cout + n] as f64;
                            }
                        }
                    }
                    if c.bias {
                        acc += bias[n] as f64;
                    }
                    if c.relu {
                        acc = acc.max(0.0);
                    }
                    let o = (oy * c.w + ox) * c.cout + n;
                    if c.residual {
                        acc += res[o] as f64;
                    }
                    if c.relu_after_add {
                        acc = acc.max(0.0);
                    }
                    y[o] = acc;
                }
            }
        }
        y
    }

    use crate::codegen::tests::call;

    /// Max |got - want| relative to max |want| (at least 1e-3 absolute scale).
    fn run(c: &Case, t: &WinogradTiling) -> Result<f64, String> {
        let x = rnd(c.h * c.w * c.cin, 1, 1.0);
        // He-like weight magnitudes (ResNet-like): std ~ sqrt(2 / (9 cin)).
        let wt = rnd(9 * c.cin * c.cout, 2, (6.0 / (9.0 * c.cin as f32)).sqrt());
        let bias = rnd(c.cout, 3, 0.5);
        let res = rnd(c.h * c.w * c.cout, 4, 1.0);
        let want = naive(c, &x, &wt, &bias, &res);
        let padding =
            if c.explicit { Padding::Explicit(Pads { top: 1, bottom: 1, left: 1, right: 1 }) } else { Padding::Same };
        let mut conv = Conv::new(c.cout, [3, 3], [1, 1], padding, c.bias);
        conv.relu = c.relu;
        conv.residual = c.residual;
        conv.relu_after_add = c.relu_after_add;
        if !winograd_applies(&conv, [c.h, c.w, c.cin]) {
            return Err("winograd_applies is false".into());
        }
        let mut s = Session::with_options(SessionOptions { verify: true, ..SessionOptions::default() })
            .map_err(|e| e.to_string())?;
        let plan = WinogradPlan::new(&conv, [c.h, c.w, c.cin], t)?;
        let k = s
            .compile("wino", &plan, &LayerWeights::kernel(&wt, c.bias.then_some(&bias[..])))
            .map_err(|e| e.to_string())?;
        if k.out_shape != vec![c.h, c.w, c.cout] {
            return Err(format!("shape {:?}", k.out_shape));
        }
        let code = s.finish().map_err(|e| e.to_string())?;
        let got = call(&code, &k, &x, c.residual.then_some(&res[..]));
        let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        let mut err = 0f64;
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            if g.is_nan() {
                return Err(format!("{c:?}: NaN at {i}"));
            }
            err = err.max((g as f64 - w).abs() / scale);
        }
        if err > 1e-4 {
            return Err(format!("{c:?} {t:?}: relative error {err:e}"));
        }
        Ok(err)
    }

    fn small_tiling(tile: WinogradTile) -> WinogradTiling {
        WinogradTiling {
            tile,
            rows: 3,
            row_blocks: 2,
            v_budget: 1 << 20,
            cout_panels: 2,
            min_tasks: 6,
            ..WinogradTiling::default()
        }
    }

    /// The tilings to test, on every tier this machine runs (the wide tiers' tiles: more rows, panels of 16
    /// or 32 channels, U packed that wide).
    fn tilings() -> Vec<WinogradTiling> {
        let f4 = WinogradTiling { tile: WinogradTile::F4, ..WinogradTiling::default() };
        // Balanced for 3 threads: other row counts and channel groups than the defaults.
        let balanced = WinogradTiling { threads: 3, min_tasks: 3, cout_panels: 2, ..f4.clone() };
        let base =
            [WinogradTiling::default(), f4, small_tiling(WinogradTile::F2), small_tiling(WinogradTile::F4), balanced];
        crate::codegen::tests::tiers()
            .into_iter()
            .flat_map(|isa| {
                let gemm_tile = Tile::of(isa);
                base.iter().map(move |t| WinogradTiling { gemm_tile, rows: t.rows.min(gemm_tile.mr), ..t.clone() })
            })
            .collect()
    }

    fn case(h: usize, w: usize, cin: usize, cout: usize) -> Case {
        Case { h, w, cin, cout, explicit: false, bias: true, relu: false, residual: false, relu_after_add: false }
    }

    #[test]
    fn winograd_applies_only_to_3x3_s1_pad1() {
        let c = Conv::new(8, [3, 3], [1, 1], Padding::Same, true);
        assert!(winograd_applies(&c, [5, 5, 3]));
        assert!(winograd_applies(&c, [1, 1, 3]));
        assert!(!winograd_applies(&Conv::new(8, [3, 3], [1, 1], Padding::Valid, true), [5, 5, 3]));
        assert!(!winograd_applies(&Conv::new(8, [3, 3], [2, 2], Padding::Same, true), [6, 6, 3]));
        assert!(!winograd_applies(&Conv::new(8, [1, 1], [1, 1], Padding::Same, true), [6, 6, 3]));
        let p = Padding::Explicit(Pads { top: 1, bottom: 1, left: 1, right: 1 });
        assert!(winograd_applies(&Conv::new(8, [3, 3], [1, 1], p, true), [6, 6, 3]));
        let p = Padding::Explicit(Pads { top: 1, bottom: 0, left: 1, right: 1 });
        assert!(!winograd_applies(&Conv::new(8, [3, 3], [1, 1], p, true), [6, 6, 3]));
    }

    #[test]
    fn winograd_small_cases() {
        let mut cases =
            vec![case(1, 1, 1, 1), case(2, 2, 4, 4), case(5, 7, 3, 5), case(8, 8, 16, 8), case(9, 4, 13, 10)];
        cases[1].bias = false;
        cases[2].relu = true;
        cases[3].residual = true;
        cases[4].relu = true;
        cases[4].residual = true;
        cases[4].relu_after_add = true;
        cases[4].explicit = true;
        for c in &cases {
            for t in tilings() {
                run(c, &t).unwrap();
            }
        }
    }

    #[test]
    fn winograd_resnet_like_magnitudes() {
        // Larger channel counts: the F(4x4) transform constants amplify rounding most here.
        let mut c = case(14, 14, 256, 36);
        c.relu = true;
        for t in tilings() {
            let e = run(&c, &t).unwrap();
            eprintln!("{:?}: relative error {e:e}", t.tile);
        }
    }

    fn case_strategy() -> impl Strategy<Value = Case> {
        (1usize..30, 1usize..30, 1usize..70, 1usize..70, any::<[bool; 6]>()).prop_map(|(h, w, cin, cout, f)| Case {
            h,
            w,
            cin,
            cout,
            explicit: f[0],
            bias: f[1],
            relu: f[2],
            residual: f[3],
            relu_after_add: f[4] || (f[3] && f[5]),
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn winograd_f2_matches_naive(c in case_strategy()) {
            run(&c, &WinogradTiling::default()).map_err(TestCaseError::fail)?;
            run(&c, &small_tiling(WinogradTile::F2)).map_err(TestCaseError::fail)?;
        }

        #[test]
        fn winograd_f4_matches_naive(c in case_strategy()) {
            run(&c, &WinogradTiling { tile: WinogradTile::F4, ..WinogradTiling::default() })
                .map_err(TestCaseError::fail)?;
            run(&c, &small_tiling(WinogradTile::F4)).map_err(TestCaseError::fail)?;
            let balanced = WinogradTiling { threads: 3, min_tasks: 3, cout_panels: 2, ..WinogradTiling::default() };
            run(&c, &WinogradTiling { tile: WinogradTile::F4, ..balanced }).map_err(TestCaseError::fail)?;
        }

        #[test]
        fn winograd_wide_tiers_match_naive(c in case_strategy(), f4 in any::<bool>()) {
            let tile = if f4 { WinogradTile::F4 } else { WinogradTile::F2 };
            for isa in crate::codegen::x86::Isa::available().into_iter().filter(|i| i.is_wide()) {
                let gemm_tile = Tile::of(isa);
                let t = WinogradTiling { tile, gemm_tile, rows: gemm_tile.mr, ..WinogradTiling::default() };
                run(&c, &t).map_err(|e| TestCaseError::fail(format!("{isa}: {e}")))?;
                run(&c, &WinogradTiling { gemm_tile, ..small_tiling(tile) }).map_err(|e| TestCaseError::fail(format!("{isa}: {e}")))?;
            }
        }
    }
}
