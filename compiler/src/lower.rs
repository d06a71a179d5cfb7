//! The lowering stage: the optimized graph becomes the kernel-level graph that will run.
//!
//! What enters: the optimizer's [`Graph`] (fused convs, pools, dense layers, adds of any arity) and the
//! back end's [`Rules`] (threads, which algorithms may run, their tilings). What leaves: a [`Lowered`]
//! program, a list of [`KernelNode`]s in execution order over numbered values, where every node carries
//! what will run as a typed value — for a convolution the algorithm and its tiling ([`ConvAlgo`]), for
//! every other op its kernel plan — and nothing is left to decide in code generation:
//!
//! - convolutions get their algorithm from [`select_conv`], the one place of the selection rules and their
//!   regions of use (measured, see the rules' docs);
//! - an `add` of k inputs becomes a chain of k - 1 binary adds, `((x0 + x1) + x2) + ...` (the reference's
//!   order), through intermediate values;
//! - a dense layer with softmax on several threads becomes a dense kernel split over the threads and a
//!   softmax kernel (one kernel cannot wait for all its tasks);
//! - `flatten` is no kernel: its consumers read its input's value;
//! - a model whose output is its input gets a copy kernel.
//!
//! [`Lowered::verify`] checks the result (each value written once before it is read, arities, every plan's
//! output size equal to its value's); [`Lowered::dump`] is what `resnetc compile --dump-after lower`
//! prints, [`Lowered::dot`] what `resnetc dot --after lower` draws. The memory planner (`crate::plan`)
//! works on this graph, and the back end (`crate::backend`) only emits and assembles it.

use crate::codegen::conv::{ConvPlan, GemmTiling};
use crate::codegen::dense::DensePlan;
use crate::codegen::elementwise::{BatchNormPlan, Flat, FlatPlan, SoftmaxPlan, ZeroPadPlan};
use crate::codegen::gemm::{Epilogue, Tile};
use crate::codegen::pool::{GlobalPoolPlan, PoolKind, WindowPoolPlan};
use crate::codegen::stem::{stem_applies, StemPlan};
use crate::codegen::strassen::{strassen_applies, StrassenPlan, StrassenTiling};
use crate::codegen::winograd::{winograd_applies, WinogradPlan, WinogradTile, WinogradTiling};
use crate::codegen::x86::Isa;
use crate::codegen::KernelFamily;
use crate::graph::Graph;
use crate::ops::{fmt_shape, Activation, Conv, Op};
use std::collections::HashMap;
use std::fmt::Write as _;

/// The stage's name, as `--dump-after` and `dot --after` take it.
pub const STAGE: &str = "lower";

/// The selection rules: which convolution algorithms may run where, and the tilings of every family.
#[derive(Clone, Debug)]
pub struct Rules {
    /// The CPU tier the kernels are generated for.
    pub isa: Isa,
    /// Threads the kernels run on (task counts and balancing).
    pub threads: usize,
    /// Batch items the convolution and dense kernels compute per call (the batch group): their pixels
    /// are the rows of one GEMM, so each weight is read once per group (`runtime::program`).
    pub items: usize,
    /// Winograd for 3x3 stride-1 convolutions on maps of at least `winograd_min_map` (4: on 2x2 maps one
    /// tile wastes most of its work; measured with `benches/winograd.rs`), and the polyphase Winograd stem
    /// for 7x7 stride-2 convolutions of 1-4 channels.
    pub winograd: bool,
    pub winograd_min_map: usize,
    /// The region where one level of Strassen pays (`codegen::strassen`, f32x4 code): unpadded 1x1 convs with
    /// `strassen_min_m..=strassen_max_m` output pixels, at least `strassen_min_k` input and `strassen_min_n`
    /// output channels (on the f32x4 tier ResNet-50's stage-4 1x1 convs and stage 3's stride-2 projection:
    /// 11-17 % faster per layer; not on 7x7 maps, K or N of 128 or 64). `strassen_max_m` 0 turns it off, as
    /// on the wide tiers: their GEMM runs 3.5x the f32x4 rate (ResNet-50 on AVX-512, 1 thread: the 14
    /// Strassen layers took 36 ms, as GEMMs 11 ms).
    pub strassen_min_m: usize,
    pub strassen_max_m: usize,
    pub strassen_min_k: usize,
    pub strassen_min_n: usize,
    pub gemm: GemmTiling,
    pub strassen: StrassenTiling,
    /// Winograd tasks at least (see [`Rules::for_threads`]).
    pub winograd_min_tasks: usize,
}

