//! resnetc's compiler: a YAML ResNet spec in, a validated graph with shapes and weights out, and from
//! there optimized, planned and compiled to CPU kernels.
//!
//! The pipeline, one stage per module:
//! 1. [`yaml`] — text → a YAML tree that remembers line and column of every value;
//! 2. [`spec`] — blocks expanded, fields type-checked → a flat list of typed nodes;
//! 3. [`graph`] — references resolved, cycles refused, shapes inferred, shortcut projections inserted;
//! 4. [`weights`] — a safetensors file checked against the graph, or the notebook's initialization;
//! 5. [`interp`] — the reference interpreter (with [`reference`], one plain ndarray function per op);
//! 6. [`passes`] — the optimizer: padding and BatchNorm folding, conv/add/relu fusion, verified after
//!    every pass;
//! 7. [`lower`] — kernel selection: the kernel-level program, every node with the algorithm and tiling
//!    that will run (add chains, split softmax), verified;
//! 8. [`plan`] — the one memory plan: value lifetimes, arena offsets, per-thread work buffers;
//! 9. [`backend`] with [`codegen`] — one cranelift kernel per lowered node (shared code for equal plans),
//!    assembled into a runtime program.
//!
//! [`images`] makes an image the model's input as the spec's `resize` and `preprocess` say (as Keras does) and
//! ranks the outputs with the spec's `labels`. Beside the pipeline, [`files`] opens the files a user names
//! (only regular files, up to a bound) and [`npy`] reads input batches from `.npy` files, checking their
//! headers before allocating.
//!
//! [`Model`] runs these stages for library users ([`Model::compile`]: `optimize` → `lower` → `plan` →
//! `backend::compile`); every error a user can cause comes back as an [`Error`] whose Display is
//! `FILE:LINE:COL: error: ...` lines.

pub mod backend;
pub mod codegen;
pub mod diag;
pub mod files;
pub mod graph;
pub mod images;
pub mod interp;
pub mod keras;
pub mod lower;
pub mod npy;
pub mod ops;
pub mod passes;
pub mod plan;
pub mod reference;
pub mod report;
pub mod spec;
pub mod weights;
pub mod yaml;

/// The `image` crate, whose [`image::DynamicImage`] [`Model::preprocess`] and
/// [`backend::Compiled::predict_images`] take (decode with [`images::read_image`] or `image::open`).
pub use image;

use diag::Diagnostics;
use graph::{Graph, Projection};
use ndarray::{ArrayD, ArrayViewD};
use spec::{ProjectionPolicy, Spec};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weights::Weights;

