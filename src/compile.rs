//! `resnetc compile SPEC`: validates, optimizes, lowers (chooses every kernel's algorithm), plans memory and
//! JIT-compiles every kernel, then reports whether it worked, how large the compiled model is in memory, how
//! long compiling took and what to run next (`--json`: the same as one JSON object, with every kernel;
//! `--dump-after PASS`: the graph after a pass, or the kernel-level program after `lower`, instead;
//! `--emit clif`: the kernels' cranelift IR instead).

use crate::cli::{load, parse_pass, parse_threads, Fail, IsaOptions, SpecOptions, WeightsOptions};
use clap::ValueEnum;
use resnetc_compiler::backend::{BackendOptions, Compiled};
use resnetc_compiler::files::human_bytes;
use resnetc_compiler::ops::fmt_shape;
use resnetc_compiler::report::thousands;
use resnetc_compiler::{Model, Optimized, Planned};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// The model spec (YAML).
    spec: PathBuf,
    #[command(flatten)]
    spec_options: SpecOptions,
    #[command(flatten)]
    weights: WeightsOptions,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
    /// Print the graph as it is after this optimizer pass (or, after `lower`, each kernel with its
    /// algorithm and tiling), and stop.
    #[arg(long, value_name = "PASS", value_parser = parse_pass)]
    dump_after: Option<String>,
    /// Print each generated kernel's cranelift IR, or its machine code and the micro-kernels' disassembly,
    /// instead of the report.
    #[arg(long, value_enum)]
    emit: Option<Emit>,
    /// Threads the compiled model's kernels are split over (0 = one per core); code is generated for this
    /// count (task splits, per-thread scratch).
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = parse_threads)]
    threads: usize,
    #[command(flatten)]
    isa: IsaOptions,
    /// Batch group: convolution and dense kernels compute this many items per call (1 to 64).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    batch: u32,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Emit {
    /// Cranelift IR, one function per kernel.
    Clif,
    /// Machine code: each kernel's as cranelift lists it, then every wide micro-kernel (AVX-512/AVX2,
    /// assembled for this model) disassembled.
    Asm,
}

pub fn run(a: Args) -> Result<(), Fail> {
    let t0 = Instant::now();
    let opts = a.spec_options.options(Some(&a.weights));
    let mut m = load(&a.spec, &opts)?;
    // The report needs the model's graph only: its weights move into the optimizer.
    let w = std::mem::take(&mut m.weights);
    let o = m.optimize_weights(w, a.dump_after.as_deref())?;
    if let Some(d) = &o.report.dump {
        print!("{d}");
        return Ok(());
    }
    let bo = BackendOptions {
        threads: a.threads,
        keep_ir: a.emit == Some(Emit::Clif),
        keep_asm: a.emit == Some(Emit::Asm),
        isa: a.isa.isa,
        batch: a.batch as usize,
        ..Default::default()
    };
    let p = o.lower(&bo)?;
    if a.dump_after.as_deref() == Some(resnetc_compiler::lower::STAGE) {
        print!("{}", p.lowered.dump());
        return Ok(());
    }
    let mut c = resnetc_compiler::backend::compile(&p.lowered, &p.plan, &o.weights, &bo)?;
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    if let Some(emit) = a.emit {
        for (i, k) in c.kernels.iter_mut().enumerate() {
            println!("; kernel {i}: `{}` ({} {})", k.name, k.op, k.algorithm);
            let text = if emit == Emit::Clif { k.clif.take() } else { k.asm.take() };
            println!("{}", text.unwrap_or_default());
        }
        for (what, asm) in &c.ukernels {
            println!("; micro-kernel {what}\n{asm}");
        }
        return Ok(());
    }
    if a.json {
        println!("{}", json(&m, &o, &p, &c, compile_ms));
    } else {
        print_report(&a, &m, &o, &p, &c, compile_ms);
    }
    Ok(())
}

/// Milliseconds per loading and compiling stage, in order.
fn stages(m: &Model, o: &Optimized, p: &Planned, c: &Compiled) -> Vec<(&'static str, f64)> {
    m.stages_ms.iter().chain(&o.stages_ms).chain(&p.stages_ms).chain(&c.stages_ms).copied().collect()
}