impl Rules {
    /// The measured defaults for `threads` threads.
    ///
    /// - GEMM convs: enough tasks for the pool's threads to balance (dynamic scheduling), no more: larger tasks
    ///   repeat less packing and read each weight block fewer times (4 per thread measured ~2.5 % faster than
    ///   a fixed 16 on one thread, the same on two).
    /// - Strassen: one task per thread; more would form the left operands again per task.
    /// - Winograd: one task per thread at least. More (tile blocks split finer, or channel groups that repeat
    ///   the input transform) balanced better but cost more: 2 per thread measured 1.4 % slower on ResNet-50
    ///   and 2 % on the notebook model at 2 threads (min of 30 runs, 3 alternations).
    pub fn for_threads(threads: usize) -> Rules {
        Rules::for_target(Isa::F32x4, threads)
    }

    /// The measured defaults for the tier `isa` on `threads` threads (see [`Rules::for_threads`]).
    pub fn for_target(isa: Isa, threads: usize) -> Rules {
        let threads = threads.max(1);
        Rules {
            isa,
            threads,
            items: 1,
            winograd: true,
            winograd_min_map: 4,
            strassen_min_m: 100,
            strassen_max_m: if isa.is_wide() { 0 } else { 784 },
            strassen_min_k: 256,
            strassen_min_n: 256,
            gemm: GemmTiling { min_tasks: 4 * threads, ..GemmTiling::for_tile(Tile::of(isa)) },
            strassen: StrassenTiling { min_tasks: threads, ..StrassenTiling::default() },
            winograd_min_tasks: threads,
        }
    }
}

/// The algorithm of a convolution kernel, with its plan (tiling).
#[derive(Clone, Debug, PartialEq)]
pub enum ConvAlgo {
    /// Direct or implicit GEMM (`codegen::conv`).
    Gemm(ConvPlan),
    /// One level of Strassen over a 1x1 conv (`codegen::strassen`).
    Strassen(StrassenPlan),
    /// Winograd F(2x2, 3x3) or F(4x4, 3x3) (`codegen::winograd`).
    Winograd(WinogradPlan),
    /// The 7x7 stride-2 stem as Winograd F(3x3, 4x4) on its polyphase form (`codegen::stem`).
    Stem(StemPlan),
}

impl ConvAlgo {
    /// The fused epilogue (bias, relu, residual, relu after add) the kernel applies.
    pub fn epilogue(&self) -> Epilogue {
        match self {
            ConvAlgo::Gemm(p) => p.epi,
            ConvAlgo::Strassen(p) => p.epi,
            ConvAlgo::Winograd(p) => p.epi,
            ConvAlgo::Stem(p) => p.epi,
        }
    }
}

/// The algorithm of a dense layer, with its plan.
#[derive(Clone, Debug, PartialEq)]
pub enum DenseAlgo {
    /// A matrix-vector product per item (`codegen::dense`, the f32x4 tier at batch group 1).
    Gemv(DensePlan),
    /// A 1x1 convolution on a 1x1 map: the items of the batch group are the GEMM's rows (`codegen::conv`),
    /// with the wide tiers' micro-kernels.
    Gemm(ConvPlan),
}

