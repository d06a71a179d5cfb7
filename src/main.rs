//! The `resnetc` command line: check, summarize, draw, compile and run ResNet graph specs.
//!
//! Exit status: 0 on success, 1 when the spec, weights or input are wrong (the messages say where),
//! 2 on a usage error (clap's).

use clap::{Args, Parser, Subcommand, ValueEnum};
use ndarray::{ArrayD, Axis};
use resnetc_compiler::backend::BackendOptions;
use resnetc_compiler::spec::ProjectionPolicy;
use resnetc_compiler::{report, Error, Model, Options};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

mod import_keras;
mod peak;

#[derive(Parser)]
#[command(name = "resnetc", version, about = "A declarative ResNet graph compiler: YAML specs to fast CPU kernels")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate specs: print every error and warning, and the shortcut projections that would be inserted.
    Check {
        /// Spec files (YAML).
        #[arg(required = true)]
        specs: Vec<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Compile a spec: validate, optimize, plan memory and JIT-generate every kernel; report what was done.
    Compile {
        /// The model spec (YAML).
        spec: PathBuf,
        #[command(flatten)]
        common: Common,
        /// Safetensors weights (Keras names and layouts); default: the notebook's seeded initialization.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Print one JSON object instead of the text report.
        #[arg(long)]
        json: bool,
        /// Print the graph as it is after this optimizer pass, and stop.
        #[arg(long, value_name = "PASS")]
        dump_after: Option<String>,
        /// Print each generated kernel's cranelift IR instead of the report.
        #[arg(long, value_enum)]
        emit: Option<Emit>,
        /// Threads the compiled model's kernels are split over (0 = all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Time the JIT-compiled model: compile time, latency median/min, GFLOP/s and share of the f32x4 FMA peak.
    Bench {
        /// The model spec (YAML).
        spec: PathBuf,
        #[command(flatten)]
        common: Common,
        /// Safetensors weights (timing does not depend on them; default: the seeded initialization).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Batch size.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Threads each kernel is split over (0 = all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Timed iterations (after 3 warm-up runs).
        #[arg(long, default_value_t = 20)]
        iters: usize,
        /// Also time each kernel (batch 1) and print a table, slowest first.
        #[arg(long)]
        profile: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Paced by another program: after compiling and warming up, print `ready`, then for every line read
        /// from standard input run once and print its milliseconds; stop at end of input (for comparisons
        /// that interleave runs of two engines one by one, see compiler/benches/compare_ort_paired.py).
        #[arg(long, conflicts_with_all = ["profile", "json"])]
        paced: bool,
    },
    /// Print a table like Keras's model.summary(): layer, op, output shape, parameters, MACs.
    Summary {
        /// The model spec (YAML).
        spec: PathBuf,
        #[command(flatten)]
        common: Common,
    },
    /// Print the graph as Graphviz DOT (shortcut edges dashed; inserted nodes shaded).
    Dot {
        /// The model spec (YAML).
        spec: PathBuf,
        #[command(flatten)]
        common: Common,
        /// Draw the graph as it is after this optimizer pass.
        #[arg(long, value_name = "PASS")]
        after: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Run a model on an NHWC float32 .npy batch; print the top-5 classes of each item.
    Run {
        /// The model spec (YAML).
        spec: PathBuf,
        #[command(flatten)]
        common: Common,
        /// Safetensors weights (Keras names and layouts); default: the notebook's seeded initialization.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Input batch: a float32 .npy of shape [N, H, W, C].
        #[arg(long)]
        input: PathBuf,
        /// Write the output batch here as float32 .npy.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Which executor runs the model.
        #[arg(long, value_enum, default_value_t = Backend::Jit)]
        backend: Backend,
        /// Threads each kernel is split over (0 = all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Convert a Keras model config (what model.to_json() writes) into a spec with the same layer names.
    ImportKeras(import_keras::ImportKeras),
}

#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    /// Cranelift IR, one function per kernel.
    Clif,
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    /// JIT-compiled cranelift kernels (the optimized graph).
    Jit,
    /// The plain ndarray reference interpreter (the graph as written).
    Reference,
}

#[derive(Args, Clone)]
struct Common {
    /// Override the spec's input shape: height,width,channels.
    #[arg(long, value_name = "H,W,C", value_parser = parse_shape)]
    input_shape: Option<InputShape>,
    /// Refuse shortcuts that need a projection instead of inserting one.
    #[arg(long)]
    no_auto_projection: bool,
    /// Seed of the glorot initialization used without --weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// `--input-shape`'s value. A newtype: as a plain `Vec<usize>` clap would take it for a list of
/// values and fail (panic) when the parsed shape is read back.
#[derive(Clone, Debug)]
struct InputShape(Vec<usize>);

fn parse_shape(s: &str) -> Result<InputShape, String> {
    let v: Result<Vec<usize>, _> = s.split(',').map(|x| x.trim().parse::<usize>()).collect();
    match v {
        Ok(v) if v.len() == 3 && v.iter().all(|&d| d > 0) => Ok(InputShape(v)),
        _ => Err(format!("expected three positive integers H,W,C, found `{s}`")),
    }
}

impl Common {
    fn options(&self, weights: Option<PathBuf>) -> Options {
        Options {
            weights,
            input_shape: self.input_shape.as_ref().map(|s| s.0.clone()),
            projection: self.no_auto_projection.then_some(ProjectionPolicy::Error),
            seed: self.seed,
        }
    }
}

/// A failure to report: the message is already complete.
struct Fail(String);

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail(e.to_string())
    }
}

fn load(spec: &Path, opts: &Options) -> Result<Model, Fail> {
    let m = Model::from_file(spec, opts)?;
    for w in m.warnings.warnings() {
        eprintln!("{w}");
    }
    Ok(m)
}

/// Dies quietly on a closed pipe (`resnetc compile --emit clif | head`), as Unix tools do, instead of
/// panicking in `println!`.
fn default_sigpipe() {
    #[cfg(unix)]
    {
        extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        const SIGPIPE: i32 = 13;
        const SIG_DFL: usize = 0;
        // SAFETY: restoring the default disposition of SIGPIPE before any thread or I/O exists.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
        }
    }
}

