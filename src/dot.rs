//! `resnetc dot SPEC [-o FILE] [--after PASS]`: the graph (as written, or after an optimizer pass) as
//! Graphviz DOT.

use crate::cli::{load, parse_pass, Fail, SpecOptions};
use resnetc_compiler::report;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The model spec (YAML).
    spec: PathBuf,
    #[command(flatten)]
    spec_options: SpecOptions,
    /// Draw the graph as it is after this optimizer pass, or (`lower`) the kernels that will run, each with
    /// its algorithm and tiling.
    #[arg(long, value_name = "PASS", value_parser = parse_pass)]
    after: Option<String>,
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Draw one box per block instance instead of its nodes (not for `--after lower`, whose kernels have
    /// no blocks).
    #[arg(long)]
    collapse: bool,
}

pub fn run(a: Args) -> Result<(), Fail> {
    // The optimizer folds weights into convolutions, so a graph after a pass needs some; their values do
    // not change the picture.
    let m = load(&a.spec, &a.spec_options.options(None))?;
    let dot = if a.collapse { report::dot_collapsed } else { report::dot };
    let text = match &a.after {
        Some(p) if p == resnetc_compiler::lower::STAGE => {
            m.optimize(None)?.lower(&resnetc_compiler::backend::BackendOptions::default())?.lowered.dot()
        }
        Some(p) => {
            let o = m.optimize(Some(p))?;
            dot(o.report.dump_graph.as_ref().unwrap_or(&o.graph))
        }
        None => dot(&m.graph),
    };
    match a.output {
        Some(o) => std::fs::write(&o, text).map_err(|e| Fail::user(format!("{}: {e}", o.display()))),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}
