//! Convolution as a GEMM (the "gemm" family): `C[M x N] = A[M x K] * B[K x N]` with M = output pixels,
//! N = output channels, K = kh*kw*cin (tap-major, channel-minor, as in the Keras kernel), plus a fused epilogue.
//!
//! - B (weights) is packed at compile time into panels of [`NR`] output channels: `B[panel][k][NR]`
//!   (zero-padded to whole panels), followed by the bias padded to the same width: the kernel's constants.
//! - A: a 1x1, stride-1, unpadded convolution reads the NHWC input directly (row `m` = pixel `m`, stride cin).
//!   Everything else packs a row tile of A per K block (im2col on the fly, zeros for padding) into the
//!   per-thread work buffer, row-major (`A[rows][block_len]`, copied with f32x4 moves, whole kernel rows as one
//!   run where they lie inside the input); the final partial row tile always goes through packing.
//! - Micro-kernel (`gemm::emit_k_loop`): up to [`MR`] rows (fewer balanced rows when M is small, e.g. 5 x 10
//!   rows for M = 49) x 4 columns, one f32x4 accumulator per row, one B vector per K step held in a register,
//!   one broadcast-from-memory load of A per FMA. Partial tiles use fewer rows (compile-time) and masked
//!   column stores.
//! - K blocking ([`KBlocking`]): blocks of about `GemmTiling::kc` (whole taps when cin <= kc, channel chunks
//!   otherwise); outputs of earlier blocks are accumulated in the output buffer, the last block applies the
//!   epilogue (bias, relu, the residual add read from `input2`, relu after add) before storing.
//! - Tasks: (block of row tiles, [`MBlocking`]) x (block of column panels, [`NBlocking`]); each task writes
//!   its own output rectangle.
//! - Tiny maps (M <= `GemmTiling::prefetch_max_m`) are bound by streaming the weights from memory, not by
//!   FMAs: K runs in one block, the task streams its panels front to back and the K loop prefetches B 8 KB
//!   ahead (`Session::prefetch_import`).
//!
//! The output must not overlap either input (partial sums are stored in it).

use super::family::{Helpers, KernelFamily, LayerWeights, TaskEnv};
use super::gemm::*;
use super::util::*;
use super::x86::GemmUkernel;
use crate::ops::Conv;
use cranelift_codegen::ir::{condcodes::IntCC, types, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use resnetc_runtime::AlignedBuf;

/// Blocking parameters of GEMM convolutions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GemmTiling {
    /// The micro-kernel tile of the CPU tier (the width weights are packed in).
    pub tile: Tile,
    /// Target K block length.
    pub kc: usize,
    /// Row tiles per task, at most.
    pub mc_tiles: usize,
    /// Column panels (of 4 channels) per task, at most.
    pub nc_panels: usize,
    /// Shrink the blocks until there are at least this many tasks (see `ConvPlan::new`).
    pub min_tasks: usize,
    /// K steps per iteration of the micro-kernel loop (2, the notes' best on Zen 4; on the Intel Xeon this
    /// machine turned out to be, 1 and 2 measured the same within the (large) noise).
    pub unroll: usize,
    /// Rows of the micro-kernel at most (<= the tile's rows).
    pub mr_max: usize,
    /// Emit `fma(b, a, acc)` instead of `fma(a, b, acc)` (operand order affects register allocation).
    pub fma_b_first: bool,
    /// Layers with at most this many output pixels (4x4 maps and smaller) reuse each weight only a few times
    /// and wait on streaming weights from memory: they run in the streaming order (see `ConvPlan::prefetch`)
    /// and their K loops prefetch the weights `prefetch_distance` bytes ahead. (Tried on 7x7 maps: slower,
    /// as their A no longer stays in L1 across the panels: conv5_block1_0 6.3 -> 7.4-8.7 ms.)
    pub prefetch_max_m: usize,
    pub prefetch_distance: usize,
    /// Larger layers: the first row tile of each task and K block prefetches the next weight panel (see
    /// `ConvPlan::prefetch_first_tile`; measured ~1.5 % off ResNet-50, min of 40 runs, 4 alternations).
    pub prefetch_first_tile: bool,
}

impl Default for GemmTiling {
    fn default() -> Self {
        GemmTiling::for_tile(Tile::default())
    }
}

impl GemmTiling {
    /// The measured defaults with the tier's tile.
    pub fn for_tile(tile: Tile) -> GemmTiling {
        GemmTiling {
            tile,
            kc: 256,
            mc_tiles: 16,
            nc_panels: 64,
            min_tasks: 16,
            unroll: 2,
            mr_max: tile.mr,
            fma_b_first: false,
            // The wide tiers' panels are 8x wider: on maps up to 14x14 the streaming order (each weight read
            // once, all row tiles under it) beat the row-outer one (ResNet-50 on AVX-512: 56.4 -> 54.3 ms,
            // 7x7 1x1 layers 81 -> 89 % of the peak in the conv bench, 59 -> 70 % with the caches flushed).
            prefetch_max_m: if tile.is_wide() { 196 } else { 24 },
            prefetch_distance: 8192,
            prefetch_first_tile: true,
        }
    }
}

