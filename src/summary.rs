//! `resnetc summary SPEC [--weights W]`: a table like Keras's `model.summary()`; with `--weights`, the
//! weights are checked against the graph first (every tensor present, with its shape and dtype).

use crate::cli::{load, Fail, SpecOptions, WeightsOptions};
use resnetc_compiler::report;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The model spec (YAML).
    spec: PathBuf,
    #[command(flatten)]
    spec_options: SpecOptions,
    /// Safetensors weights to check against the model (Keras names and layouts).
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<(), Fail> {
    let weights = WeightsOptions { weights: a.weights, seed: 0 };
    let m = load(&a.spec, &a.spec_options.options(Some(&weights)))?;
    print!("{}", report::summary(&m.graph));
    if let Some(w) = &weights.weights {
        println!("Weights: {} checked: every tensor present, with its shape", w.display());
    }
    Ok(())
}