/// What a kernel computes and how: the plan of its family.
#[derive(Clone, Debug, PartialEq)]
pub enum KernelOp {
    Conv(ConvAlgo),
    WindowPool(WindowPoolPlan),
    GlobalPool(GlobalPoolPlan),
    Dense(DenseAlgo),
    Softmax(SoftmaxPlan),
    /// Relu, binary add (one link of an add chain) or copy.
    Flat(FlatPlan),
    BatchNorm(BatchNormPlan),
    ZeroPad(ZeroPadPlan),
}

/// The algorithm of a kernel, without its tiling: what reports and tests select on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Gemm,
    Strassen,
    Winograd(WinogradTile),
    Stem,
    /// Every kernel that is not a convolution (pools, dense, elementwise).
    Plain,
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Algorithm::Gemm => "gemm",
            Algorithm::Strassen => "strassen",
            Algorithm::Winograd(WinogradTile::F2) => "winograd F(2x2,3x3)",
            Algorithm::Winograd(WinogradTile::F4) => "winograd F(4x4,3x3)",
            Algorithm::Stem => "winograd stem F(3x3,4x4)",
            Algorithm::Plain => "plain",
        })
    }
}

impl KernelOp {
    /// The plan as the code generator's interface.
    pub fn family(&self) -> &dyn KernelFamily {
        match self {
            KernelOp::Conv(ConvAlgo::Gemm(p)) => p,
            KernelOp::Conv(ConvAlgo::Strassen(p)) => p,
            KernelOp::Conv(ConvAlgo::Winograd(p)) => p,
            KernelOp::Conv(ConvAlgo::Stem(p)) => p,
            KernelOp::WindowPool(p) => p,
            KernelOp::GlobalPool(p) => p,
            KernelOp::Dense(DenseAlgo::Gemv(p)) => p,
            KernelOp::Dense(DenseAlgo::Gemm(p)) => p,
            KernelOp::Softmax(p) => p,
            KernelOp::Flat(p) => p,
            KernelOp::BatchNorm(p) => p,
            KernelOp::ZeroPad(p) => p,
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            KernelOp::Conv(ConvAlgo::Gemm(_)) => Algorithm::Gemm,
            KernelOp::Conv(ConvAlgo::Strassen(_)) => Algorithm::Strassen,
            KernelOp::Conv(ConvAlgo::Winograd(p)) => Algorithm::Winograd(p.tile),
            KernelOp::Conv(ConvAlgo::Stem(_)) => Algorithm::Stem,
            KernelOp::Dense(DenseAlgo::Gemm(_)) => Algorithm::Gemm,
            _ => Algorithm::Plain,
        }
    }

    /// The op's short name: conv, max_pool, add, ...
    pub fn kind(&self) -> &'static str {
        match self {
            KernelOp::Conv(_) => "conv",
            KernelOp::WindowPool(p) if p.kind == PoolKind::Max => "max_pool",
            KernelOp::WindowPool(_) => "avg_pool",
            KernelOp::GlobalPool(p) if p.kind == PoolKind::Max => "global_max_pool",
            KernelOp::GlobalPool(_) => "global_avg_pool",
            KernelOp::Dense(_) => "dense",
            KernelOp::Softmax(_) => "softmax",
            KernelOp::Flat(p) => match p.op {
                Flat::Relu => "relu",
                Flat::Add => "add",
                Flat::Copy => "copy",
            },
            KernelOp::BatchNorm(_) => "batch_norm",
            KernelOp::ZeroPad(_) => "zero_padding",
        }
    }

    /// The algorithm's tiling in a few words (for dumps and reports).
    pub fn tiling(&self) -> String {
        match self {
            KernelOp::Conv(ConvAlgo::Gemm(p)) | KernelOp::Dense(DenseAlgo::Gemm(p)) => format!(
                "{}x{} tiles, K {} block(s) of {}, {} row x {} column blocks{}{}",
                p.m.rows,
                p.tile.nr,
                p.k.blocks,
                p.k.block_len,
                p.m.blocks,
                p.n.blocks,
                if p.direct { ", A in place" } else { ", A packed" },
                if p.prefetch > 0 { ", streaming weights" } else { "" }
            ),
            KernelOp::Conv(ConvAlgo::Strassen(p)) => {
                format!("{}x4 tiles, {} task(s) of {} tiles, {} panel chunk(s)", p.mr, p.ntasks, p.tpt, p.nchunks)
            }
            KernelOp::Conv(ConvAlgo::Winograd(p)) => format!(
                "{} tiles of {}x{}, {}-row GEMMs, {} tile block(s) x {} channel group(s){}",
                p.ntiles,
                p.m,
                p.m,
                p.r,
                p.ntb,
                p.ng,
                if p.prefetch > 0 { ", streaming weights" } else { "" }
            ),
            KernelOp::Conv(ConvAlgo::Stem(p)) => {
                format!("{} tiles of 3x3, {} per task, {} polyphase channels", p.ntiles, p.nt, p.cinv)
            }
            _ => String::new(),
        }
    }
}