/// The convolution's shapes: input `[h, w, cin]`, output `[oh, ow, cout]`, window, strides and the
/// top/left padding (the bottom/right padding only shows in `oh`, `ow`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConvGeometry {
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub oh: usize,
    pub ow: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub pad_top: usize,
    pub pad_left: usize,
}

impl ConvGeometry {
    /// The geometry of `conv` on `input`, or why it has none (a zero size, a window larger than the
    /// padded input).
    pub fn new(conv: &Conv, input: [usize; 3]) -> Result<ConvGeometry, String> {
        let [h, w, cin] = input;
        let [kh, kw] = conv.kernel;
        let [sh, sw] = conv.strides;
        let cout = conv.filters;
        if h == 0 || w == 0 || cin == 0 || cout == 0 || kh == 0 || kw == 0 || sh == 0 || sw == 0 {
            return Err("zero-sized dimension".into());
        }
        let p = conv.padding.pads(h, w, conv.kernel, conv.strides);
        let (hp, wp) = (h + p.top + p.bottom, w + p.left + p.right);
        if hp < kh || wp < kw {
            return Err(format!("kernel {kh}x{kw} larger than the padded input {hp}x{wp}"));
        }
        let (oh, ow) = ((hp - kh) / sh + 1, (wp - kw) / sw + 1);
        Ok(ConvGeometry { h, w, cin, oh, ow, cout, kh, kw, sh, sw, pad_top: p.top, pad_left: p.left })
    }

    pub fn taps(&self) -> usize {
        self.kh * self.kw
    }

    /// Output pixels.
    pub fn pixels(&self) -> usize {
        self.oh * self.ow
    }

    /// A 1x1, stride-1, unpadded convolution: A is the input itself.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.pad_top == 0 && self.pad_left == 0
    }
}

/// How K = taps x cin is cut into blocks. With `chunks == 1`, a block is `taps_per_block` whole taps of all
/// channels; otherwise each tap's channels are cut into `chunks` chunks of `chunk` channels (the last one
/// zero-padded), one chunk per block.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KBlocking {
    pub taps: usize,
    /// Channels per tap in the packed K dimension (cin rounded up to whole chunks).
    pub cin_padded: usize,
    /// Channel chunks per tap (1 when cin <= kc), channels per chunk (== cin when 1 chunk).
    pub chunks: usize,
    pub chunk: usize,
    /// Taps per K block (1 when chunks > 1).
    pub taps_per_block: usize,
    /// K blocks, the length of every block but the last, the last one's length and taps.
    pub blocks: usize,
    pub block_len: usize,
    pub last_len: usize,
    pub last_taps: usize,
    /// Packed K = taps * cin_padded.
    pub packed: usize,
}

/// How the M rows (output pixels of all the call's items) are cut into row tiles and tasks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MBlocking {
    /// Rows: output pixels times items.
    pub pixels: usize,
    /// Rows per tile (<= MR), tiles, full tiles and the rows of the last partial one (0 if none).
    pub rows: usize,
    pub tiles: usize,
    pub full_tiles: usize,
    pub rem_rows: usize,
    /// Row tiles per task and row blocks (tasks along M).
    pub tiles_per_task: usize,
    pub blocks: usize,
}

/// How the N output channels are cut into panels of [`NR`] and tasks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NBlocking {
    /// Panels, full panels, channels of the last partial one (0 if none).
    pub panels: usize,
    pub full_panels: usize,
    pub tail: usize,
    /// Panels per task and column blocks (tasks along N).
    pub panels_per_task: usize,
    pub blocks: usize,
}

/// Everything about one GEMM convolution that the generated code bakes in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConvPlan {
    pub tile: Tile,
    /// Batch items one call computes: their pixels are the GEMM's rows (each weight is read once for all).
    pub items: usize,
    pub geo: ConvGeometry,
    pub k: KBlocking,
    pub m: MBlocking,
    pub n: NBlocking,
    pub epi: Epilogue,
    /// A is read in place from the input (a pointwise conv whose channels need no padding).
    pub direct: bool,
    pub unroll: usize,
    pub fma_b_first: bool,
    /// Software-prefetch distance (bytes) of the weight stream, 0 for none (see `Session::prefetch_import`).
    /// Non-zero means the streaming order: one K block, every row tile of the task packed up front, then
    /// per panel all row tiles, so each weight is read from memory once, front to back.
    pub prefetch: usize,
    /// In the row-outer order, the first row tile of each task and K block reads the block's weights from
    /// memory (the other tiles find them in L2): its micro-kernels prefetch the next panel's weights.
    pub prefetch_first_tile: bool,
}

