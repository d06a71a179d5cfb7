//! The back end: the optimized, planned graph → one JIT kernel per node → a runtime [`Program`].
//!
//! Input is an [`Optimized`] model (fused graph, folded weights, memory plan). Each kernel node is
//! compiled by a [`codegen::Session`] (one cranelift module for the whole model), its weights packed
//! into the program's constants, and its buffers placed where the plan put them: the model input in the
//! caller's memory, the output node's value in the caller's output, everything else in the arena.
//! Output is a [`Compiled`] model: the runtime program (which keeps the machine code alive), plus what
//! was generated, for reports and `--emit clif`.
//!
//! Every op left after optimization has a kernel. An `add` of k > 2 inputs is lowered to a chain of k - 1
//! binary add steps, `((x0 + x1) + x2) + ...` (the reference's order), alternating between the node's output
//! buffer and a scratch buffer of the same size so that no step writes a buffer it reads; the chain ends in
//! the output buffer. The scratch buffer is planned like a work buffer of the add's step (live at that step
//! only), so the memory planner places it beside everything live then and `Plan::verify` checks it.

use crate::codegen::winograd::{WinogradTile, WinogradTiling};
use crate::codegen::{self, Session, SessionOptions};
use crate::graph::Graph;
use crate::ops::{fmt_shape, Activation, Op};
use crate::plan::{self, Plan};
use crate::{Error, Optimized};
use ndarray::{ArrayD, ArrayViewD};
use petgraph::stable_graph::NodeIndex;
use resnetc_runtime::{Buf, Loc, Program, ProgramBuilder, ThreadPool};
use std::sync::Arc;

/// How to compile.
#[derive(Clone, Debug)]
pub struct BackendOptions {
    /// Threads of the runtime pool (0 = all cores).
    pub threads: usize,
    /// Keep each kernel's cranelift IR (for `--emit clif`).
    pub keep_ir: bool,
    /// Run cranelift's IR verifier on every kernel.
    pub verify: bool,
    /// Use Winograd kernels for the 3x3 stride-1 convolutions where they are faster (maps of 4x4 and up), and
    /// for 7x7 stride-2 convolutions of 1-4 channels (the stem, `codegen::stem`).
    pub winograd: bool,
}

#[allow(clippy::derivable_impls)] // `verify` differs between debug and release builds
impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions { threads: 0, keep_ir: false, verify: cfg!(debug_assertions), winograd: true }
    }
}

/// What was generated for one node.
#[derive(Clone, Debug)]
pub struct KernelInfo {
    pub node: String,
    pub op: String,
    pub ntasks: usize,
    pub work_floats: usize,
    /// Multiply-accumulates per image of the node (for GFLOP/s figures).
    pub macs: u64,
    pub clif: Option<String>,
}

/// A compiled model: run it on NHWC batches of any size, from any number of threads.
pub struct Compiled {
    pub program: Program,
    pub kernels: Vec<KernelInfo>,
    /// The memory plan, work buffers included.
    pub plan: Plan,
    /// Per-image multiply-accumulates, for GFLOP/s figures.
    pub macs: u64,
    pub stages_ms: Vec<(&'static str, f64)>,
    /// For each step of the program, the index in `kernels` of the node it computes (an add of k inputs
    /// is k - 1 steps, a dense layer with softmax on several threads two).
    pub step_kernel: Vec<usize>,
    /// Distinct functions compiled for the graph's nodes: kernels of the same layer shape share one.
    pub functions: usize,
    /// Bytes of packed constants (weights in the kernels' layouts: Winograd and Strassen ones are larger
    /// than the model's weights) that every inference reads.
    pub consts_bytes: usize,
    threads: usize,
}

impl Compiled {
    /// Runs the model on `[N, H, W, C]`.
    pub fn run(&self, x: ArrayViewD<f32>) -> Result<ArrayD<f32>, Error> {
        let s = x.shape();
        if s.len() != 4 || &s[1..] != self.program.input_shape() || s[0] == 0 {
            return Err(Error::InputShape { expected: self.program.input_shape().to_vec(), found: s.to_vec() });
        }
        self.program.run(x).map_err(|e| Error::Option(e.to_string()))
    }