/// A value: one kernel's output (or the model input), per batch item.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub name: String,
    pub shape: Vec<usize>,
}

impl Value {
    /// Floats per batch item.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Index of a [`Value`] in [`Lowered::values`].
pub type ValueId = usize;

/// One kernel call of the program.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelNode {
    /// Unique kernel name: the graph node's, with ` (j/k)` for the links of an add chain and `_softmax` for
    /// the softmax half of a split dense layer.
    pub name: String,
    /// The graph node it computes (its weights key).
    pub node: String,
    pub op: KernelOp,
    /// `input` and, for residual convs and adds, `input2`.
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
    /// Multiply-accumulates per image of the graph node in direct-convolution terms (0 for the extra
    /// kernels of a node; for GFLOP/s figures).
    pub macs: u64,
}

impl KernelNode {
    /// Bytes of packed weights (and other constants) the kernel reads on every run.
    pub fn packed_bytes(&self) -> usize {
        self.op.family().packed_floats() * 4
    }

    /// Per-thread work buffer in bytes.
    pub fn work_bytes(&self) -> usize {
        self.op.family().work_floats() * 4
    }
}

/// The kernel-level program: see the module docs.
#[derive(Clone, Debug)]
pub struct Lowered {
    pub values: Vec<Value>,
    pub kernels: Vec<KernelNode>,
    /// The model input's value (in the caller's memory) and the value the model returns.
    pub input: ValueId,
    pub output: ValueId,
    pub rules: Rules,
}

/// The cost model of the algorithm choice: a kernel's time per call, in seconds, as the larger of its
/// arithmetic (at a share of the tier's FMA peak) and the streaming of its packed weights from memory,
/// plus half of the smaller (they overlap only partly).
///
/// Calibrated on ResNet-50 inside the network, batch 1, one thread of this project's Xeon (AVX-512 peak
/// 176 GFLOP/s, f32x4 47, weights streaming at ~12 GB/s per core, measured with `bench --profile`):
/// Winograd F(4x4) took 0.92 / 1.65 / 3.2 ms on the 28x28 / 14x14 / 7x7 layers, where every tile block
/// reads all of U (9.4 MB at 14x14 in two blocks, 38 MB at 7x7): the model gives 0.98 / 1.6 / 3.1 ms from
/// the weight stream alone. The GEMM kernel took 1.63 ms on the 14x14 layers and 2.45 ms on the 7x7 ones.
/// So on AVX-512 Winograd paid on the maps of 28x28 and up only, while at f32x4's rate its 4x fewer
/// multiplications pay down to 4x4 maps (the rule measured before the wide tiers). Since maps of at most
/// `prefetch_max_tiles` tiles keep all their tiles in one task (U read once), the model picks Winograd for
/// the 14x14 layers too, and measurement agrees (ResNet-50 1.7-2 % faster, paired, 1 and 2 threads).
pub mod cost {
    use super::*;