fn main() -> ExitCode {
    default_sigpipe();
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(1)
        }
    }
}

fn run(cmd: Cmd) -> Result<(), Fail> {
    match cmd {
        Cmd::ImportKeras(a) => import_keras::run(a).map_err(Fail),
        Cmd::Check { specs, common } => {
            let opts = common.options(None);
            let mut failed = 0;
            for path in &specs {
                let bytes = std::fs::read(path).map_err(|e| Fail(format!("{}: {e}", path.display())))?;
                let (ok, diags) = resnetc_compiler::check(&path.display().to_string(), &bytes, &opts);
                if !diags.0.is_empty() {
                    eprintln!("{diags}");
                }
                match ok {
                    Some((_, g, projections)) => {
                        for p in &projections {
                            println!("{}: note: {p}", path.display());
                        }
                        println!(
                            "{}: ok: {} nodes, {} parameters, {} MACs per image, {} warning(s)",
                            path.display(),
                            g.g.node_count(),
                            report::thousands(g.params() as u64),
                            report::thousands(g.macs()),
                            diags.warnings().count()
                        );
                    }
                    None => {
                        failed += 1;
                        eprintln!("{}: {} error(s)", path.display(), diags.errors().count());
                    }
                }
            }
            if failed > 0 {
                return Err(Fail(format!("{failed} of {} spec(s) failed", specs.len())));
            }
            Ok(())
        }
        Cmd::Compile { spec, common, weights, json, dump_after, emit, threads } => {
            check_pass(dump_after.as_deref())?;
            let mut m = load(&spec, &common.options(weights))?;
            // The report needs the model's graph only: its weights move into the optimizer.
            let w = std::mem::take(&mut m.weights);
            let o = m.optimize_weights(w, dump_after.as_deref())?;
            if let Some(d) = &o.report.dump {
                print!("{d}");
                return Ok(());
            }
            let bo = BackendOptions { threads, keep_ir: emit.is_some(), ..Default::default() };
            let c = resnetc_compiler::backend::compile(&o, &bo)?;
            if emit.is_some() {
                for (i, k) in c.kernels.iter().enumerate() {
                    println!("; kernel {i}: `{}` ({})", k.node, k.op);
                    println!("{}", k.clif.as_deref().unwrap_or(""));
                }
                return Ok(());
            }
            let g = &m.graph;
            let fusions: serde_json::Map<String, serde_json::Value> =
                o.report.rewrites.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
            let stages: Vec<(&str, f64)> =
                m.stages_ms.iter().chain(&o.stages_ms).chain(&c.stages_ms).copied().collect();
            if json {
                let v = serde_json::json!({
                    "model": g.model,
                    "nodes_before": o.report.nodes_before,
                    "nodes_after": o.report.nodes_after,
                    "kernels": c.kernels.len(),
                    "functions": c.functions,
                    "packed_weight_bytes": c.consts_bytes,
                    "work_bytes": c.plan.buffers.iter().filter(|b| b.kind == resnetc_compiler::plan::BufferKind::Work).map(|b| b.bytes).sum::<usize>(),
                    "arena_with_work_bytes": c.plan.arena_bytes,
                    "fusions": fusions,
                    "projections": m.projections.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
                    "arena_bytes": o.plan.arena_bytes,
                    "arena_lower_bound_bytes": o.plan.lower_bound_bytes,
                    "activation_bytes_total": o.plan.total_bytes,
                    "weight_bytes": o.weights.bytes(),
                    "params": g.params(),
                    "macs": g.macs(),
                    "input_shape": m.input_shape(),
                    "output_shape": m.output_shape(),
                    "stages_ms": stages.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
                });
                println!("{v}");
            } else {
                println!("model {}: {} → {}", g.model, fmt(m.input_shape()), fmt(m.output_shape()));
                println!("  parameters       {}", report::thousands(g.params() as u64));
                println!("  MACs per image   {}", report::thousands(g.macs()));
                println!("  nodes            {} → {} after optimization", o.report.nodes_before, o.report.nodes_after);
                println!("  projections      {}", m.projections.len());
                for p in &m.projections {
                    println!("    {p}");
                }
                println!("  rewrites");
                for (k, v) in &o.report.rewrites {
                    println!("    {k:<24} {v}");
                }
                let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
                for &n in &o.plan.steps {
                    *kinds.entry(o.graph.node(n).op.kind()).or_default() += 1;
                }
                let kinds: Vec<String> = kinds.iter().map(|(k, v)| format!("{v} {k}")).collect();
                println!(
                    "  kernels          {} ({}); {} distinct functions compiled",
                    o.plan.steps.len(),
                    kinds.join(", "),
                    c.functions
                );
                println!(
                    "  arena            {} bytes per image (lower bound {}, all activations {})",
                    report::thousands(o.plan.arena_bytes as u64),
                    report::thousands(o.plan.lower_bound_bytes as u64),
                    report::thousands(o.plan.total_bytes as u64)
                );
                println!(
                    "  with work        {} bytes per image (kernels' per-thread scratch, {} thread(s))",
                    report::thousands(c.plan.arena_bytes as u64),
                    c.threads()
                );
                println!(
                    "  weight bytes     {} ({} packed for the kernels)",
                    report::thousands(o.weights.bytes() as u64),
                    report::thousands(c.consts_bytes as u64)
                );
                let st: Vec<String> = stages.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
                println!("  stages (ms)      {}", st.join(", "));
            }
            Ok(())
        }
        Cmd::Bench { spec, common, weights, batch, threads, iters, json, profile, paced } => {
            if batch == 0 || iters == 0 {
                return Err(Fail("error: --batch and --iters must be at least 1".into()));
            }
            let t0 = Instant::now();
            let mut m = load(&spec, &common.options(weights))?;
            // Only the JIT runs: the model's weights move into the compiler.
            let w = std::mem::take(&mut m.weights);
            let c = m.compile_weights(w, &BackendOptions { threads, ..Default::default() })?;
            let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
            let shape: Vec<usize> = std::iter::once(batch).chain(m.input_shape().iter().copied()).collect();
            let x = ndarray::ArrayD::<f32>::from_shape_fn(ndarray::IxDyn(&shape), |i| {
                ((ndarray::Dimension::slice(&i).iter().sum::<usize>() % 17) as f32 - 8.0) / 8.0
            });
            for _ in 0..3 {
                c.run(x.view())?;
            }
            let timed = || -> Result<f64, Fail> {
                let t = Instant::now();
                c.run(x.view())?;
                Ok(t.elapsed().as_secs_f64() * 1e3)
            };
            if paced {
                use std::io::{BufRead, Write};
                let mut out = std::io::stdout().lock();
                let io = |e: std::io::Error| Fail(format!("error: --paced: {e}"));
                writeln!(out, "ready").and_then(|_| out.flush()).map_err(io)?;
                for line in std::io::stdin().lock().lines() {
                    line.map_err(io)?;
                    let ms = timed()?;
                    writeln!(out, "{ms:.4}").and_then(|_| out.flush()).map_err(io)?;
                }
                return Ok(());
            }
            let mut ts = Vec::with_capacity(iters);
            for _ in 0..iters {
                ts.push(timed()?);
            }
            ts.sort_by(f64::total_cmp);
            let (median, min) = (ts[ts.len() / 2], ts[0]);
            let gflops = 2.0 * c.macs as f64 * batch as f64 / (median * 1e-3) / 1e9;
            // What 128-bit FMAs can do on the cores used: measured here, not assumed.
            let per_core = peak::f32x4_fma_gflops_per_core().unwrap_or(f64::NAN);
            let peak = c.threads() as f64 * per_core;
            if profile {
                print_profile(&m, &c, iters, per_core)?;
            }
            if json {
                let v = serde_json::json!({
                    "model": m.graph.model, "batch": batch, "threads": c.threads(), "iters": iters,
                    "compile_ms": compile_ms, "median_ms": median, "min_ms": min, "gflops": gflops,
                    "peak_gflops": peak, "peak_fraction": gflops / peak,
                });
                println!("{v}");
            } else {
                println!("model {} batch {batch}, {} thread(s), {iters} iterations", m.graph.model, c.threads());
                let st: Vec<String> = c.stages_ms.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
                println!("  compile   {compile_ms:.1} ms ({} ms)", st.join(", "));
                println!("  latency   median {median:.2} ms, min {min:.2} ms");
                println!(
                    "  speed     {gflops:.1} GFLOP/s = {:.1} % of the f32x4 FMA peak ({peak:.1} GFLOP/s on {} core(s), measured)",
                    100.0 * gflops / peak,
                    c.threads()
                );
            }
            Ok(())
        }
        Cmd::Summary { spec, common } => {
            let m = load(&spec, &common.options(None))?;
            print!("{}", report::summary(&m.graph));
            Ok(())
        }
        Cmd::Dot { spec, common, output, after } => {
            check_pass(after.as_deref())?;
            let m = load(&spec, &common.options(None))?;
            let text = match after {
                Some(p) => {
                    let o = m.optimize(Some(&p))?;
                    report::dot(o.report.dump_graph.as_ref().unwrap_or(&o.graph))
                }
                None => report::dot(&m.graph),
            };
            match output {
                Some(o) => std::fs::write(&o, text).map_err(|e| Fail(format!("{}: {e}", o.display()))),
                None => {
                    print!("{text}");
                    Ok(())
                }
            }
        }
        Cmd::Run { spec, common, weights, input, output, backend, threads } => {
            let m = load(&spec, &common.options(weights))?;
            let x: ArrayD<f32> = ndarray_npy::read_npy(&input).map_err(|e| {
                let e = e.to_string();
                let hint =
                    if e.contains("'<f8'") { " (this array is float64: save it with x.astype('float32'))" } else { "" };
                Fail(format!("{}: error: cannot read a float32 .npy array: {e}{hint}", input.display()))
            })?;
            // A batch of the wrong shape: say which file, what was expected and what was found.
            m.check_input(&x.view()).map_err(|e| Fail(format!("{}: error: {e}", input.display())))?;
            let t0 = Instant::now();
            let y = match backend {
                Backend::Reference => m.run_reference(x.view())?,
                Backend::Jit => {
                    let c = m.compile(&BackendOptions { threads, ..Default::default() })?;
                    eprintln!("compiled {} kernels in {:.1} ms", c.kernels.len(), t0.elapsed().as_secs_f64() * 1e3);
                    c.run(x.view())?
                }
            };
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            eprintln!("ran batch of {} in {ms:.1} ms", x.shape()[0]);
            print_top5(&y);
            if let Some(o) = output {
                ndarray_npy::write_npy(&o, &y).map_err(|e| Fail(format!("{}: {e}", o.display())))?;
            }
            Ok(())
        }
    }
}

