//! `resnetc run SPEC --input X.npy`: runs a model on an NHWC float32 batch and prints the top-5 classes of
//! each item (and writes the outputs with `--output`). The time printed is inference alone.

use crate::cli::{load, note_random_weights, parse_threads, Fail, IsaOptions, SpecOptions, WeightsOptions};
use clap::ValueEnum;
use ndarray::{ArrayD, Axis};
use resnetc_compiler::backend::BackendOptions;
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
    /// Input batch: a float32 .npy of shape [N, H, W, C] (at most 1 GiB).
    #[arg(long, value_name = "X.npy")]
    input: PathBuf,
    /// Write the output batch here as float32 .npy.
    #[arg(long, value_name = "Y.npy")]
    output: Option<PathBuf>,
    /// Which executor runs the model.
    #[arg(long, value_enum, default_value_t = Backend::Jit)]
    backend: Backend,
    /// Threads each kernel is split over (0 = one per core).
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = parse_threads)]
    threads: usize,
    #[command(flatten)]
    isa: IsaOptions,
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    /// JIT-compiled cranelift kernels (the optimized graph).
    Jit,
    /// The plain ndarray reference interpreter (the graph as written).
    Reference,
}

pub fn run(a: Args) -> Result<(), Fail> {
    let opts = a.spec_options.options(Some(&a.weights));
    let m = load(&a.spec, &opts)?;
    note_random_weights(&opts);
    let x = resnetc_compiler::npy::read_batch(&a.input)?;
    // A batch of the wrong shape: say which file, what was expected and what was found.
    m.check_input(&x.view()).map_err(|e| Fail::user(format!("{}: error: {e}", a.input.display())))?;
    let (y, ms) = match a.backend {
        Backend::Reference => {
            let t = Instant::now();
            let y = m.run_reference(x.view())?;
            (y, t.elapsed().as_secs_f64() * 1e3)
        }
        Backend::Jit => {
            let t = Instant::now();
            let c = m.compile(&BackendOptions { threads: a.threads, isa: a.isa.isa, ..Default::default() })?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            eprintln!("compiled {} kernels ({} tier) in {ms:.1} ms", c.kernels.len(), c.isa());
            let t = Instant::now();
            let y = c.run(x.view())?;
            (y, t.elapsed().as_secs_f64() * 1e3)
        }
    };
    eprintln!("ran a batch of {} in {ms:.1} ms (inference only)", x.shape()[0]);
    print_top5(&y);
    if let Some(o) = a.output {
        ndarray_npy::write_npy(&o, &y).map_err(|e| Fail::user(format!("{}: error: {e}", o.display())))?;
    }
    Ok(())
}

fn print_top5(y: &ArrayD<f32>) {
    for (i, row) in y.axis_iter(Axis(0)).enumerate() {
        let mut v: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<String> = v.iter().take(5).map(|(c, p)| format!("{c}: {p:.6}")).collect();
        println!("item {i}: {}", top.join("  "));
    }
}