impl ConvPlan {
    /// The plan for one batch item per call.
    pub fn new(conv: &Conv, input: [usize; 3], t: &GemmTiling) -> Result<ConvPlan, String> {
        ConvPlan::batched(conv, input, 1, t)
    }

    /// The plan for `items` batch items per call (back to back in every buffer).
    pub fn batched(conv: &Conv, input: [usize; 3], items: usize, t: &GemmTiling) -> Result<ConvPlan, String> {
        let geo = ConvGeometry::new(conv, input)?;
        let items = items.max(1);
        let (m, taps, cin, cout) = (geo.pixels() * items, geo.taps(), geo.cin, geo.cout);
        // Weight-streaming layers (see `prefetch_max_m`) take K in one block when their A fits in L2: each
        // task then reads its weight panels front to back once (the prefetch runs straight ahead) and packs
        // A once instead of once per K block (measured: stride-2 1x1 on a 4x4 map 1.1 -> 0.7 ms).
        let prefetch = m <= t.prefetch_max_m && m * taps * cin * 4 <= 512 * 1024;
        let kcmax = if prefetch { (taps * cin).max(8) } else { t.kc.max(8) };
        let (chunks, chunk, cin_padded, taps_per_block, blocks) = if cin <= kcmax {
            let tpb0 = (kcmax / cin).max(1);
            let nkb = taps.div_ceil(tpb0);
            let tpb = taps.div_ceil(nkb);
            (1, cin, cin, tpb, nkb)
        } else {
            let nch = cin.div_ceil(kcmax);
            let cc = cin.div_ceil(nch).next_multiple_of(2);
            (nch, cc, nch * cc, 1, taps * nch)
        };
        let (block_len, last_taps, last_len) = if chunks == 1 {
            let tl = taps - (blocks - 1) * taps_per_block;
            (taps_per_block * cin, tl, tl * cin)
        } else {
            (chunk, 1, chunk)
        };
        let k = KBlocking {
            taps,
            cin_padded,
            chunks,
            chunk,
            taps_per_block,
            blocks,
            block_len,
            last_len,
            last_taps,
            packed: taps * cin_padded,
        };
        let direct = geo.is_pointwise() && cin_padded == cin;
        let nr = t.tile.nr;
        let npan = cout.div_ceil(nr);
        // Balanced row tiles: e.g. M = 49 gives 5 tiles of 10 (+9) rows instead of 4 x 12 + 1.
        let mr = m.div_ceil(m.div_ceil(t.mr_max.clamp(1, t.tile.mr)));
        let mtiles = m.div_ceil(mr);
        // Tasks: blocks of row tiles x blocks of column panels. Below `min_tasks`, split rows first (down to
        // 2 tiles per task: packing is repeated per column block), then columns (down to 4 panels).
        // Weight-bound layers (M <= `prefetch_max_m`) split columns first, down to one panel (two when A is
        // packed, as each column block packs it again), and rows only if that is not enough: every weight
        // is then read from memory by one task, once.
        let weight_bound = m <= t.prefetch_max_m;
        let min_panels = if direct { 1 } else { 2 };
        let (mut mct, mut ncp) = (t.mc_tiles.max(1), t.nc_panels.max(1));
        loop {
            let tasks = mtiles.div_ceil(mct) * npan.div_ceil(ncp);
            if tasks >= t.min_tasks {
                break;
            } else if weight_bound && ncp > min_panels && npan > npan.div_ceil(ncp) {
                ncp /= 2;
            } else if weight_bound && npan.div_ceil(ncp) >= 4 {
                break;
            } else if mct > 2 && mtiles > mtiles.div_ceil(mct) {
                mct /= 2;
            } else if ncp > 4 && npan > npan.div_ceil(ncp) {
                ncp /= 2;
            } else {
                break;
            }
        }
        let nmb = mtiles.div_ceil(mct);
        let nnb = npan.div_ceil(ncp);
        let m_blocking = MBlocking {
            pixels: m,
            rows: mr,
            tiles: mtiles,
            full_tiles: m / mr,
            rem_rows: m % mr,
            tiles_per_task: mtiles.div_ceil(nmb),
            blocks: nmb,
        };
        let n = NBlocking {
            panels: npan,
            full_panels: cout / nr,
            tail: cout % nr,
            panels_per_task: npan.div_ceil(nnb),
            blocks: nnb,
        };
        Ok(ConvPlan {
            tile: t.tile,
            items,
            geo,
            k,
            m: m_blocking,
            n,
            epi: Epilogue::of(conv),
            direct,
            unroll: t.unroll,
            fma_b_first: t.fma_b_first,
            prefetch: if prefetch { t.prefetch_distance } else { 0 },
            prefetch_first_tile: !prefetch && t.prefetch_first_tile,
        })
    }

    /// Float offset of the bias in the packed constants.
    pub fn bias_offset(&self) -> usize {
        self.n.panels * self.k.packed * self.tile.nr
    }