    /// Threads each kernel is split over.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

fn shape3(s: &[usize]) -> [usize; 3] {
    [s[0], s[1], s[2]]
}

/// Compiles every kernel of the optimized graph and assembles the runtime program.
pub fn compile(opt: &Optimized, o: &BackendOptions) -> Result<Compiled, Error> {
    let g: &Graph = &opt.graph;
    let t0 = std::time::Instant::now();
    let steps = opt.plan.steps.clone();
    let pool = Arc::new(ThreadPool::try_new(o.threads)?);
    let threads = pool.threads();
    // A dense layer with softmax on several threads runs as two steps, the dense part split over the
    // threads into a scratch buffer, then the softmax (one kernel cannot wait for all its tasks).
    let split_softmax =
        |n: NodeIndex| threads > 1 && matches!(g.node(n).op, Op::Dense { activation: Activation::Softmax, .. });
    // Scratch of multi-input adds (see the module docs) and of split softmax layers, planned as a work
    // buffer of their step.
    let chain_bytes = |n: NodeIndex| -> usize {
        let node = g.node(n);
        if (matches!(node.op, Op::Add) && g.inputs(n).len() > 2) || split_softmax(n) {
            node.shape.iter().product::<usize>() * 4
        } else {
            0
        }
    };
    let act_plan = if steps.iter().any(|&n| chain_bytes(n) > 0) {
        let p = plan::plan(g, &chain_bytes);
        p.verify().map_err(|reason| crate::passes::PassError { pass: "memory plan", reason })?;
        p
    } else {
        opt.plan.clone()
    };
    // Everything the back end cannot compile, reported at once.
    let unsupported: Vec<String> = steps
        .iter()
        .filter(|&&n| !supported(&g.node(n).op, &g.node(g.inputs(n)[0]).shape))
        .map(|&n| format!("`{}` ({})", g.node(n).name, g.node(n).op))
        .collect();
    if !unsupported.is_empty() {
        return Err(Error::Option(format!(
            "error: the JIT back end has no kernel yet for {} node(s) left after optimization: {}; use --backend reference",
            unsupported.len(),
            unsupported.join(", ")
        )));
    }
    // Code generation and weight packing run on all cores: each worker has its own session (cranelift
    // module, reused contexts) and takes kernels from a shared list, largest first. The program keeps
    // every worker's code alive.
    // Conv tasks: enough for the pool's threads to balance (dynamic scheduling), no more: larger tasks
    // repeat less packing and read each weight block fewer times (4 per thread measured ~2.5 % faster
    // than a fixed 16 on one thread, the same on two).
    // Strassen convs: one task per thread; more would form the left operands again per task.
    let conv_tiling = codegen::ConvTiling {
        min_tasks: 4 * threads,
        strassen_min_tasks: threads,
        stem_winograd: o.winograd,
        ..Default::default()
    };
    // Winograd tasks: one per thread at least. More (tile blocks split finer, or channel groups that
    // repeat the input transform) balanced better but cost more: 2 per thread measured 1.4 % slower on
    // ResNet-50 and 2 % on the notebook model at 2 threads (min of 30 runs, 3 alternations).
    let winograd_min_tasks = threads;
    let session_opts = SessionOptions {
        verify: o.verify,
        keep_ir: o.keep_ir,
        conv_tiling: conv_tiling.clone(),
        winograd_min_tasks,
        threads,
        ..SessionOptions::default()
    };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4).min(steps.len().max(1));
    let mut by_cost: Vec<usize> = (0..steps.len()).collect();
    // Cost ~ floats packed (Winograd multiplies the weights by 16/9 or 36/9, Strassen by 7/4) plus ~4 ms
    // of cranelift per kernel, which is about what packing a million floats takes.
    let cost = |i: usize| {
        let n = steps[i];
        let params = g.node_params(n);
        let packed = match winograd_tile(g, n, o) {
            Some(WinogradTile::F2) => params * 16 / 9,
            Some(WinogradTile::F4) => params * 36 / 9,
            None if strassen_conv(g, n, &conv_tiling) => params * 7 / 4,
            None => params,
        };
        packed + 1_000_000
    };
    // Largest first, each worker taking the next kernel when it is free: estimates are rough (a static
    // split by them left one worker idle for ~60-100 ms of ResNet-50's ~250).
    // Repeats of a layer shape (same op, same input shape: the same code, see `Session::compile_once`) go
    // after every first occurrence, so that the worker taking one finds its code compiled and only packs
    // its weights, whichever worker compiled it.
    let mut seen = std::collections::HashSet::new();
    let repeat: Vec<bool> =
        steps.iter().map(|&n| !seen.insert(format!("{:?} {:?}", g.node(n).op, g.node(g.inputs(n)[0]).shape))).collect();
    by_cost.sort_by_key(|&i| (repeat[i], std::cmp::Reverse(cost(i))));
    let cache = codegen::CodeCache::default();
    let next = std::sync::atomic::AtomicUsize::new(0);
    type Compiled1 = (Vec<(usize, codegen::Kernel)>, codegen::JitCode);
    let results: Vec<Result<Compiled1, Error>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..workers)
            .map(|_| {
                let session_opts = session_opts.clone();
                let (steps, by_cost, next, cache) = (&steps, &by_cost, &next, &cache);
                sc.spawn(move || -> Result<Compiled1, Error> {
                    let mut session = Session::with_cache(session_opts, cache).map_err(cg)?;
                    let mut ks = Vec::new();
                    loop {
                        let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&i) = by_cost.get(j) else { break };
                        ks.push((i, kernel_for(&mut session, g, opt, steps[i], o, split_softmax(steps[i]))?));
                    }
                    Ok((ks, session.finish().map_err(cg)?))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Option("internal error: a code generation thread panicked".into())))
            })
            .collect()
    });
    let mut codes = Vec::with_capacity(workers);
    let mut slots: Vec<Option<codegen::Kernel>> = (0..steps.len()).map(|_| None).collect();
    for r in results {
        let (ks, code) = r?;
        for (i, k) in ks {
            slots[i] = Some(k);
        }
        codes.push(code);
    }
    let mut kernels: Vec<codegen::Kernel> =
        slots.into_iter().map(|s| s.expect("every step taken by one worker")).collect();
    // A kernel may run code another worker compiled: resolve it with the code of the session that owns it.
    let owner: Vec<usize> = kernels
        .iter()
        .map(|k| codes.iter().position(|c| c.owns(k.id)).expect("every kernel's code comes from a worker"))
        .collect();
    let consts_bytes: usize = kernels.iter().map(|k| k.consts.len() * 4).sum();
    // Distinct compiled functions (kernels sharing code count once).
    let functions = kernels.iter().map(|k| k.id).collect::<std::collections::HashSet<_>>().len();
    // A model whose output is its input (or a reshape of it) copies the input to the output.
    let out_node = g.node(g.output);
    let mut passthrough = match act_plan.value.get(&g.output) {
        None => {
            let mut session = Session::with_options(session_opts.clone()).map_err(cg)?;
            let k = session.copy(&out_node.name, &out_node.shape).map_err(cg)?;
            codes.push(session.finish().map_err(cg)?);
            Some((codes.len() - 1, k))
        }
        Some(_) => None,
    };
    // The softmax halves of split dense layers, by step index.
    let mut softmaxes: std::collections::HashMap<usize, (usize, codegen::Kernel)> = Default::default();
    if steps.iter().any(|&n| split_softmax(n)) {
        let mut session = Session::with_options(session_opts.clone()).map_err(cg)?;
        for (si, &n) in steps.iter().enumerate().filter(|(_, &n)| split_softmax(n)) {
            let node = g.node(n);
            let k = session.softmax(&format!("{}_softmax", node.name), node.shape.iter().product()).map_err(cg)?;
            // This session's code goes to `codes` next, at index `codes.len()`.
            softmaxes.insert(si, (codes.len(), k));
        }
        codes.push(session.finish().map_err(cg)?);
    }
    let t1 = std::time::Instant::now();
    // Re-plan with each kernel's per-thread work buffers, so the report accounts for them.
    let work: std::collections::HashMap<NodeIndex, usize> =
        steps.iter().zip(&kernels).map(|(&n, k)| (n, k.work_floats * 4 * threads + chain_bytes(n))).collect();
    let full_plan = plan::plan(g, &|n| work.get(&n).copied().unwrap_or(0));
    full_plan.verify().map_err(|reason| crate::passes::PassError { pass: "memory plan", reason })?;
    let input_shape = g.node(g.input).shape.clone();
    let output_shape = g.node(g.output).shape.clone();
    let mut pb = ProgramBuilder::new(&input_shape, &output_shape);
    // The arena holds the activations; the runtime allocates the per-thread work buffers beside it.
    let act_floats = act_plan.arena_bytes / 4;
    pb.arena_floats(act_floats);
    let out_owner = act_plan.value.get(&g.output).map(|&b| act_plan.buffers[b].node);
    let buf = |n: NodeIndex| -> Buf {
        let len: usize = g.node(n).shape.iter().product();
        match act_plan.value.get(&n) {
            None => Buf { loc: Loc::Input(0), len },
            Some(&b) if Some(act_plan.buffers[b].node) == out_owner => Buf { loc: Loc::Output(0), len },
            Some(&b) => Buf { loc: Loc::Arena(act_plan.buffers[b].offset / 4), len },
        }
    };
    let mut infos = Vec::with_capacity(steps.len());
    let mut step_kernel = Vec::with_capacity(steps.len());
    for (si, (&n, k)) in steps.iter().zip(kernels.iter_mut()).enumerate() {
        let ins = g.inputs(n);
        let out = buf(n);
        let pushed = pb.steps_len();
        if let Some((ci, sm)) = softmaxes.get_mut(&si) {
            let t = act_plan.work[&n];
            let tmp = Buf { loc: Loc::Arena(act_plan.buffers[t].offset / 4), len: out.len };
            let step = k.step(&codes[owner[si]], &mut pb, buf(ins[0]), None, tmp).map_err(cg)?;
            pb.push(step);
            let mut step = sm.step(&codes[*ci], &mut pb, tmp, None, out).map_err(cg)?;
            step.name = format!("{} (softmax)", g.node(n).name);
            pb.push(step);
        } else if let Some(&t) = act_plan.work.get(&n).filter(|_| chain_bytes(n) > 0) {
            // x0 + x1 + ... + x(k-1) as k - 1 binary steps ending in `out`, alternating with `tmp`.
            let tmp = Buf { loc: Loc::Arena(act_plan.buffers[t].offset / 4), len: out.len };
            let links = ins.len() - 1;
            let mut acc = buf(ins[0]);
            for (j, &x) in ins.iter().enumerate().skip(1) {
                let dst = if (links - j).is_multiple_of(2) { out } else { tmp };
                let mut step = k.step(&codes[owner[si]], &mut pb, acc, Some(buf(x)), dst).map_err(cg)?;
                step.name = format!("{} ({j}/{links})", step.name);
                pb.push(step);
                acc = dst;
            }
        } else {
            let input = buf(ins[0]);
            let input2 = ins.get(1).map(|&i| buf(i));
            let step = k.step(&codes[owner[si]], &mut pb, input, input2, out).map_err(cg)?;
            pb.push(step);
        }
        step_kernel.extend(std::iter::repeat_n(infos.len(), pb.steps_len() - pushed));
        infos.push(KernelInfo {
            node: g.node(n).name.clone(),
            op: match winograd_tile(g, n, o) {
                Some(_) => format!("{} [winograd]", g.node(n).op),
                None if strassen_conv(g, n, &conv_tiling) => format!("{} [strassen]", g.node(n).op),
                None if stem_conv(g, n, &conv_tiling) => format!("{} [winograd stem]", g.node(n).op),
                None => g.node(n).op.to_string(),
            },
            ntasks: k.ntasks,
            work_floats: k.work_floats,
            macs: g.node_macs(n),
            clif: k.clif.take(),
        });
    }
    if let Some((ci, k)) = &mut passthrough {
        let len = k.out_shape.iter().product();
        let step =
            k.step(&codes[*ci], &mut pb, Buf { loc: Loc::Input(0), len }, None, Buf { loc: Loc::Output(0), len });
        pb.push(step.map_err(cg)?);
        step_kernel.push(infos.len());
        infos.push(KernelInfo {
            node: out_node.name.clone(),
            op: "copy".to_string(),
            ntasks: k.ntasks,
            work_floats: 0,
            macs: 0,
            clif: k.clif.clone(),
        });
    }
    pb.keep_alive(Box::new(codes));
    let program = pb.build(pool).map_err(|e| Error::Option(format!("internal error: {e}")))?;
    let stages_ms = vec![("codegen", (t1 - t0).as_secs_f64() * 1e3), ("finalize", t1.elapsed().as_secs_f64() * 1e3)];
    Ok(Compiled {
        program,
        kernels: infos,
        plan: full_plan,
        macs: g.macs(),
        stages_ms,
        step_kernel,
        functions,
        consts_bytes,
        threads,
    })
}