    /// FMA peak per core, GFLOP/s (measured: `codegen::x86::fma_peak_gflops`).
    pub fn peak_gflops(isa: Isa) -> f64 {
        match isa {
            Isa::Avx512 => 176.0,
            Isa::Avx2 => 95.0,
            Isa::F32x4 => 47.0,
        }
    }

    /// Bytes per second one core streams weights from memory at.
    pub const WEIGHT_BYTES_PER_S: f64 = 12e9;

    fn combine(compute: f64, memory: f64) -> f64 {
        compute.max(memory) + 0.5 * compute.min(memory)
    }

    /// Seconds per call of a GEMM convolution: 85 % of the peak, its weights streamed once (row blocks
    /// after the first find them in the caches: their K blocks are small).
    pub fn gemm(p: &ConvPlan) -> f64 {
        let flops = 2.0 * (p.m.pixels * p.k.taps * p.geo.cin * p.geo.cout) as f64;
        let compute = flops / (peak_gflops(p.tile.isa) * 1e9 * 0.85);
        let memory = (p.bias_offset() * 4) as f64 / WEIGHT_BYTES_PER_S;
        combine(compute, memory)
    }

    /// Seconds per call of a Winograd convolution: its GEMMs at 60 % of the peak, U streamed once per tile
    /// block (every task reads the transformed weights of its channel groups).
    pub fn winograd(p: &WinogradPlan) -> f64 {
        let a2 = (p.a * p.a) as f64;
        let flops = 2.0 * (p.ntiles as f64) * a2 * (p.cin * p.npan * p.gemm_tile.nr) as f64;
        let compute = flops / (peak_gflops(p.gemm_tile.isa) * 1e9 * 0.6);
        let memory = (p.ntb * p.bias_offset() * 4) as f64 / WEIGHT_BYTES_PER_S;
        combine(compute, memory)
    }
}

/// Chooses the algorithm and tiling of a convolution by the [`Rules`]: the Winograd stem where it applies
/// and Winograd is on; for 3x3 stride-1 layers Winograd or the GEMM kernel, whichever the [`cost`] model
/// says is faster; Strassen in its region; the GEMM kernel everywhere else.
pub fn select_conv(conv: &Conv, input: [usize; 3], r: &Rules) -> Result<ConvAlgo, String> {
    let [h, w, cin] = input;
    if r.winograd && stem_applies(conv, input) {
        return StemPlan::new(conv, input, r.items, Tile::of(r.isa)).map(ConvAlgo::Stem);
    }
    if r.winograd && winograd_applies(conv, input) && h.min(w) >= r.winograd_min_map {
        let gemm_tile = Tile::of(r.isa);
        let default = WinogradTiling::for_input(input);
        let rows = if gemm_tile.is_wide() { gemm_tile.mr } else { default.rows };
        let t = WinogradTiling { min_tasks: r.winograd_min_tasks, threads: r.threads, gemm_tile, rows, ..default };
        let wino = WinogradPlan::batched(conv, input, r.items, &t)?;
        let gemm = ConvPlan::batched(conv, input, r.items, &r.gemm)?;
        return Ok(if cost::winograd(&wino) < cost::gemm(&gemm) {
            ConvAlgo::Winograd(wino)
        } else {
            ConvAlgo::Gemm(gemm)
        });
    }
    if strassen_applies(conv, input) {
        let m = h.div_ceil(conv.strides[0]) * w.div_ceil(conv.strides[1]);
        if (r.strassen_min_m..=r.strassen_max_m).contains(&m)
            && cin >= r.strassen_min_k
            && conv.filters >= r.strassen_min_n
        {
            return StrassenPlan::new(conv, input, &r.strassen).map(ConvAlgo::Strassen);
        }
    }
    ConvPlan::batched(conv, input, r.items, &r.gemm).map(ConvAlgo::Gemm)
}