    /// Packs the Keras kernel `[kh, kw, cin, cout]` (and bias) into `B[panel][k][nr]` + bias.
    pub fn pack_weights(&self, kernel: &[f32], bias: Option<&[f32]>) -> AlignedBuf {
        let (cin, cout, nr) = (self.geo.cin, self.geo.cout, self.tile.nr);
        let mut out = AlignedBuf::zeroed(self.packed_floats());
        for p in 0..self.n.panels {
            for tap in 0..self.k.taps {
                for c in 0..cin {
                    let src = (tap * cin + c) * cout;
                    let dst = (p * self.k.packed + tap * self.k.cin_padded + c) * nr;
                    for j in 0..nr {
                        let n = p * nr + j;
                        if n < cout {
                            out[dst + j] = kernel[src + n];
                        }
                    }
                }
            }
        }
        put_bias(&mut out, self.bias_offset(), bias);
        out
    }
}

impl KernelFamily for ConvPlan {
    fn ntasks(&self) -> usize {
        self.m.blocks * self.n.blocks
    }

    fn items(&self) -> usize {
        self.items
    }

    /// One packed `rows x block_len` tile of A, when any tile is packed (all the task's tiles in the
    /// streaming order).
    fn work_floats(&self) -> usize {
        if self.direct && self.m.rem_rows == 0 {
            0
        } else if self.prefetch > 0 {
            self.m.tiles_per_task * self.m.rows * self.k.last_len
        } else {
            self.m.rows * self.k.block_len.max(self.k.last_len)
        }
    }

    fn out_shape(&self) -> Vec<usize> {
        vec![self.geo.oh, self.geo.ow, self.geo.cout]
    }

    fn reads_input2(&self) -> bool {
        self.epi.residual
    }

    fn helpers(&self) -> Helpers {
        Helpers {
            prefetch: self.prefetch > 0 || self.prefetch_first_tile,
            ukernels: self.tile.is_wide(),
            ..Default::default()
        }
    }

    fn packed_floats(&self) -> usize {
        self.bias_offset() + self.n.panels * self.tile.nr
    }

    fn pack(&self, w: &LayerWeights) -> Result<AlignedBuf, String> {
        let (kernel, bias) = w.checked(self.k.taps * self.geo.cin * self.geo.cout, self.epi.bias, self.geo.cout)?;
        Ok(self.pack_weights(kernel, bias))
    }

    fn emit_task(&self, b: &mut FunctionBuilder, env: &TaskEnv, task: Value) {
        emit_task(b, self, *env, task)
    }
}

#[derive(Clone, Copy)]
struct BlockKind {
    kc: usize,
    ntaps: usize,
    init_zero: bool,
    epi: bool,
}

fn emit_task(b: &mut FunctionBuilder, p: &ConvPlan, ptrs: TaskEnv, t: Value) {
    let (mb, nb) = if p.n.blocks == 1 {
        (t, iconst(b, 0))
    } else {
        (b.ins().udiv_imm_u(t, p.n.blocks as i64), b.ins().urem_imm_u(t, p.n.blocks as i64))
    };
    let mt0 = b.ins().imul_imm_s(mb, p.m.tiles_per_task as i64);
    let mt1 = b.ins().iadd_imm_s(mt0, p.m.tiles_per_task as i64);
    let mfull = iconst(b, p.m.full_tiles);
    let mt_end = b.ins().umin(mt1, mfull);
    let p0 = b.ins().imul_imm_s(nb, p.n.panels_per_task as i64);
    let p1 = b.ins().iadd_imm_s(p0, p.n.panels_per_task as i64);
    let nfull = iconst(b, p.n.full_panels);
    let p_end = b.ins().umin(p1, nfull);
    let last_mb = b.ins().icmp_imm_s(IntCC::Equal, mb, (p.m.blocks - 1) as i64);
    let last_nb = b.ins().icmp_imm_s(IntCC::Equal, nb, (p.n.blocks - 1) as i64);
    let tiles = TaskTiles { mt0, mt_end, p0, p_end, last_mb, last_nb };
    if p.k.blocks == 1 {
        let kb = iconst(b, 0);
        emit_block(
            b,
            p,
            ptrs,
            tiles,
            kb,
            BlockKind { kc: p.k.last_len, ntaps: p.k.last_taps, init_zero: true, epi: true },
        );
    } else {
        let full = |init_zero| BlockKind { kc: p.k.block_len, ntaps: p.k.taps_per_block, init_zero, epi: false };
        let kb0 = iconst(b, 0);
        emit_block(b, p, ptrs, tiles, kb0, full(true));
        if p.k.blocks > 2 {
            let lo = iconst(b, 1);
            let hi = iconst(b, p.k.blocks - 1);
            for_range(b, lo, hi, &[], |b, kb, _| {
                emit_block(b, p, ptrs, tiles, kb, full(false));
                vec![]
            });
        }
        let kbl = iconst(b, p.k.blocks - 1);
        emit_block(
            b,
            p,
            ptrs,
            tiles,
            kbl,
            BlockKind { kc: p.k.last_len, ntaps: p.k.last_taps, init_zero: false, epi: true },
        );
    }
}

