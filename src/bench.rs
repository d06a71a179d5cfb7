//! `resnetc bench SPEC`: times the JIT-compiled model on a synthetic batch — compile time, latency median
//! and minimum, images/s, GFLOP/s and the share of the CPU tier's FMA peak measured on this machine;
//! `--profile` times every kernel, `--paced` runs once per line read from stdin (for lockstep comparisons
//! with other engines).

use crate::cli::{
    check_batch, load, note_random_weights, parse_threads, Fail, IsaOptions, SpecOptions, WeightsOptions,
};
use resnetc_compiler::backend::{BackendOptions, Compiled};
use resnetc_compiler::Model;
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
    /// Batch size (its input and output may take at most 1 GiB each); the kernels are compiled to fold it
    /// (a batch group of up to 64 items per call).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Threads each kernel is split over (0 = one per core).
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = parse_threads)]
    threads: usize,
    /// Timed iterations (after 3 warm-up runs).
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    iters: u32,
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
    #[command(flatten)]
    isa: IsaOptions,
}

pub fn run(a: Args) -> Result<(), Fail> {
    let (batch, iters) = (a.batch as usize, a.iters as usize);
    let t0 = Instant::now();
    let opts = a.spec_options.options(Some(&a.weights));
    let mut m = load(&a.spec, &opts)?;
    note_random_weights(&opts);
    check_batch(&m, batch, "--batch <N>")?;
    // Only the JIT runs: the model's weights move into the compiler.
    let w = std::mem::take(&mut m.weights);
    // The kernels fold the batch (up to the largest group; larger batches run in several groups).
    let group = batch.min(resnetc_compiler::backend::MAX_BATCH_GROUP);
    let bo = BackendOptions { threads: a.threads, isa: a.isa.isa, batch: group, ..Default::default() };
    let c = m.compile_weights(w, &bo)?;
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
    if a.paced {
        use std::io::{BufRead, Write};
        let mut out = std::io::stdout().lock();
        let io = |e: std::io::Error| Fail::user(format!("error: --paced: {e}"));
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
    let images_per_s = batch as f64 / (median * 1e-3);
    // What the tier's FMAs can do on the cores used: measured here, not assumed.
    let per_core = resnetc_compiler::codegen::x86::fma_peak_gflops(c.isa()).unwrap_or(f64::NAN);
    let peak = c.threads() as f64 * per_core;
    if a.profile {
        print_profile(&m, &c, iters, per_core)?;
    }
    if a.json {
        let v = serde_json::json!({
            "model": m.graph.model, "batch": batch, "threads": c.threads(), "isa": c.isa().name(),
            "iters": iters, "compile_ms": compile_ms, "median_ms": median, "min_ms": min, "gflops": gflops,
            "images_per_s": images_per_s, "peak_gflops": peak, "peak_fraction": gflops / peak,
        });
        println!("{v}");
    } else {
        println!(
            "model {} batch {batch}, {} thread(s), {} kernels, {iters} iterations",
            m.graph.model,
            c.threads(),
            c.isa()
        );
        let st: Vec<String> = c.stages_ms.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
        println!("  compile   {compile_ms:.1} ms ({} ms)", st.join(", "));
        println!("  latency   median {median:.2} ms, min {min:.2} ms ({images_per_s:.1} images/s)");
        println!(
            "  speed     {gflops:.1} GFLOP/s = {:.1} % of the {} FMA peak ({peak:.1} GFLOP/s on {} core(s), measured)",
            100.0 * gflops / peak,
            c.isa(),
            c.threads()
        );
    }
    Ok(())
}

/// Times each kernel over `iters` single-image runs and prints them, slowest first.
fn print_profile(m: &Model, c: &Compiled, iters: usize, per_core: f64) -> Result<(), Fail> {
    let shape: Vec<usize> = std::iter::once(1).chain(m.input_shape().iter().copied()).collect();
    let x = ndarray::ArrayD::<f32>::from_elem(ndarray::IxDyn(&shape), 0.5);
    // One program step per kernel; a node that runs as several kernels (an add chain, a split softmax) is
    // one row, under its first kernel.
    let mut step_secs = vec![0f64; c.program.steps().len()];
    for _ in 0..iters {
        c.program.profile(x.view(), &mut step_secs).map_err(|e| Fail::user(format!("error: {e}")))?;
    }
    let mut secs = vec![0f64; c.kernels.len()];
    let mut first_of_node: std::collections::HashMap<&str, usize> = Default::default();
    for (i, (k, t)) in c.kernels.iter().zip(&step_secs).enumerate() {
        secs[*first_of_node.entry(k.node.as_str()).or_insert(i)] += t;
    }
    let total: f64 = secs.iter().sum();
    let mut rows: Vec<(usize, f64)> =
        secs.iter().copied().enumerate().filter(|&(i, _)| first_of_node.values().any(|&f| f == i)).collect();
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
            match k.algorithm {
                resnetc_compiler::lower::Algorithm::Plain => k.op.to_string(),
                algo => format!("{} {algo}", k.op),
            },
            ms,
            100.0 * t / total,
            gf,
            100.0 * gf / (per_core * c.threads() as f64)
        );
    }
    println!("{:<36} {:<52} {:>9.3}", "total", "", total / iters as f64 * 1e3);
    Ok(())
}