/// Why a graph cannot be lowered.
#[derive(Debug)]
pub enum LowerError {
    /// Ops left after optimization that no kernel computes: `(node, op)` each.
    Unsupported(Vec<(String, String)>),
    /// A plan refused its shapes, or the result failed verification: a compiler bug.
    Internal(String),
}

fn shape3(s: &[usize]) -> Result<[usize; 3], String> {
    match s {
        &[h, w, c] => Ok([h, w, c]),
        _ => Err(format!("expected an [H, W, C] input, found {}", fmt_shape(s))),
    }
}

/// Lowers the optimized graph `g` by the rules `r` (see the module docs).
pub fn lower(g: &Graph, r: &Rules) -> Result<Lowered, LowerError> {
    let unsupported: Vec<(String, String)> = g
        .topo()
        .into_iter()
        .filter(|&n| match &g.node(n).op {
            Op::ZeroPad(_) => g.node(g.inputs(n)[0]).shape.len() != 3,
            _ => false,
        })
        .map(|n| (g.node(n).name.clone(), g.node(n).op.to_string()))
        .collect();
    if !unsupported.is_empty() {
        return Err(LowerError::Unsupported(unsupported));
    }
    let mut l = Lowered { values: vec![], kernels: vec![], input: 0, output: 0, rules: r.clone() };
    let mut value_of = HashMap::new();
    let internal = |node: &str, e: String| LowerError::Internal(format!("`{node}`: {e}"));
    for n in g.topo() {
        let node = g.node(n);
        let ins: Vec<ValueId> = g.inputs(n).iter().map(|i| value_of[i]).collect();
        let in_shape = g.inputs(n).first().map(|&i| g.node(i).shape.clone()).unwrap_or_default();
        let macs = g.node_macs(n);
        let push = |l: &mut Lowered, name: String, op: KernelOp, inputs: Vec<ValueId>, macs: u64| {
            // The node's shape (a dense layer run as a 1x1 convolution writes [1, 1, units] floats: the same).
            l.values.push(Value { name: name.clone(), shape: node.shape.clone() });
            let output = l.values.len() - 1;
            l.kernels.push(KernelNode { name, node: node.name.clone(), op, inputs, output, macs });
            output
        };
        let one = |op: Result<KernelOp, String>| op.map_err(|e| internal(&node.name, e));
        let v = match &node.op {
            Op::Input { .. } => {
                l.values.push(Value { name: node.name.clone(), shape: node.shape.clone() });
                l.input = l.values.len() - 1;
                l.input
            }
            // A free reshape: consumers read the producer's value.
            Op::Flatten => ins[0],
            Op::Conv(c) => {
                let op = one(shape3(&in_shape).and_then(|s| select_conv(c, s, r)).map(KernelOp::Conv))?;
                push(&mut l, node.name.clone(), op, ins, macs)
            }
            Op::Dense { units, activation, bias } => {
                let cin = in_shape.iter().product();
                // The wide tiers and batch groups run it as a 1x1 convolution on a 1x1 map (the items are
                // the GEMM's rows), which cannot apply softmax: split then as on several threads.
                let as_gemm = r.isa.is_wide() || r.items > 1;
                let split = (r.threads > 1 || as_gemm) && *activation == Activation::Softmax;
                let act = if split { Activation::Linear } else { *activation };
                let algo = if as_gemm {
                    let mut c = Conv::new(*units, [1, 1], [1, 1], crate::ops::Padding::Valid, *bias);
                    c.relu = act == Activation::Relu;
                    ConvPlan::batched(&c, [1, 1, cin], r.items, &r.gemm).map(DenseAlgo::Gemm)
                } else {
                    DensePlan::new(cin, *units, act, *bias).map(DenseAlgo::Gemv)
                };
                let op = one(algo.map(KernelOp::Dense))?;
                if split {
                    let logits = push(&mut l, node.name.clone(), op, ins, macs);
                    let sm = one(SoftmaxPlan::new(&[*units]).map(KernelOp::Softmax))?;
                    push(&mut l, format!("{}_softmax", node.name), sm, vec![logits], 0)
                } else {
                    push(&mut l, node.name.clone(), op, ins, macs)
                }
            }
            Op::Add => {
                let links = ins.len() - 1;
                let mut acc = ins[0];
                for (j, &x) in ins.iter().enumerate().skip(1) {
                    let op = one(FlatPlan::new(Flat::Add, &node.shape).map(KernelOp::Flat))?;
                    let name = if links == 1 { node.name.clone() } else { format!("{} ({j}/{links})", node.name) };
                    acc = push(&mut l, name, op, vec![acc, x], 0);
                }
                acc
            }
            op => {
                let plan = match op {
                    Op::MaxPool(p) => shape3(&in_shape)
                        .and_then(|s| WindowPoolPlan::new(PoolKind::Max, p, s))
                        .map(KernelOp::WindowPool),
                    Op::AvgPool(p) => shape3(&in_shape)
                        .and_then(|s| WindowPoolPlan::new(PoolKind::Avg, p, s))
                        .map(KernelOp::WindowPool),
                    Op::GlobalAvgPool => {
                        shape3(&in_shape).and_then(|s| GlobalPoolPlan::new(PoolKind::Avg, s)).map(KernelOp::GlobalPool)
                    }
                    Op::GlobalMaxPool => {
                        shape3(&in_shape).and_then(|s| GlobalPoolPlan::new(PoolKind::Max, s)).map(KernelOp::GlobalPool)
                    }
                    Op::Softmax => SoftmaxPlan::new(&in_shape).map(KernelOp::Softmax),
                    Op::Relu => FlatPlan::new(Flat::Relu, &in_shape).map(KernelOp::Flat),
                    Op::BatchNorm { epsilon } => BatchNormPlan::new(&in_shape, *epsilon).map(KernelOp::BatchNorm),
                    Op::ZeroPad(p) => shape3(&in_shape).and_then(|s| ZeroPadPlan::new(p, s)).map(KernelOp::ZeroPad),
                    other => Err(format!("no kernel for {other}")),
                };
                let op = one(plan)?;
                push(&mut l, node.name.clone(), op, ins, macs)
            }
        };
        value_of.insert(n, v);
    }
    l.output = value_of[&g.output];
    if l.output == l.input {
        // The model returns its input (or a reshape of it): copy it to the caller's output.
        let node = g.node(g.output);
        let op = FlatPlan::new(Flat::Copy, &node.shape).map_err(|e| internal(&node.name, e))?;
        l.values.push(Value { name: node.name.clone(), shape: node.shape.clone() });
        l.output = l.values.len() - 1;
        let k = KernelNode {
            name: node.name.clone(),
            node: node.name.clone(),
            op: KernelOp::Flat(op),
            inputs: vec![l.input],
            output: l.output,
            macs: 0,
        };
        l.kernels.push(k);
    }
    l.verify().map_err(LowerError::Internal)?;
    Ok(l)
}