/// Times each kernel over `iters` single-image runs and prints them, slowest first.
fn print_profile(m: &Model, c: &resnetc_compiler::backend::Compiled, iters: usize, per_core: f64) -> Result<(), Fail> {
    let shape: Vec<usize> = std::iter::once(1).chain(m.input_shape().iter().copied()).collect();
    let x = ndarray::ArrayD::<f32>::from_elem(ndarray::IxDyn(&shape), 0.5);
    // Per step, then per kernel (a node may run as several steps).
    let mut step_secs = vec![0f64; c.program.steps().len()];
    for _ in 0..iters {
        c.program.profile(x.view(), &mut step_secs).map_err(|e| Fail(format!("error: {e}")))?;
    }
    let mut secs = vec![0f64; c.kernels.len()];
    for (t, &k) in step_secs.iter().zip(&c.step_kernel) {
        secs[k] += t;
    }
    let total: f64 = secs.iter().sum();
    let mut rows: Vec<(usize, f64)> = secs.iter().copied().enumerate().collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("{:<36} {:<52} {:>9} {:>6} {:>8} {:>6}", "kernel", "op", "ms", "%", "GFLOP/s", "%peak");
    for (i, t) in rows {
        let k = &c.kernels[i];
        let macs = k.macs;
        let ms = t / iters as f64 * 1e3;
        let gf = 2.0 * macs as f64 / (t / iters as f64) / 1e9;
        println!(
            "{:<36} {:<52} {:>9.3} {:>6.1} {:>8.1} {:>6.1}",
            k.node,
            k.op,
            ms,
            100.0 * t / total,
            gf,
            100.0 * gf / (per_core * c.threads() as f64)
        );
    }
    println!("{:<36} {:<52} {:>9.3}", "total", "", total / iters as f64 * 1e3);
    Ok(())
}

/// Refuses a `--dump-after`/`--after` that names no pass, listing the passes.
fn check_pass(p: Option<&str>) -> Result<(), Fail> {
    match p {
        Some(p) if !resnetc_compiler::passes::is_pass(p) => {
            let names: Vec<&str> = resnetc_compiler::passes::PASSES.iter().map(|x| x.name).collect();
            Err(Fail(format!("error: unknown pass `{p}`; the passes are: {}", names.join(", "))))
        }
        _ => Ok(()),
    }
}

fn fmt(s: &[usize]) -> String {
    resnetc_compiler::ops::fmt_shape(s)
}

fn print_top5(y: &ArrayD<f32>) {
    for (i, row) in y.axis_iter(Axis(0)).enumerate() {
        let mut v: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<String> = v.iter().take(5).map(|(c, p)| format!("{c}: {p:.6}")).collect();
        println!("item {i}: {}", top.join("  "));
    }
}
