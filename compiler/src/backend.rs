//! The back end: the lowered program and its memory plan → machine code → a runtime [`Program`].
//!
//! What enters: a [`Lowered`] program (every kernel's plan decided by `crate::lower`), its memory
//! [`Plan`] (`crate::plan`) and the optimizer's weights. Two steps, nothing else is decided here:
//!
//! 1. [`emit`]: every kernel is compiled by a [`codegen::Session`] with the layer's weights packed into its
//!    constants — on all cores, each worker with its own session (cranelift module, reused contexts) taking
//!    the next kernel from a shared list, and kernels with equal plans sharing one function
//!    ([`codegen::CodeCache`]);
//! 2. [`assemble`]: one runtime step per kernel, its values placed where the plan put them (the model
//!    input and output in the caller's memory, everything else in the arena).
//!
//! What leaves: a [`Compiled`] model: the runtime program (which keeps the machine code alive), plus a
//! description of every kernel for reports and `--emit clif`.

use crate::codegen::x86::Isa;
use crate::codegen::{self, JitCode, LayerWeights, Session, SessionOptions};
use crate::lower::{Algorithm, KernelNode, KernelOp, Lowered};
use crate::plan::{Place, Plan};
use crate::weights::Weights;
use crate::Error;
use ndarray::{ArrayD, ArrayViewD};
use resnetc_runtime::{Buf, Loc, Program, ProgramBuilder, RuntimeError, ThreadPool};
use std::sync::Arc;

/// How to compile.
#[derive(Clone, Debug)]
pub struct BackendOptions {
    /// Threads of the runtime pool (0 = all cores).
    pub threads: usize,
    /// Keep each kernel's cranelift IR (for `--emit clif`).
    pub keep_ir: bool,
    /// Keep each kernel's machine code and the micro-kernels' disassembly (for `--emit asm`).
    pub keep_asm: bool,
    /// Run cranelift's IR verifier on every kernel.
    pub verify: bool,
    /// Use Winograd kernels for the 3x3 stride-1 convolutions where they are faster (maps of 4x4 and up), and
    /// for 7x7 stride-2 convolutions of 1-4 channels (the stem, `codegen::stem`).
    pub winograd: bool,
    /// The CPU tier (`--isa`): AVX-512 or AVX2 micro-kernels, or cranelift's portable f32x4 kernels. The
    /// default is the widest this CPU runs ([`Isa::detect`]); asking for one it lacks is an error.
    pub isa: Isa,
    /// The batch group: convolution and dense kernels compute this many items per call, so that a batch
    /// streams each weight once per group; a batch runs in whole groups (the last one padded). 1 (the
    /// default) for latency; the batch size you run for throughput. At most [`MAX_BATCH_GROUP`].
    pub batch: usize,
}

/// The largest batch group (`BackendOptions::batch`): larger ones gain nothing (16 items already reuse
/// every weight 16 times) and cost memory.
pub const MAX_BATCH_GROUP: usize = 64;

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            threads: 0,
            keep_ir: false,
            keep_asm: false,
            verify: cfg!(debug_assertions),
            winograd: true,
            isa: Isa::detect(),
            batch: 1,
        }
    }
}

impl BackendOptions {
    /// The thread count the kernels are planned for: `threads`, or all cores when 0.
    pub fn resolved_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// What was generated for one kernel.
#[derive(Clone, Debug)]
pub struct KernelInfo {
    /// The kernel's name (the graph node's, with a suffix for the extra kernels of a node).
    pub name: String,
    /// The graph node it computes.
    pub node: String,
    /// The op: conv, max_pool, add, ...
    pub op: &'static str,
    pub algorithm: Algorithm,
    /// The algorithm's tiling in words (empty for plain kernels).
    pub tiling: String,
    pub ntasks: usize,
    pub work_floats: usize,
    /// Multiply-accumulates per image of the node (for GFLOP/s figures).
    pub macs: u64,
    /// Bytes of packed weights the kernel reads.
    pub packed_bytes: usize,
    pub clif: Option<String>,
    /// The kernel's machine code as cranelift lists it, if `keep_asm`.
    pub asm: Option<String>,
}

/// A compiled model: run it on NHWC batches of any size, from any number of threads.
pub struct Compiled {
    pub program: Program,
    /// One per program step, in order.
    pub kernels: Vec<KernelInfo>,
    /// The memory plan the program runs with.
    pub plan: Plan,
    /// Per-image multiply-accumulates, for GFLOP/s figures.
    pub macs: u64,
    pub stages_ms: Vec<(&'static str, f64)>,
    /// Distinct functions compiled for the kernels: kernels with equal plans share one.
    pub functions: usize,
    /// Bytes of packed constants (weights in the kernels' layouts: Winograd and Strassen ones are larger
    /// than the model's weights) that every inference reads.
    pub consts_bytes: usize,
    /// With `keep_asm`: every wide micro-kernel the kernels call, as (its description, its disassembly).
    pub ukernels: Vec<(String, String)>,
    isa: Isa,
    /// The spec's image fields (preprocessing, resizing, labels), for [`Compiled::predict_images`]; set by
    /// [`crate::Model::compile`].
    pub io: crate::spec::io::ImageIo,
}

impl Compiled {
    /// Runs the model on `[N, H, W, C]`.
    pub fn run(&self, x: ArrayViewD<f32>) -> Result<ArrayD<f32>, Error> {
        let shape = x.shape().to_vec();
        let bad_shape = || Error::InputShape { expected: self.program.input_shape().to_vec(), found: shape.clone() };
        if shape.len() != 4 || shape[1..] != *self.program.input_shape() || shape[0] == 0 {
            return Err(bad_shape());
        }
        self.program.run(x).map_err(|e| match e {
            RuntimeError::Shape { .. } => bad_shape(),
            e => Error::internal("run", e.to_string()),
        })
    }