impl Lowered {
    /// Checks the program's invariants: every value but the input written by exactly one kernel before
    /// any kernel reads it, the output written, each kernel's inputs matching its plan (one, or two for
    /// residual convs and adds) and its output value the size its plan produces, no kernel reading the
    /// value it writes.
    pub fn verify(&self) -> Result<(), String> {
        let mut written = vec![false; self.values.len()];
        if self.input >= self.values.len() || self.output >= self.values.len() {
            return Err("input or output value out of range".into());
        }
        written[self.input] = true;
        for k in &self.kernels {
            let f = k.op.family();
            let want_inputs = if f.reads_input2() { 2 } else { 1 };
            if k.inputs.len() != want_inputs {
                return Err(format!(
                    "kernel `{}` has {} input(s), its plan reads {want_inputs}",
                    k.name,
                    k.inputs.len()
                ));
            }
            for &i in &k.inputs {
                if !written.get(i).copied().unwrap_or(false) {
                    return Err(format!("kernel `{}` reads value {i} before it is written", k.name));
                }
                if i == k.output {
                    return Err(format!("kernel `{}` reads the value it writes", k.name));
                }
            }
            match written.get_mut(k.output) {
                Some(w) if !*w => *w = true,
                _ => return Err(format!("kernel `{}` writes value {} twice or out of range", k.name, k.output)),
            }
            let len: usize = f.out_shape().iter().product();
            if len != self.values[k.output].len() {
                return Err(format!(
                    "kernel `{}` produces {} floats, its value `{}` has {}",
                    k.name,
                    len,
                    self.values[k.output].name,
                    self.values[k.output].len()
                ));
            }
        }
        if !written[self.output] || self.output == self.input {
            return Err("no kernel writes the output".into());
        }
        Ok(())
    }