#[derive(Clone, Copy)]
struct TaskTiles {
    mt0: Value,
    mt_end: Value,
    p0: Value,
    p_end: Value,
    last_mb: Value,
    last_nb: Value,
}

/// One K block over the task's tiles.
fn emit_block(b: &mut FunctionBuilder, p: &ConvPlan, ptrs: TaskEnv, tt: TaskTiles, kb: Value, kind: BlockKind) {
    if p.prefetch > 0 {
        return emit_stream(b, p, ptrs, tt, kind);
    }
    // B for panel `pan` of this block: cst + (pan*kp + kb*kc_full)*16 bytes.
    let kb_off = b.ins().imul_imm_s(kb, (p.k.block_len * p.tile.nr * 4) as i64);
    let bbase = b.ins().iadd(ptrs.cst, kb_off);
    let panels = |b: &mut FunctionBuilder, a: (Value, usize, usize), m0: Value, rows: usize, pf: bool| {
        // (No code for full panels when there are none: it would be dead, and a micro-kernel wider than
        // the output rows is not even valid.)
        if p.n.full_panels > 0 {
            for_range(b, tt.p0, tt.p_end, &[], |b, pan, _| {
                micro(b, p, ptrs, a, bbase, pan, m0, rows, p.tile.nr, kind, pf);
                vec![]
            });
        }
        if p.n.tail > 0 {
            if_then(b, tt.last_nb, |b| {
                let pan = iconst(b, p.n.full_panels);
                micro(b, p, ptrs, a, bbase, pan, m0, rows, p.n.tail, kind, false);
            });
        }
    };
    let tile = |b: &mut FunctionBuilder, mt: Value, pf: bool| {
        let m0 = b.ins().imul_imm_s(mt, p.m.rows as i64);
        let a = if p.direct {
            // A row m at inp + (m*cin + c0)*4, c0 = kb*cc (taps == 1).
            let c0 = b.ins().imul_imm_s(kb, p.k.chunk as i64);
            let mc = b.ins().imul_imm_s(m0, p.geo.cin as i64);
            let e = b.ins().iadd(mc, c0);
            let ap = addr(b, ptrs.inp, e, 4, 0);
            (ap, p.geo.cin * 4, 4)
        } else {
            emit_pack(b, p, ptrs, m0, kb, kind);
            (ptrs.work, kind.kc * 4, 4)
        };
        panels(b, a, m0, p.m.rows, pf);
    };
    if p.m.full_tiles > 0 {
        let mut first = tt.mt0;
        if p.prefetch_first_tile {
            let any = b.ins().icmp(IntCC::SignedLessThan, tt.mt0, tt.mt_end);
            if_then(b, any, |b| tile(b, tt.mt0, true));
            first = b.ins().iadd_imm_s(tt.mt0, 1);
        }
        for_range(b, first, tt.mt_end, &[], |b, mt, _| {
            tile(b, mt, false);
            vec![]
        });
    }
    if p.m.rem_rows > 0 {
        if_then(b, tt.last_mb, |b| {
            let m0 = iconst(b, p.m.full_tiles * p.m.rows);
            emit_pack(b, p, ptrs, m0, kb, kind);
            panels(b, (ptrs.work, kind.kc * 4, 4), m0, p.m.rem_rows, false);
        });
    }
}