/// Errors a library user can get. Display gives the full, located messages, and so does Debug: a program
/// whose `main` returns `Result<(), Box<dyn std::error::Error>>` shows the same text as the CLI.
#[derive(thiserror::Error)]
pub enum Error {
    /// The spec or the weights are wrong; every problem found, warnings included.
    #[error("{0}")]
    Invalid(Diagnostics),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A file that cannot be used as it is (an input batch, a weights file): not a regular file, too large,
    /// or its contents disagree with its header.
    #[error("{path}: error: {reason}")]
    File { path: PathBuf, reason: String },
    /// A batch whose shape does not fit the model.
    #[error("{}", input_shape_message(expected, found))]
    InputShape { expected: Vec<usize>, found: Vec<usize> },
    /// A bad option value (e.g. an input shape override that is not H,W,C).
    #[error("{0}")]
    Option(String),
    /// An image that cannot be read or decoded, or cannot feed this model (the message says why, not which file).
    #[error("{0}")]
    Image(String),
    /// The runtime could not do what was asked (e.g. start the threads of its pool).
    #[error("error: {0}")]
    Runtime(#[from] resnetc_runtime::RuntimeError),
    /// Ops left after optimization that the back end has no kernel for: `(node, op)` each.
    #[error("error: the JIT back end has no kernel for {} node(s) left after optimization: {}; use --backend reference", .0.len(), .0.iter().map(|(n, op)| format!("`{n}` ({op})")).collect::<Vec<_>>().join(", "))]
    Unsupported(Vec<(String, String)>),
    /// A compiler bug caught by a consistency check, with the stage that found it.
    #[error("internal error in stage `{stage}` (a compiler bug): {reason}")]
    Internal { stage: &'static str, reason: String },
}

impl Error {
    pub(crate) fn internal(stage: &'static str, reason: impl Into<String>) -> Error {
        Error::Internal { stage, reason: reason.into() }
    }
}

impl From<passes::PassError> for Error {
    fn from(e: passes::PassError) -> Error {
        Error::Internal { stage: e.pass, reason: e.to_string() }
    }
}

impl From<lower::LowerError> for Error {
    fn from(e: lower::LowerError) -> Error {
        match e {
            lower::LowerError::Unsupported(nodes) => Error::Unsupported(nodes),
            lower::LowerError::Internal(reason) => Error::Internal { stage: "lower", reason },
        }
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl From<resnetc_runtime::pool::PoolError> for Error {
    fn from(e: resnetc_runtime::pool::PoolError) -> Self {
        Error::Runtime(e.into())
    }
}

fn input_shape_message(expected: &[usize], found: &[usize]) -> String {
    let dims = |s: &[usize]| s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
    let want = format!("[N, {}] (NHWC, any batch size N >= 1)", dims(expected));
    if found.len() == expected.len() + 1 && found[0] == 0 && found[1..] == *expected {
        format!("the input is an empty batch (shape [{}]): N must be at least 1; expected {want}", dims(found))
    } else {
        format!("the input has shape [{}], expected {want}", dims(found))
    }
}

/// The most bytes of activations [`Model::run_reference`] computes at once.
pub const REFERENCE_CHUNK_BYTES: usize = 256 << 20;

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// A safetensors file with Keras-named weights; without one the notebook's initialization is used.
    pub weights: Option<PathBuf>,
    /// Overrides the spec's `[H, W, C]` input shape.
    pub input_shape: Option<Vec<usize>>,
    /// Overrides the spec's `shortcut_projection` policy.
    pub projection: Option<ProjectionPolicy>,
    /// Seed of the glorot initialization (used without a weights file).
    pub seed: u64,
    /// The front end's limits (spec size, nodes, block depth, name length, the model's parameters and
    /// activations); `None`: the built-in ones,
    /// raised by the `RESNETC_MAX_*` environment variables (see [`spec::Limits`]).
    pub limits: Option<spec::Limits>,
}

impl Options {
    /// The limits in force: [`Options::limits`], or the built-in ones with the environment's overrides.
    pub fn limits(&self) -> Result<spec::Limits, Error> {
        match self.limits {
            Some(l) => Ok(l),
            None => spec::Limits::from_env().map_err(Error::Option),
        }
    }
}

/// A loaded, validated model: its spec, graph (with shapes) and weights.
#[derive(Clone, Debug)]
pub struct Model {
    pub spec: Spec,
    pub graph: Graph,
    pub weights: Weights,
    /// Shortcut projections the compiler inserted.
    pub projections: Vec<Projection>,
    /// Warnings found while loading (unused nodes, unused weight tensors).
    pub warnings: Diagnostics,
    /// Milliseconds spent in each loading stage.
    pub stages_ms: Vec<(&'static str, f64)>,
}

/// The optimized model: what the lowering stage turns into kernels.
#[derive(Clone, Debug)]
pub struct Optimized {
    pub graph: Graph,
    /// The optimizer's own weights (folded tensors included); the model's weights are untouched.
    pub weights: Weights,
    pub report: passes::OptReport,
    pub stages_ms: Vec<(&'static str, f64)>,
}

/// The lowered and planned model: what the back end emits.
#[derive(Clone, Debug)]
pub struct Planned {
    pub lowered: lower::Lowered,
    pub plan: plan::Plan,
    pub stages_ms: Vec<(&'static str, f64)>,
}

impl Optimized {
    /// Runs the optimized graph on the reference interpreter.
    pub fn run_reference(&self, x: ArrayViewD<f32>) -> ArrayD<f32> {
        interp::run(&self.graph, &self.weights, x)
    }

    /// The `lower` and `plan` stages for the back end's options: each kernel's algorithm and tiling, then
    /// the memory plan, both verified.
    pub fn lower(&self, o: &backend::BackendOptions) -> Result<Planned, Error> {
        let t0 = std::time::Instant::now();
        o.isa.check_supported().map_err(|e| Error::Option(format!("error: --isa {}: {e}", o.isa)))?;
        if o.batch == 0 || o.batch > backend::MAX_BATCH_GROUP {
            return Err(Error::Option(format!(
                "error: the batch group must be 1 to {} items, found {}",
                backend::MAX_BATCH_GROUP,
                o.batch
            )));
        }
        let rules = lower::Rules {
            winograd: o.winograd,
            items: o.batch,
            ..lower::Rules::for_target(o.isa, o.resolved_threads())
        };
        let lowered = lower::lower(&self.graph, &rules)?;
        let t1 = std::time::Instant::now();
        let plan = plan::plan(&lowered);
        plan.verify().map_err(|reason| Error::internal("plan", reason))?;
        let stages_ms = vec![("lower", (t1 - t0).as_secs_f64() * 1e3), ("plan", t1.elapsed().as_secs_f64() * 1e3)];
        Ok(Planned { lowered, plan, stages_ms })
    }
}

/// Parses and checks a spec without loading weights: the graph, or every problem found.
pub fn check(file: &str, text: &[u8], opts: &Options) -> (Option<(Spec, Graph, Vec<Projection>)>, Diagnostics) {
    let file: Arc<str> = file.into();
    if let Some(s) = &opts.input_shape {
        if s.len() != 3 || s.iter().any(|&d| d == 0 || d > ops::MAX_DIM) {
            let d = diag::Diagnostic::error(
                None,
                format!("the input shape override must be H,W,C with positive sizes, found {s:?}"),
            );
            return (None, Diagnostics(vec![d]));
        }
    }
    let limits = match opts.limits() {
        Ok(l) => l,
        Err(e) => return (None, Diagnostics(vec![diag::Diagnostic::error(None, e.to_string())])),
    };
    let (spec, mut diags) = spec::parse_spec(&file, text, opts.input_shape.as_deref(), &limits);
    let Some(spec) = spec else {
        diags.sort();
        return (None, diags);
    };
    let (g, rep) = graph::build(&spec, opts.projection);
    diags.extend(rep.diagnostics);
    if let Some(g) = &g {
        spec.io.check(&g.node(g.input).shape, &g.node(g.output).shape, &mut diags);
        diags.0.extend(graph::check_model_size(g, &limits));
    }
    diags.sort();
    match g {
        Some(g) if !diags.has_errors() => (Some((spec, g, rep.projections)), diags),
        _ => (None, diags),
    }
}

/// Reads a spec file within the limits of `opts`: a path that is not a regular file (a directory,
/// /dev/zero, a fifo) or a file larger than the limit is refused before it is read.
pub fn read_spec(path: &Path, opts: &Options) -> Result<Vec<u8>, Error> {
    spec::read_spec_file(path, &opts.limits()?).map_err(|source| Error::Io { path: path.to_owned(), source })
}

impl Model {
    /// Loads a spec file (and the weights file named in `opts`, if any).
    pub fn from_file(path: impl AsRef<Path>, opts: &Options) -> Result<Model, Error> {
        let path = path.as_ref();
        let bytes = read_spec(path, opts)?;
        Model::from_bytes(&path.display().to_string(), &bytes, opts)
    }

    /// Loads a spec from text; `name` is the file name used in messages.
    pub fn from_str(name: &str, text: &str, opts: &Options) -> Result<Model, Error> {
        Model::from_bytes(name, text.as_bytes(), opts)
    }

    pub fn from_bytes(name: &str, bytes: &[u8], opts: &Options) -> Result<Model, Error> {
        let t0 = std::time::Instant::now();
        let (checked, mut diags) = check(name, bytes, opts);
        let t1 = std::time::Instant::now();
        let Some((spec, graph, projections)) = checked else { return Err(Error::Invalid(diags)) };
        let weights = match &opts.weights {
            Some(p) => {
                let (w, d) = weights::load_safetensors(p, &graph);
                diags.extend(d);
                match w {
                    Some(w) => w,
                    None => return Err(Error::Invalid(diags)),
                }
            }
            None => weights::init_glorot(&graph, opts.seed),
        };
        let stages_ms = vec![("check", (t1 - t0).as_secs_f64() * 1e3), ("weights", t1.elapsed().as_secs_f64() * 1e3)];
        Ok(Model { spec, graph, weights, projections, warnings: diags, stages_ms })
    }

    /// Optimizes, plans and JIT-compiles the model into a runnable [`backend::Compiled`].
    pub fn compile(&self, o: &backend::BackendOptions) -> Result<backend::Compiled, Error> {
        self.compile_weights(self.weights.clone(), o)
    }

    /// [`Model::compile`] with `weights` in place of the model's: when the model's weights are not needed
    /// afterwards, move them in (`std::mem::take(&mut model.weights)`), and the optimizer folds them in
    /// place instead of copying them (ResNet-50: ~100 MB less fresh memory to fill; see
    /// [`Model::optimize_weights`]).
    pub fn compile_weights(&self, weights: Weights, o: &backend::BackendOptions) -> Result<backend::Compiled, Error> {
        let opt = self.optimize_weights(weights, None)?;
        let planned = opt.lower(o)?;
        let mut c = backend::compile(&planned.lowered, &planned.plan, &opt.weights, o)?;
        c.io = self.spec.io.clone();
        let mut stages = self.stages_ms.clone();
        stages.extend(opt.stages_ms.iter().copied());
        stages.extend(planned.stages_ms.iter().copied());
        stages.extend(c.stages_ms.iter().copied());
        c.stages_ms = stages;
        Ok(c)
    }

    /// Runs the optimizer. `dump_after` captures the graph after that pass.
    pub fn optimize(&self, dump_after: Option<&str>) -> Result<Optimized, Error> {
        self.optimize_weights(self.weights.clone(), dump_after)
    }

    /// [`Model::optimize`] with `weights` in place of the model's (e.g. moved out of it with
    /// `std::mem::take` when the model's weights are not needed afterwards: tensors that only `weights`
    /// holds are then folded in place).
    pub fn optimize_weights(&self, weights: Weights, dump_after: Option<&str>) -> Result<Optimized, Error> {
        let t0 = std::time::Instant::now();
        let (graph, weights, mut report) = passes::optimize(&self.graph, weights, dump_after)?;
        // That pass ran in the front end (an add's shape depends on it): report what it inserted there.
        report.rewrites.insert("shortcut_projections", self.projections.len());
        let stages_ms = vec![("optimize", t0.elapsed().as_secs_f64() * 1e3)];
        Ok(Optimized { graph, weights, report, stages_ms })
    }

    /// The per-item input shape `[H, W, C]`.
    pub fn input_shape(&self) -> &[usize] {
        &self.graph.node(self.graph.input).shape
    }

    /// The per-item output shape.
    pub fn output_shape(&self) -> &[usize] {
        &self.graph.node(self.graph.output).shape
    }

    /// Checks that `x` is `[N, H, W, C]` for this model.
    pub fn check_input(&self, x: &ArrayViewD<f32>) -> Result<(), Error> {
        let s = x.shape();
        if s.len() != 4 || &s[1..] != self.input_shape() || s[0] == 0 {
            return Err(Error::InputShape { expected: self.input_shape().to_vec(), found: s.to_vec() });
        }
        Ok(())
    }

    /// Runs the reference interpreter on an NHWC batch of any size. Large batches run in chunks of items
    /// whose activations total at most [`REFERENCE_CHUNK_BYTES`] (the interpreter holds a whole chunk's
    /// activations at once: 43 MB per image for ResNet-50).
    pub fn run_reference(&self, x: ArrayViewD<f32>) -> Result<ArrayD<f32>, Error> {
        self.check_input(&x)?;
        let per_item: usize = self.graph.g.node_weights().map(|n| 4 * n.shape.iter().product::<usize>()).sum();
        let chunk = (REFERENCE_CHUNK_BYTES / per_item.max(1)).max(1);
        if x.shape()[0] <= chunk {
            return Ok(interp::run(&self.graph, &self.weights, x));
        }
        let parts: Vec<ArrayD<f32>> =
            x.axis_chunks_iter(ndarray::Axis(0), chunk).map(|c| interp::run(&self.graph, &self.weights, c)).collect();
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        Ok(ndarray::concatenate(ndarray::Axis(0), &views).expect("chunks of one model's outputs"))
    }
}