fn supported(op: &Op, input: &[usize]) -> bool {
    match op {
        Op::Conv(_)
        | Op::MaxPool(_)
        | Op::AvgPool(_)
        | Op::GlobalAvgPool
        | Op::GlobalMaxPool
        | Op::Dense { .. }
        | Op::BatchNorm { .. }
        | Op::Relu
        | Op::Add
        | Op::Softmax => true,
        Op::ZeroPad(_) => input.len() == 3,
        // Never a plan step: the model input lives in the caller's memory, flatten aliases its input.
        Op::Input { .. } | Op::Flatten => false,
    }
}

/// Whether a node is a conv that `Session::conv` runs as one level of Strassen (see `codegen::strassen`).
fn strassen_conv(g: &Graph, n: NodeIndex, t: &codegen::ConvTiling) -> bool {
    match &g.node(n).op {
        Op::Conv(c) => codegen::strassen::strassen_applies(c, shape3(&g.node(g.inputs(n)[0]).shape), t),
        _ => false,
    }
}

/// Whether a conv node runs as the polyphase Winograd stem kernel (`codegen::stem`).
fn stem_conv(g: &Graph, n: NodeIndex, t: &codegen::ConvTiling) -> bool {
    match &g.node(n).op {
        Op::Conv(c) => t.stem_winograd && codegen::stem::stem_applies(c, shape3(&g.node(g.inputs(n)[0]).shape)),
        _ => false,
    }
}