/// The streaming order (small maps, one K block): A of every row tile of the task first (packed into
/// consecutive `mr x K` tiles of the work buffer, or read in place by a direct 1x1 conv), then for each
/// panel every row tile, so the task's weights stream from memory once, front to back. The first tile of
/// each panel prefetches the weights ahead; the others find them in L1.
fn emit_stream(b: &mut FunctionBuilder, p: &ConvPlan, ptrs: TaskEnv, tt: TaskTiles, kind: BlockKind) {
    let tile_bytes = p.m.rows * kind.kc * 4;
    let kb = iconst(b, 0);
    let nfull = b.ins().isub(tt.mt_end, tt.mt0);
    // Where tile `mt` (full) reads A.
    let tile_a = |b: &mut FunctionBuilder, mt: Value| -> (Value, usize, usize) {
        if p.direct {
            let m0 = b.ins().imul_imm_s(mt, p.m.rows as i64);
            let e = b.ins().imul_imm_s(m0, p.geo.cin as i64);
            (addr(b, ptrs.inp, e, 4, 0), p.geo.cin * 4, 4)
        } else {
            let j = b.ins().isub(mt, tt.mt0);
            (addr(b, ptrs.work, j, tile_bytes, 0), kind.kc * 4, 4)
        }
    };
    let rem_a = |b: &mut FunctionBuilder| -> (Value, usize, usize) {
        (addr(b, ptrs.work, nfull, tile_bytes, 0), kind.kc * 4, 4)
    };
    if !p.direct {
        for_range(b, tt.mt0, tt.mt_end, &[], |b, mt, _| {
            let m0 = b.ins().imul_imm_s(mt, p.m.rows as i64);
            let (dst, _, _) = tile_a(b, mt);
            emit_pack(b, p, TaskEnv { work: dst, ..ptrs }, m0, kb, kind);
            vec![]
        });
    }
    if p.m.rem_rows > 0 {
        if_then(b, tt.last_mb, |b| {
            let m0 = iconst(b, p.m.full_tiles * p.m.rows);
            let (dst, _, _) = rem_a(b);
            emit_pack(b, p, TaskEnv { work: dst, ..ptrs }, m0, kb, kind);
        });
    }
    let bbase = ptrs.cst;
    let one_panel = |b: &mut FunctionBuilder, pan: Value, lanes: usize| {
        // The first full tile prefetches (peeled), the rest follow; the remainder tile prefetches too,
        // as it may be the task's only tile.
        if p.m.full_tiles > 0 {
            let any = b.ins().icmp(IntCC::SignedLessThan, tt.mt0, tt.mt_end);
            if_then(b, any, |b| {
                let a = tile_a(b, tt.mt0);
                let m0 = b.ins().imul_imm_s(tt.mt0, p.m.rows as i64);
                micro(b, p, ptrs, a, bbase, pan, m0, p.m.rows, lanes, kind, true);
            });
            let next = b.ins().iadd_imm_s(tt.mt0, 1);
            for_range(b, next, tt.mt_end, &[], |b, mt, _| {
                let a = tile_a(b, mt);
                let m0 = b.ins().imul_imm_s(mt, p.m.rows as i64);
                micro(b, p, ptrs, a, bbase, pan, m0, p.m.rows, lanes, kind, false);
                vec![]
            });
        }
        if p.m.rem_rows > 0 {
            if_then(b, tt.last_mb, |b| {
                let a = rem_a(b);
                let m0 = iconst(b, p.m.full_tiles * p.m.rows);
                micro(b, p, ptrs, a, bbase, pan, m0, p.m.rem_rows, lanes, kind, true);
            });
        }
    };
    if p.n.full_panels > 0 {
        for_range(b, tt.p0, tt.p_end, &[], |b, pan, _| {
            one_panel(b, pan, p.tile.nr);
            vec![]
        });
    }
    if p.n.tail > 0 {
        if_then(b, tt.last_nb, |b| {
            let pan = iconst(b, p.n.full_panels);
            one_panel(b, pan, p.n.tail);
        });
    }
}