    /// Threads each kernel is split over.
    pub fn threads(&self) -> usize {
        self.program.threads()
    }

    /// The CPU tier the kernels were generated for.
    pub fn isa(&self) -> Isa {
        self.isa
    }
}

/// Compiles every kernel of `l` with `weights` and assembles the program with the memory plan `plan`.
pub fn compile(l: &Lowered, plan: &Plan, weights: &Weights, o: &BackendOptions) -> Result<Compiled, Error> {
    let t0 = std::time::Instant::now();
    let session = SessionOptions { verify: o.verify, keep_ir: o.keep_ir, keep_asm: o.keep_asm };
    let (kernels, codes, region) = emit(l, weights, &session)?;
    let ukernels = match (&region, o.keep_asm) {
        (Some(r), true) => r
            .gemms()
            .into_iter()
            .map(|(uk, g)| {
                let text = r.bytes(g).map_or_else(|e| e.to_string(), |b| codegen::x86::disassemble(b, g.addr() as u64));
                (format!("{uk:?}"), text)
            })
            .collect(),
        _ => vec![],
    };
    let t1 = std::time::Instant::now();
    let infos = l
        .kernels
        .iter()
        .zip(&kernels)
        .map(|(k, c)| KernelInfo {
            name: k.name.clone(),
            node: k.node.clone(),
            op: k.op.kind(),
            algorithm: k.op.algorithm(),
            tiling: k.op.tiling(),
            ntasks: c.ntasks,
            work_floats: c.work_floats,
            macs: k.macs,
            packed_bytes: c.consts.len() * 4,
            clif: c.clif.clone(),
            asm: c.asm.clone(),
        })
        .collect();
    let consts_bytes = kernels.iter().map(|k| k.consts.len() * 4).sum();
    let functions = kernels.iter().map(|k| k.id).collect::<std::collections::HashSet<_>>().len();
    let program = assemble(l, plan, kernels, codes)?;
    let stages_ms = vec![("codegen", (t1 - t0).as_secs_f64() * 1e3), ("assemble", t1.elapsed().as_secs_f64() * 1e3)];
    Ok(Compiled {
        program,
        kernels: infos,
        plan: plan.clone(),
        macs: l.macs(),
        stages_ms,
        functions,
        consts_bytes,
        ukernels,
        isa: l.rules.isa,
        io: Default::default(),
    })
}

/// The layer weights a kernel packs, from the optimizer's weights.
fn layer_weights<'a>(k: &KernelNode, w: &'a Weights) -> Result<LayerWeights<'a>, Error> {
    let get = |name: &str| -> Result<&'a [f32], Error> {
        let t = w.get(&k.node, name).ok_or_else(|| {
            Error::internal("codegen", format!("no weight `{}.{name}` for kernel `{}`", k.node, k.name))
        })?;
        t.as_slice().ok_or_else(|| Error::internal("codegen", format!("weight `{}.{name}` is not contiguous", k.node)))
    };
    let has_bias = match &k.op {
        KernelOp::Conv(a) => a.epilogue().bias,
        KernelOp::Dense(crate::lower::DenseAlgo::Gemv(d)) => d.bias,
        KernelOp::Dense(crate::lower::DenseAlgo::Gemm(p)) => p.epi.bias,
        _ => false,
    };
    Ok(match &k.op {
        KernelOp::Conv(_) | KernelOp::Dense(_) => {
            LayerWeights::kernel(get("kernel")?, if has_bias { Some(get("bias")?) } else { None })
        }
        KernelOp::BatchNorm(bn) => LayerWeights {
            batch_norm: Some(codegen::family::BatchNormWeights {
                gamma: get("gamma")?,
                beta: get("beta")?,
                moving_mean: get("moving_mean")?,
                moving_variance: get("moving_variance")?,
                epsilon: bn.epsilon,
            }),
            ..Default::default()
        },
        _ => LayerWeights::default(),
    })
}

