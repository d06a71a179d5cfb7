//! The `resnetc` command line: check, summarize, draw, compile, run and time ResNet graph specs.
//!
//! One file per command: each has a clap `Args` struct and a `run(Args) -> Result<(), Fail>`; adding a
//! command is a module, a variant of [`Cmd`] and its line in [`main`]. What the commands share (spec and
//! weights options, loading, failures and their exit codes) is in [`cli`].
//!
//! Exit status: 0 on success, 1 when the spec, weights or input are wrong (the messages say where),
//! 2 on a usage error (an unknown option, or an option value out of range).

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod bench;
mod check;
mod cli;
mod compile;
mod dot;
mod import_keras;
mod predict;
mod run;
mod summary;

#[derive(Parser)]
#[command(name = "resnetc", version, about = "A declarative ResNet graph compiler: YAML specs to fast CPU kernels")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate specs: print every error and warning, and the shortcut projections that would be inserted.
    Check(check::Args),
    /// Compile a spec: validate, optimize, plan memory and JIT-generate every kernel; report what was done.
    Compile(compile::Args),
    /// Print a table like Keras's model.summary(): layer, op, output shape, parameters, MACs.
    Summary(summary::Args),
    /// Print the graph as Graphviz DOT (shortcut edges dashed; inserted nodes shaded).
    Dot(dot::Args),
    /// Run a model on an NHWC float32 .npy batch; print the top-5 classes of each item.
    Run(run::Args),
    /// Time the JIT-compiled model: compile time, latency, images/s, GFLOP/s and share of the tier's FMA peak.
    Bench(bench::Args),
    /// Classify images (JPEG, PNG, BMP, WebP): preprocessed as the spec says, top-K labels per image.
    Predict(predict::PredictArgs),
    /// Convert a Keras model config (what model.to_json() writes) into a spec with the same layer names.
    ImportKeras(import_keras::ImportKeras),
}

fn main() -> ExitCode {
    cli::default_sigpipe();
    let result = match Cli::parse().cmd {
        Cmd::Check(a) => check::run(a),
        Cmd::Compile(a) => compile::run(a),
        Cmd::Summary(a) => summary::run(a),
        Cmd::Dot(a) => dot::run(a),
        Cmd::Run(a) => run::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Predict(a) => predict::run(a),
        Cmd::ImportKeras(a) => import_keras::run(a).map_err(cli::Fail::user),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(fail) => fail.report(),
    }
}