/// Packs the `mr`-row tile of A starting at output pixel `m0` for K block `kb` into `work`, row-major:
/// row `i` at `work + i*kc*4`, tap `t` of the block at `t*clen` within the row (im2col on the fly, zeros
/// for padding and for rows past M). Rows are copied with f32x4 loads and stores; when a block holds whole
/// kernel rows (`tpb` a multiple of `kw`, e.g. the 7x7 stem's 49 taps), each kernel row whose pixels are all
/// inside the input is one contiguous run of `kw*cin` floats (21 for the stem instead of 7 checked taps).
fn emit_pack(b: &mut FunctionBuilder, p: &ConvPlan, ptrs: TaskEnv, m0: Value, kb: Value, kind: BlockKind) {
    let (tap0, c0, clen, valid): (Value, Value, usize, Option<usize>) = if p.k.chunks == 1 {
        let tap0 = b.ins().imul_imm_s(kb, p.k.taps_per_block as i64);
        (tap0, iconst(b, 0), p.geo.cin, Some(p.geo.cin))
    } else {
        let tap0 = b.ins().udiv_imm_u(kb, p.k.chunks as i64);
        let ch = b.ins().urem_imm_u(kb, p.k.chunks as i64);
        let c0 = b.ins().imul_imm_s(ch, p.k.chunk as i64);
        (tap0, c0, p.k.chunk, if p.k.cin_padded == p.geo.cin { Some(p.k.chunk) } else { None })
    };
    let row_bytes = kind.kc * 4;
    let kernel_rows = p.k.chunks == 1
        && p.geo.kw > 1
        && p.k.taps_per_block.is_multiple_of(p.geo.kw)
        && kind.ntaps.is_multiple_of(p.geo.kw);
    let lo = iconst(b, 0);
    let hi = iconst(b, p.m.rows);
    for_range(b, lo, hi, &[], |b, i, _| {
        let m = b.ins().iadd(m0, i);
        let row_ok = b.ins().icmp_imm_s(IntCC::UnsignedLessThan, m, p.m.pixels as i64);
        let dst_row = addr(b, ptrs.work, i, row_bytes, 0);
        if_else(
            b,
            row_ok,
            |b| {
                // Row `m` is pixel `m % pixels` of item `m / pixels` (the batch items back to back).
                let (inp, m) = if p.items > 1 {
                    let it = b.ins().udiv_imm_u(m, p.geo.pixels() as i64);
                    let inp = addr(b, ptrs.inp, it, p.geo.h * p.geo.w * p.geo.cin * 4, 0);
                    (inp, b.ins().urem_imm_u(m, p.geo.pixels() as i64))
                } else {
                    (ptrs.inp, m)
                };
                let (oy, ox) = if p.geo.ow == 1 {
                    (m, iconst(b, 0))
                } else {
                    (b.ins().udiv_imm_u(m, p.geo.ow as i64), b.ins().urem_imm_u(m, p.geo.ow as i64))
                };
                let oys = b.ins().imul_imm_s(oy, p.geo.sh as i64);
                let iy0 = b.ins().iadd_imm_s(oys, -(p.geo.pad_top as i64));
                let oxs = b.ins().imul_imm_s(ox, p.geo.sw as i64);
                let ix0 = b.ins().iadd_imm_s(oxs, -(p.geo.pad_left as i64));
                // Input element (iy, ix, c0) as a byte address.
                let src_at = |b: &mut FunctionBuilder, iy: Value, ix: Value| {
                    let yw = b.ins().imul_imm_s(iy, p.geo.w as i64);
                    let pix = b.ins().iadd(yw, ix);
                    let e = b.ins().imul_imm_s(pix, p.geo.cin as i64);
                    let e = b.ins().iadd(e, c0);
                    addr(b, inp, e, 4, 0)
                };
                // One tap `t` of the block (tap index tap0 + t): copy its channels or zeros.
                let one_tap = |b: &mut FunctionBuilder, t: Value| {
                    let tap = b.ins().iadd(tap0, t);
                    let (ky, kx) = if p.geo.kw == 1 {
                        (tap, iconst(b, 0))
                    } else {
                        (b.ins().udiv_imm_u(tap, p.geo.kw as i64), b.ins().urem_imm_u(tap, p.geo.kw as i64))
                    };
                    let iy = b.ins().iadd(iy0, ky);
                    let ix = b.ins().iadd(ix0, kx);
                    let yok = b.ins().icmp_imm_s(IntCC::UnsignedLessThan, iy, p.geo.h as i64);
                    let xok = b.ins().icmp_imm_s(IntCC::UnsignedLessThan, ix, p.geo.w as i64);
                    let ok = b.ins().band(yok, xok);
                    let dst = addr(b, dst_row, t, clen * 4, 0);
                    if_else(
                        b,
                        ok,
                        |b| {
                            let src = src_at(b, iy, ix);
                            match valid {
                                Some(n) => copy_run(b, src, dst, n),
                                None => {
                                    // The last channel chunk of a tap: cin - c0 real channels, zeros after.
                                    let cinv = iconst(b, p.geo.cin);
                                    let rest = b.ins().isub(cinv, c0);
                                    let ccv = iconst(b, p.k.chunk);
                                    let n = b.ins().umin(rest, ccv);
                                    let z = iconst(b, 0);
                                    for_range(b, z, n, &[], |b, c, _| {
                                        let s = addr(b, src, c, 4, 0);
                                        let x = b.ins().load(types::F32, mf_input_scalar(), s, 0);
                                        let d = addr(b, dst, c, 4, 0);
                                        b.ins().store(mf_rw(), x, d, 0);
                                        vec![]
                                    });
                                    let clenv = iconst(b, clen);
                                    let zf = b.ins().f32const(0.0);
                                    for_range(b, n, clenv, &[], |b, c, _| {
                                        let d = addr(b, dst, c, 4, 0);
                                        b.ins().store(mf_rw(), zf, d, 0);
                                        vec![]
                                    });
                                }
                            }
                        },
                        |b| zero_run(b, dst, clen),
                    );
                };
                if kernel_rows {
                    // Per kernel row: one contiguous run when all its pixels are inside, tap by tap otherwise.
                    let ky0 = b.ins().udiv_imm_u(tap0, p.geo.kw as i64);
                    let z = iconst(b, 0);
                    let nky = iconst(b, kind.ntaps / p.geo.kw);
                    let xin_lo = b.ins().icmp_imm_s(IntCC::SignedGreaterThanOrEqual, ix0, 0);
                    let xend = b.ins().iadd_imm_s(ix0, p.geo.kw as i64);
                    let xin_hi = b.ins().icmp_imm_s(IntCC::SignedLessThanOrEqual, xend, p.geo.w as i64);
                    let x_inside = b.ins().band(xin_lo, xin_hi);
                    for_range(b, z, nky, &[], |b, r, _| {
                        let ky = b.ins().iadd(ky0, r);
                        let iy = b.ins().iadd(iy0, ky);
                        let yok = b.ins().icmp_imm_s(IntCC::UnsignedLessThan, iy, p.geo.h as i64);
                        let run = b.ins().band(yok, x_inside);
                        if_else(
                            b,
                            run,
                            |b| {
                                let src = src_at(b, iy, ix0);
                                let dst = addr(b, dst_row, r, p.geo.kw * p.geo.cin * 4, 0);
                                copy_run(b, src, dst, p.geo.kw * p.geo.cin);
                            },
                            |b| {
                                let t0 = b.ins().imul_imm_s(r, p.geo.kw as i64);
                                let t1 = b.ins().iadd_imm_s(t0, p.geo.kw as i64);
                                for_range(b, t0, t1, &[], |b, t, _| {
                                    one_tap(b, t);
                                    vec![]
                                });
                            },
                        );
                        vec![]
                    });
                } else {
                    for_n(b, kind.ntaps, one_tap);
                }
            },
            |b| zero_run(b, dst_row, kind.kc),
        );
        vec![]
    });
}