/// Compiles every kernel of `l` (see the module docs); returns them in program order, the code of every
/// session (a kernel may run code another worker's session compiled: resolve it with the one that owns it)
/// and the code region of the micro-kernels they call, if any.
pub fn emit(
    l: &Lowered,
    weights: &Weights,
    session: &SessionOptions,
) -> Result<(Vec<codegen::Kernel>, Vec<JitCode>, Option<Arc<codegen::x86::CodeRegion>>), Error> {
    let n = l.kernels.len();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4).min(n.max(1));
    // Largest first (packing dominates: ~4 ms of cranelift per function is about what packing a million
    // floats takes), each worker taking the next kernel when it is free: estimates are rough (a static split
    // by them left one worker idle for ~60-100 ms of ResNet-50's ~250). Repeats of a plan (the same code)
    // go after every first occurrence, so that the worker taking one finds its code compiled and only packs
    // its weights, whichever worker compiled it.
    let mut seen = std::collections::HashSet::new();
    let repeat: Vec<bool> = l.kernels.iter().map(|k| !seen.insert(format!("{:?}", k.op))).collect();
    let cost = |i: usize| l.kernels[i].op.family().packed_floats() + 1_000_000;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (repeat[i], std::cmp::Reverse(cost(i))));
    let cache = codegen::CodeCache::default();
    let next = std::sync::atomic::AtomicUsize::new(0);
    type Done = (Vec<(usize, codegen::Kernel)>, JitCode);
    let results: Vec<Result<Done, Error>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..workers)
            .map(|_| {
                let (order, next, cache) = (&order, &next, &cache);
                sc.spawn(move || -> Result<Done, Error> {
                    let cg = |e: codegen::CodegenError| Error::internal("codegen", e.to_string());
                    let mut s = Session::with_cache(session.clone(), cache).map_err(cg)?;
                    let mut done = Vec::new();
                    while let Some(&i) = order.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                        let k = &l.kernels[i];
                        let w = layer_weights(k, weights)?;
                        done.push((i, s.compile(&k.name, k.op.family(), &w).map_err(cg)?));
                    }
                    Ok((done, s.finish().map_err(cg)?))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(Error::internal("codegen", "a code generation thread panicked"))))
            .collect()
    });
    let mut slots: Vec<Option<codegen::Kernel>> = (0..n).map(|_| None).collect();
    let mut codes = Vec::with_capacity(workers);
    for r in results {
        let (done, code) = r?;
        for (i, k) in done {
            slots[i] = Some(k);
        }
        codes.push(code);
    }
    let kernels = slots
        .into_iter()
        .enumerate()
        .map(|(i, k)| k.ok_or_else(|| Error::internal("codegen", format!("kernel {i} was not compiled"))))
        .collect::<Result<_, _>>()?;
    Ok((kernels, codes, cache.region()))
}

/// One runtime step per kernel, in order, with its values where `plan` put them; the program keeps `codes`.
pub fn assemble(
    l: &Lowered,
    plan: &Plan,
    mut kernels: Vec<codegen::Kernel>,
    codes: Vec<JitCode>,
) -> Result<Program, Error> {
    let pool = Arc::new(ThreadPool::try_new(l.rules.threads)?);
    let mut pb = ProgramBuilder::new(&l.values[l.input].shape, &l.values[l.output].shape);
    pb.arena_floats(plan.arena_bytes / 4).group(l.rules.items);
    let buf = |v: usize| {
        let len = l.values[v].len();
        match plan.places[v] {
            Place::Input => Buf { loc: Loc::Input(0), len },
            Place::Output => Buf { loc: Loc::Output(0), len },
            Place::Arena(offset) => Buf { loc: Loc::Arena(offset / 4), len },
        }
    };
    for (k, c) in l.kernels.iter().zip(kernels.iter_mut()) {
        let code = codes
            .iter()
            .find(|code| code.owns(c.id))
            .ok_or_else(|| Error::internal("assemble", format!("no code for kernel `{}`", k.name)))?;
        let step = c
            .step(code, &mut pb, buf(k.inputs[0]), k.inputs.get(1).map(|&v| buf(v)), buf(k.output))
            .map_err(|e| Error::internal("assemble", e.to_string()))?;
        pb.push(step);
    }
    pb.keep_alive(Box::new(codes));
    pb.build(pool).map_err(|e| Error::internal("assemble", e.to_string()))
}