/// The Winograd tile size a node is compiled with, `None` for the GEMM kernel: the one decision that
/// the kernel choice, the code-generation cost estimate and the kernel report share. Winograd does 2.25x
/// (2x2 tiles) to 4x (4x4 tiles) fewer multiplications on 3x3 stride-1 layers; on 2x2 maps its transforms
/// cost more than they save (see `winograd_recommended`).
fn winograd_tile(g: &Graph, n: NodeIndex, o: &BackendOptions) -> Option<WinogradTile> {
    match &g.node(n).op {
        Op::Conv(c) if o.winograd => {
            let input = shape3(&g.node(g.inputs(n)[0]).shape);
            codegen::winograd::winograd_recommended(c, input).then(|| WinogradTiling::for_input(input).tile)
        }
        _ => None,
    }
}

fn cg(e: codegen::CodegenError) -> Error {
    Error::Option(format!("internal error in code generation: {e}"))
}

fn kernel_for(
    s: &mut Session,
    g: &Graph,
    opt: &Optimized,
    n: NodeIndex,
    o: &BackendOptions,
    without_softmax: bool,
) -> Result<codegen::Kernel, Error> {
    let node = g.node(n);
    let ins = g.inputs(n);
    let in_shape = &g.node(ins[0]).shape;
    let w = |name: &str| -> Result<&[f32], Error> {
        let t = opt.weights.get(&node.name, name).ok_or_else(|| {
            Error::Option(format!("internal error: no weight `{}.{name}` for the back end", node.name))
        })?;
        t.as_slice()
            .ok_or_else(|| Error::Option(format!("internal error: weight `{}.{name}` is not contiguous", node.name)))
    };
    let k = match &node.op {
        Op::Conv(c) => {
            let bias = if c.bias { Some(w("bias")?) } else { None };
            let input = shape3(in_shape);
            if winograd_tile(g, n, o).is_some() {
                s.conv_winograd(&node.name, c, input, w("kernel")?, bias)
            } else {
                s.conv(&node.name, c, input, w("kernel")?, bias)
            }
        }
        Op::MaxPool(p) => s.max_pool(&node.name, p, shape3(in_shape)),
        Op::AvgPool(p) => s.avg_pool(&node.name, p, shape3(in_shape)),
        Op::GlobalAvgPool => s.global_pool(&node.name, codegen::pool::PoolKind::Avg, shape3(in_shape)),
        Op::GlobalMaxPool => s.global_pool(&node.name, codegen::pool::PoolKind::Max, shape3(in_shape)),
        Op::Dense { units, activation, bias } => {
            let cin = in_shape.iter().product();
            let b = if *bias { Some(w("bias")?) } else { None };
            let act = if without_softmax { Activation::Linear } else { *activation };
            s.dense(&node.name, cin, *units, act, w("kernel")?, b)
        }
        Op::Softmax if in_shape.len() == 1 => s.softmax(&node.name, in_shape[0]),
        Op::Softmax => s.softmax_rows(&node.name, in_shape),
        Op::Relu => s.relu(&node.name, in_shape),
        // Binary: an add of more inputs runs this kernel once per extra input (see `compile`).
        Op::Add => s.add(&node.name, in_shape),
        Op::ZeroPad(p) => s.zero_padding(&node.name, p, shape3(in_shape)),
        Op::BatchNorm { epsilon } => {
            let bn = codegen::elementwise::BatchNormWeights {
                gamma: w("gamma")?,
                beta: w("beta")?,
                moving_mean: w("moving_mean")?,
                moving_variance: w("moving_variance")?,
                epsilon: *epsilon,
            };
            s.batch_norm(&node.name, in_shape, &bn)
        }
        other => return Err(Error::Option(format!("internal error: no kernel for {other}"))),
    }
    .map_err(cg)?;
    if k.out_shape != node.shape {
        return Err(Error::Option(format!(
            "internal error: kernel for `{}` produces {}, the graph says {}",
            node.name,
            fmt_shape(&k.out_shape),
            fmt_shape(&node.shape)
        )));
    }
    Ok(k)
}