/// One `rows` x `lanes` output tile over one K block: accumulate, then store (with the epilogue if last block).
/// `a` = (A pointer, row stride, k stride) in bytes.
#[allow(clippy::too_many_arguments)]
fn micro(
    b: &mut FunctionBuilder,
    p: &ConvPlan,
    ptrs: TaskEnv,
    a: (Value, usize, usize),
    bbase: Value,
    pan: Value,
    m0: Value,
    rows: usize,
    lanes: usize,
    kind: BlockKind,
    pf: bool,
) {
    let (ap0, rs, ks) = a;
    let nr = p.tile.nr;
    let aflags = if p.direct && rs != 4 { mf_input_scalar() } else { mf_packed() };
    let bp0 = addr(b, bbase, pan, p.k.packed * nr * 4, 0);
    // Output tile base: out + (m0*cout + pan*nr)*4.
    let mrow = b.ins().imul_imm_s(m0, p.geo.cout as i64);
    let pcol = b.ins().imul_imm_s(pan, nr as i64);
    let e = b.ins().iadd(mrow, pcol);
    let cbase = addr(b, ptrs.out, e, 4, 0);
    // Streaming order: straight ahead; first row tile (row-outer order): the next panel, same K.
    let pf_distance = if p.prefetch > 0 { p.prefetch } else { p.k.packed * nr * 4 };
    if p.tile.is_wide() {
        debug_assert_eq!(ks, 4, "micro-kernels read A rows with k contiguous");
        let epi = kind.epi.then_some(p.epi).unwrap_or_default();
        let uk = GemmUkernel {
            isa: p.tile.isa,
            rows,
            nr,
            lanes,
            k: kind.kc,
            a_row_stride: rs,
            b_k_stride: nr * 4,
            c_row_stride: p.geo.cout * 4,
            accumulate: !kind.init_zero,
            epilogue: epi,
            prefetch_b: pf.then_some(pf_distance),
        };
        let bias = epi.bias.then(|| addr(b, ptrs.cst, pan, nr * 4, (p.bias_offset() * 4) as i64));
        let residual = epi.residual.then(|| addr(b, ptrs.res, e, 4, 0));
        call_wide(b, &ptrs, &WideCall { uk, a: ap0, b: bp0, c: cbase, bias, residual });
        return;
    }
    let rstride = (p.geo.cout * 4) as i32;
    let accs: Vec<Value> = (0..rows)
        .map(|i| if kind.init_zero { zero4(b) } else { load_lanes(b, mf_rw(), cbase, i as i32 * rstride, lanes) })
        .collect();
    let sets = accumulator_sets(rows);
    let pf = if pf { ptrs.prefetch } else { None };
    let unroll = k_unroll(pf.is_some(), rows, sets, p.unroll);
    let kl = KLoop {
        b0: bp0,
        a0: ap0,
        a_kstride: ks,
        a_rowstride: rs,
        a_flags: aflags,
        steps: kind.kc,
        unroll,
        sets,
        fma_b_first: p.fma_b_first,
        prefetch: pf.map(|f| (f, pf_distance)),
    };
    let accs = emit_k_loop(b, &kl, accs);
    // Store (and the epilogue on the last K block).
    let bias = (kind.epi && p.epi.bias).then(|| {
        let bo = addr(b, ptrs.cst, pan, nr * 4, (p.bias_offset() * 4) as i64);
        b.ins().load(types::F32X4, mf_packed(), bo, 0)
    });
    let rbase = (kind.epi && p.epi.residual).then(|| addr(b, ptrs.res, e, 4, 0));
    for (i, &acc) in accs.iter().enumerate() {
        let off = i as i32 * rstride;
        let v = if kind.epi {
            conv_epilogue(b, acc, bias, p.epi.relu, rbase.map(|rb| (rb, off, lanes)), p.epi.relu_after_add)
        } else {
            acc
        };
        store_lanes(b, mf_rw(), v, cbase, off, lanes);
    }
}
