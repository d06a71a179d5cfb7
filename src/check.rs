//! `resnetc check SPEC…`: validates specs without loading weights; prints every error and warning, the
//! shortcut projections that would be inserted, and a one-line summary per spec.

use crate::cli::{Fail, SpecOptions};
use resnetc_compiler::report;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Spec files (YAML).
    #[arg(required = true)]
    specs: Vec<PathBuf>,
    #[command(flatten)]
    spec: SpecOptions,
}

pub fn run(a: Args) -> Result<(), Fail> {
    let opts = a.spec.options(None);
    let mut failed = 0;
    for path in &a.specs {
        let bytes = resnetc_compiler::read_spec(path, &opts)?;
        let (ok, diags) = resnetc_compiler::check(&path.display().to_string(), &bytes, &opts);
        if !diags.0.is_empty() {
            eprintln!("{diags}");
        }
        match ok {
            Some((_, g, projections)) => {
                for p in &projections {
                    println!("{}: note: {p}", p.loc.as_ref().map_or(path.display().to_string(), |l| l.to_string()));
                }
                println!(
                    "{}: ok: {} nodes, {} parameters, {} MACs per image, {} warning(s)",
                    path.display(),
                    g.g.node_count(),
                    report::thousands(g.params() as u64),
                    report::thousands(g.macs()),
                    diags.warning_count()
                );
            }
            None => {
                failed += 1;
                eprintln!("{}: {} error(s)", path.display(), diags.error_count());
            }
        }
    }
    if failed > 0 {
        return Err(Fail::user(format!("{failed} of {} spec(s) failed", a.specs.len())));
    }
    Ok(())
}
