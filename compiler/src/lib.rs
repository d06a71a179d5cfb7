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
//! 7. [`plan`] — kernel order, activation lifetimes and arena offsets;
//! 8. [`codegen`] and [`backend`] — one cranelift kernel per node, assembled into a runtime program.
//!
//! [`Model`] runs these stages for library users; every error a user can cause comes back as an
//! [`Error`] whose Display is `FILE:LINE:COL: error: ...` lines.

pub mod backend;
pub mod codegen;
pub mod diag;
pub mod graph;
pub mod interp;
pub mod keras;
pub mod ops;
pub mod passes;
pub mod plan;
pub mod reference;
pub mod report;
pub mod spec;
pub mod weights;
pub mod yaml;

use diag::Diagnostics;
use graph::{Graph, Projection};
use ndarray::{ArrayD, ArrayViewD};
use spec::{ProjectionPolicy, Spec};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use weights::Weights;

/// Errors a library user can get. Display gives the full, located messages.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec or the weights are wrong; every problem found, warnings included.
    #[error("{0}")]
    Invalid(Diagnostics),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A batch whose shape does not fit the model.
    #[error("the input has shape {found:?}, expected [N, {}] (NHWC, any batch size N)", expected.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))]
    InputShape { expected: Vec<usize>, found: Vec<usize> },
    /// A bad option value (e.g. an input shape override that is not H,W,C).
    #[error("{0}")]
    Option(String),
    /// A compiler bug caught by a consistency check.
    #[error(transparent)]
    Internal(#[from] passes::PassError),
}

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

/// The optimized, planned model: what the back end turns into kernels.
#[derive(Clone, Debug)]
pub struct Optimized {
    pub graph: Graph,
    /// The optimizer's own weights (folded tensors included); the model's weights are untouched.
    pub weights: Weights,
    pub report: passes::OptReport,
    pub plan: plan::Plan,
    pub stages_ms: Vec<(&'static str, f64)>,
}

impl Optimized {
    /// Runs the optimized graph on the reference interpreter.
    pub fn run_reference(&self, x: ArrayViewD<f32>) -> ArrayD<f32> {
        interp::run(&self.graph, &self.weights, x)
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
    let (spec, mut diags) = spec::parse_spec(&file, text, opts.input_shape.as_deref());
    let Some(spec) = spec else {
        diags.sort();
        return (None, diags);
    };
    let (g, rep) = graph::build(&spec, opts.projection);
    diags.extend(rep.diagnostics);
    diags.sort();
    match g {
        Some(g) if !diags.has_errors() => (Some((spec, g, rep.projections)), diags),
        _ => (None, diags),
    }
}

impl Model {
    /// Loads a spec file (and the weights file named in `opts`, if any).
    pub fn from_file(path: impl AsRef<Path>, opts: &Options) -> Result<Model, Error> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
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
        let mut c = backend::compile(&opt, o)?;
        let mut stages = self.stages_ms.clone();
        stages.extend(opt.stages_ms.iter().copied());
        stages.extend(c.stages_ms.iter().copied());
        c.stages_ms = stages;
        Ok(c)
    }

    /// Runs the optimizer and the memory planner. `dump_after` captures the graph after that pass.
    pub fn optimize(&self, dump_after: Option<&str>) -> Result<Optimized, Error> {
        self.optimize_weights(self.weights.clone(), dump_after)
    }

    /// [`Model::optimize`] with `weights` in place of the model's (e.g. moved out of it with
    /// `std::mem::take` when the model's weights are not needed afterwards: tensors that only `weights`
    /// holds are then folded in place).
    pub fn optimize_weights(&self, weights: Weights, dump_after: Option<&str>) -> Result<Optimized, Error> {
        let t0 = std::time::Instant::now();
        let (graph, weights, report) = passes::optimize(&self.graph, weights, dump_after)?;
        let t1 = std::time::Instant::now();
        let plan = plan::plan(&graph, &|_| 0);
        plan.verify().map_err(|reason| passes::PassError { pass: "memory plan", reason })?;
        let stages_ms = vec![("optimize", (t1 - t0).as_secs_f64() * 1e3), ("plan", t1.elapsed().as_secs_f64() * 1e3)];
        Ok(Optimized { graph, weights, report, plan, stages_ms })
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

    /// Runs the reference interpreter on an NHWC batch of any size.
    pub fn run_reference(&self, x: ArrayViewD<f32>) -> Result<ArrayD<f32>, Error> {
        self.check_input(&x)?;
        Ok(interp::run(&self.graph, &self.weights, x))
    }
}
