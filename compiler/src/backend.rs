//! The back end: the optimized, planned graph → one JIT kernel per node → a runtime [`Program`].
//!
//! Input is an [`Optimized`] model (fused graph, folded weights, memory plan). Each kernel node is
//! compiled by a [`codegen::Session`] (one cranelift module for the whole model), its weights packed
//! into the program's constants, and its buffers placed where the plan put them: the model input in the
//! caller's memory, the output node's value in the caller's output, everything else in the arena.
//! Output is a [`Compiled`] model: the runtime program (which keeps the machine code alive), plus what
//! was generated, for reports and `--emit clif`.

use crate::codegen::{self, Session, SessionOptions};
use crate::graph::Graph;
use crate::ops::{fmt_shape, Op};
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
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions { threads: 0, keep_ir: false, verify: cfg!(debug_assertions) }
    }
}

/// What was generated for one node.
#[derive(Clone, Debug)]
pub struct KernelInfo {
    pub node: String,
    pub op: String,
    pub ntasks: usize,
    pub work_floats: usize,
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
    let mut session = Session::with_options(SessionOptions {
        verify: o.verify,
        keep_ir: o.keep_ir,
        ..SessionOptions::default()
    })
    .map_err(cg)?;
    let mut kernels = Vec::with_capacity(steps.len());
    for &n in &steps {
        kernels.push(kernel_for(&mut session, g, opt, n)?);
    }
    let t1 = std::time::Instant::now();
    let code = session.finish().map_err(cg)?;
    let pool = Arc::new(if o.threads == 0 { ThreadPool::with_all_cores() } else { ThreadPool::new(o.threads) });
    let threads = pool.threads();
    // Re-plan with each kernel's per-thread work buffers, so the report accounts for them.
    let work: std::collections::HashMap<NodeIndex, usize> =
        steps.iter().zip(&kernels).map(|(&n, k)| (n, k.work_floats * 4 * threads)).collect();
    let full_plan = plan::plan(g, &|n| work.get(&n).copied().unwrap_or(0));
    full_plan.verify().map_err(|reason| crate::passes::PassError { pass: "memory plan", reason })?;
    let input_shape = g.node(g.input).shape.clone();
    let output_shape = g.node(g.output).shape.clone();
    let mut pb = ProgramBuilder::new(&input_shape, &output_shape);
    // The arena holds the activations; the runtime allocates the per-thread work buffers beside it.
    let act_floats = opt.plan.arena_bytes / 4;
    pb.arena_floats(act_floats);
    let out_owner = opt.plan.value.get(&g.output).map(|&b| opt.plan.buffers[b].node);
    let buf = |n: NodeIndex| -> Buf {
        let len: usize = g.node(n).shape.iter().product();
        match opt.plan.value.get(&n) {
            None => Buf { loc: Loc::Input(0), len },
            Some(&b) if Some(opt.plan.buffers[b].node) == out_owner => Buf { loc: Loc::Output(0), len },
            Some(&b) => Buf { loc: Loc::Arena(opt.plan.buffers[b].offset / 4), len },
        }
    };
    let mut infos = Vec::with_capacity(steps.len());
    for (&n, k) in steps.iter().zip(&kernels) {
        let ins = g.inputs(n);
        let input = buf(ins[0]);
        let input2 = ins.get(1).map(|&i| buf(i));
        let step = k.step(&code, &mut pb, input, input2, buf(n)).map_err(cg)?;
        pb.push(step);
        infos.push(KernelInfo {
            node: g.node(n).name.clone(),
            op: g.node(n).op.to_string(),
            ntasks: k.ntasks,
            work_floats: k.work_floats,
            clif: k.clif.clone(),
        });
    }
    pb.keep_alive(Box::new(code));
    let program = pb.build(pool).map_err(|e| Error::Option(format!("internal error: {e}")))?;
    let stages_ms = vec![
        ("codegen", (t1 - t0).as_secs_f64() * 1e3),
        ("finalize", t1.elapsed().as_secs_f64() * 1e3),
    ];
    Ok(Compiled { program, kernels: infos, plan: full_plan, macs: g.macs(), stages_ms, threads })
}

fn supported(op: &Op, input: &[usize]) -> bool {
    match op {
        Op::Conv(_) | Op::MaxPool(_) | Op::AvgPool(_) | Op::GlobalAvgPool | Op::GlobalMaxPool | Op::Dense { .. } => true,
        // The softmax kernel normalizes one vector: only over vectors for now.
        Op::Softmax => input.len() == 1,
        _ => false,
    }
}

fn cg(e: codegen::CodegenError) -> Error {
    Error::Option(format!("internal error in code generation: {e}"))
}

fn kernel_for(s: &mut Session, g: &Graph, opt: &Optimized, n: NodeIndex) -> Result<codegen::Kernel, Error> {
    let node = g.node(n);
    let ins = g.inputs(n);
    let in_shape = &g.node(ins[0]).shape;
    let w = |name: &str| -> Result<&[f32], Error> {
        let t = opt.weights.get(&node.name, name).ok_or_else(|| {
            Error::Option(format!("internal error: no weight `{}.{name}` for the back end", node.name))
        })?;
        t.as_slice().ok_or_else(|| Error::Option(format!("internal error: weight `{}.{name}` is not contiguous", node.name)))
    };
    let k = match &node.op {
        Op::Conv(c) => {
            let bias = if c.bias { Some(w("bias")?) } else { None };
            s.conv(&node.name, c, shape3(in_shape), w("kernel")?, bias)
        }
        Op::MaxPool(p) => s.max_pool(&node.name, p, shape3(in_shape)),
        Op::AvgPool(p) => s.avg_pool(&node.name, p, shape3(in_shape)),
        Op::GlobalAvgPool => s.global_pool(&node.name, codegen::pool::PoolKind::Avg, shape3(in_shape)),
        Op::GlobalMaxPool => s.global_pool(&node.name, codegen::pool::PoolKind::Max, shape3(in_shape)),
        Op::Dense { units, activation, bias } => {
            let cin = in_shape.iter().product();
            let b = if *bias { Some(w("bias")?) } else { None };
            s.dense(&node.name, cin, *units, *activation, w("kernel")?, b)
        }
        Op::Softmax => s.softmax(&node.name, in_shape.iter().product()),
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