/// The report as one JSON object. Its keys are stable (tests/cli.rs reads them; README "Command line").
fn json(m: &Model, o: &Optimized, p: &Planned, c: &Compiled, compile_ms: f64) -> serde_json::Value {
    let g = &m.graph;
    let rewrites: serde_json::Map<String, serde_json::Value> =
        o.report.rewrites.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
    let kernels: Vec<serde_json::Value> = c
        .kernels
        .iter()
        .map(|k| {
            serde_json::json!({
                "name": k.name, "node": k.node, "op": k.op, "algorithm": k.algorithm.to_string(),
                "tiling": k.tiling, "tasks": k.ntasks, "macs": k.macs, "packed_weight_bytes": k.packed_bytes,
                "work_bytes_per_thread": k.work_floats * 4,
            })
        })
        .collect();
    serde_json::json!({
        "model": g.model,
        "nodes_before": o.report.nodes_before,
        "nodes_after": o.report.nodes_after,
        "kernels": c.kernels.len(),
        "kernel_list": kernels,
        "functions": c.functions,
        "threads": c.threads(),
        "isa": c.isa().name(),
        "batch_group": c.program.group(),
        "packed_weight_bytes": c.consts_bytes,
        "work_bytes": c.plan.work_bytes,
        "arena_with_work_bytes": c.plan.arena_with_work_bytes(c.program.group()),
        "fusions": rewrites,
        "projections": m.projections.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
        "arena_bytes": p.plan.arena_bytes,
        "arena_lower_bound_bytes": p.plan.lower_bound_bytes,
        "activation_bytes_total": p.plan.total_bytes,
        "weight_bytes": o.weights.bytes(),
        "params": g.params(),
        "macs": g.macs(),
        "input_shape": m.input_shape(),
        "output_shape": m.output_shape(),
        "compile_ms": compile_ms,
        "stages_ms": stages(m, o, p, c).iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
    })
}

/// What a stage's name means to a user.
fn stage_label(stage: &str) -> &str {
    match stage {
        "check" => "spec",
        "optimize" => "optimizer",
        "lower" => "kernel selection",
        "plan" => "memory plan",
        "codegen" => "code generation",
        "assemble" => "program assembly",
        other => other,
    }
}

fn print_report(a: &Args, m: &Model, o: &Optimized, p: &Planned, c: &Compiled, compile_ms: f64) {
    let g = &m.graph;
    println!(
        "compiled `{}` in {:.2} s: input {} → output {}, {} kernels ({} tier) on {} thread(s)",
        g.model,
        compile_ms / 1e3,
        fmt_shape(m.input_shape()),
        fmt_shape(m.output_shape()),
        c.kernels.len(),
        c.isa(),
        c.threads()
    );
    let row = |label: &str, text: String| println!("  {label:<12} {text}");
    row(
        "parameters",
        format!("{} ({} as float32)", thousands(g.params() as u64), human_bytes(o.weights.bytes() as u64)),
    );
    row("work", format!("{} multiply-adds per image", thousands(g.macs())));
    row(
        "memory",
        format!(
            "{} of weights, laid out for the kernels (Winograd and Strassen layouts are larger)",
            human_bytes(c.consts_bytes as u64)
        ),
    );
    row(
        "",
        format!(
            "+ {} per run in progress: activations ({} in all, reused across layers) and the kernels' scratch",
            human_bytes(c.plan.arena_with_work_bytes(c.program.group()) as u64),
            human_bytes(p.plan.total_bytes as u64)
        ),
    );
    let rewrites: Vec<String> =
        o.report.rewrites.iter().filter(|(_, &n)| n > 0).map(|(k, n)| format!("{k} {n}")).collect();
    row(
        "optimizer",
        format!(
            "{} → {} nodes{}{}",
            o.report.nodes_before,
            o.report.nodes_after,
            if rewrites.is_empty() { "" } else { ": " },
            rewrites.join(", ")
        ),
    );
    for p in &m.projections {
        row("", format!("{p}"));
    }
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for k in &c.kernels {
        let what = match k.algorithm {
            resnetc_compiler::lower::Algorithm::Plain => k.op.to_string(),
            algo => format!("{} ({algo})", k.op),
        };
        *kinds.entry(what).or_default() += 1;
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, v)| format!("{v} {k}")).collect();
    row("kernels", format!("{} ({} distinct functions: layers of one shape share one)", kinds.join(", "), c.functions));
    let st: Vec<String> = stages(m, o, p, c).iter().map(|(k, v)| format!("{} {v:.1}", stage_label(k))).collect();
    row("time (ms)", st.join(", "));
    // What to run next, with the options given here.
    let spec = a.spec.display();
    let mut opts = String::new();
    if let Some(s) = &a.spec_options.input_shape {
        opts += &format!(" --input-shape {}", s.0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(","));
    }
    if a.spec_options.no_auto_projection {
        opts += " --no-auto-projection";
    }
    let weights = match &a.weights.weights {
        Some(w) => format!(" --weights {}", w.display()),
        None => " --weights W.safetensors".to_string(),
    };
    let dims: Vec<String> = m.input_shape().iter().map(|d| d.to_string()).collect();
    let run = format!("resnetc run {spec}{opts}{weights} --input BATCH.npy");
    let bench = format!("resnetc bench {spec}{opts}");
    let w = run.len().max(bench.len());
    println!("next:");
    println!("  {run:<w$}   # BATCH.npy: float32 [N, {}] (NHWC)", dims.join(", "));
    println!("  {bench:<w$}   # latency, GFLOP/s");
}
