//! `resnetc import-keras`: a Keras model config (what `model.to_json()` writes) → a resnetc spec.
//!
//! Reads the JSON config, converts it ([`resnetc_compiler::keras`]), writes the spec (to `-o FILE` or
//! standard output), then checks it as `resnetc check` does and prints the same one-line verdict (to
//! standard error when the spec goes to standard output). Weights are not in the config: export them
//! from Keras as the README's "Weights" shows, or use `resnetc.from_keras` in Python, which writes both.

use clap::Args;
use resnetc_compiler::{keras, report, Options};
use std::path::PathBuf;

#[derive(Args)]
pub struct ImportKeras {
    /// The Keras model config: the JSON text of `model.to_json()` (or the config.json inside a .keras file).
    config: PathBuf,
    /// Write the spec to this file instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// The input's height, width and channels, for a model whose input size Keras leaves open.
    #[arg(long, value_name = "H,W,C", value_parser = crate::cli::parse_shape)]
    input_shape: Option<crate::cli::InputShape>,
}

/// Converts, writes and checks; the error is the complete message to print.
pub fn run(a: ImportKeras) -> Result<(), String> {
    let bytes = keras::read_config(&a.config)?;
    let file = a.config.display().to_string();
    let shape = a.input_shape.as_ref().map(|s| s.0.as_slice());
    let conv = keras::convert(&file, &bytes, shape).map_err(|d| {
        let n = d.errors().count();
        format!("{d}\n{file}: {n} error(s); nothing written")
    })?;
    for n in &conv.notes {
        eprintln!("{file}: note: {n}");
    }
    let out_name = match &a.output {
        Some(o) => {
            std::fs::write(o, &conv.spec).map_err(|e| format!("{}: error: cannot write the spec: {e}", o.display()))?;
            o.display().to_string()
        }
        None => {
            print!("{}", conv.spec);
            "<stdout>".to_string()
        }
    };
    // The converted spec goes through the same checks as any spec (shapes, shortcuts, references).
    let (ok, diags) = resnetc_compiler::check(&out_name, conv.spec.as_bytes(), &Options::default());
    if !diags.0.is_empty() {
        eprintln!("{diags}");
    }
    let verdict = match ok {
        Some((_, g, _)) => format!(
            "{out_name}: ok: {} Keras layers -> {} nodes, {} parameters, {} MACs per image",
            conv.layers,
            g.g.node_count(),
            report::thousands(g.params() as u64),
            report::thousands(g.macs())
        ),
        None => return Err(format!("{out_name}: the converted spec has {} error(s)", diags.errors().count())),
    };
    if a.output.is_some() {
        println!("{verdict}");
    } else {
        eprintln!("{verdict}");
    }
    Ok(())
}