    /// Multiply-accumulates per image (direct-convolution terms).
    pub fn macs(&self) -> u64 {
        self.kernels.iter().map(|k| k.macs).sum()
    }

    /// Bytes of packed constants all kernels read.
    pub fn packed_bytes(&self) -> usize {
        self.kernels.iter().map(|k| k.packed_bytes()).sum()
    }

    /// The program as text, one kernel per line: name, op and algorithm with its tiling, tasks, work buffer,
    /// packed weights, values in and out.
    pub fn dump(&self) -> String {
        let mut s = format!(
            "lowered: {} kernels over {} values, {} thread(s); input `{}` {}, output `{}` {}\n",
            self.kernels.len(),
            self.values.len(),
            self.rules.threads,
            self.values[self.input].name,
            fmt_shape(&self.values[self.input].shape),
            self.values[self.output].name,
            fmt_shape(&self.values[self.output].shape),
        );
        for (i, k) in self.kernels.iter().enumerate() {
            let f = k.op.family();
            let ins: Vec<String> = k.inputs.iter().map(|&v| format!("%{v}")).collect();
            let _ = write!(s, "k{i:<3} %{} = {} {}", k.output, k.op.kind(), ins.join(", "));
            if k.op.algorithm() != Algorithm::Plain {
                let _ = write!(s, " [{}: {}]", k.op.algorithm(), k.op.tiling());
            }
            let _ = writeln!(
                s,
                "  `{}` -> {}  tasks {}, work {} B/thread, packed {} B",
                k.name,
                fmt_shape(&self.values[k.output].shape),
                f.ntasks(),
                k.work_bytes(),
                k.packed_bytes()
            );
        }
        s
    }

    /// Graphviz DOT of the program: one box per kernel (op, algorithm, tiling), edges along the values.
    pub fn dot(&self) -> String {
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut s = String::from("digraph lowered {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n");
        let _ = writeln!(
            s,
            "  v{} [label=\"{}\\n{}\", shape=ellipse];",
            self.input,
            esc(&self.values[self.input].name),
            fmt_shape(&self.values[self.input].shape)
        );
        let mut producer = vec![None; self.values.len()];
        for (i, k) in self.kernels.iter().enumerate() {
            producer[k.output] = Some(i);
            let algo = match k.op.algorithm() {
                Algorithm::Plain => String::new(),
                a => format!("\\n{a}\\n{}", esc(&k.op.tiling())),
            };
            let _ = writeln!(
                s,
                "  k{i} [label=\"{}\\n{}{algo}\\n{}\"];",
                esc(&k.name),
                k.op.kind(),
                fmt_shape(&self.values[k.output].shape)
            );
            for (port, &v) in k.inputs.iter().enumerate() {
                let from = producer[v].map_or(format!("v{v}"), |p| format!("k{p}"));
                let style = if port == 1 { " [style=dashed]" } else { "" };
                let _ = writeln!(s, "  {from} -> k{i}{style};");
            }
        }
        s.push_str("}\n");
        s
    }
}
