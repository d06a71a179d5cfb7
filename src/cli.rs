//! What the commands share: the spec and weights options, loading a model, the notice for random weights,
//! option parsers that enforce the machine's limits, and [`Fail`] — a message with its exit status.

use clap::Args;
use resnetc_compiler::codegen::x86::Isa;
use resnetc_compiler::files::human_bytes;
use resnetc_compiler::npy::MAX_INPUT_BYTES;
use resnetc_compiler::ops::fmt_shape;
use resnetc_compiler::spec::ProjectionPolicy;
use resnetc_compiler::{Error, Model, Options};
use resnetc_runtime::pool::{cores, max_threads, THREADS_PER_CORE};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Options every command that reads a spec takes.
#[derive(Args, Clone)]
pub struct SpecOptions {
    /// Override the spec's input shape: height,width,channels.
    #[arg(long, value_name = "H,W,C", value_parser = parse_shape)]
    pub input_shape: Option<InputShape>,
    /// Refuse shortcuts that need a projection instead of inserting one.
    #[arg(long)]
    pub no_auto_projection: bool,
}

/// Where a command that runs (or compiles) a model gets its weights.
#[derive(Args, Clone)]
pub struct WeightsOptions {
    /// Safetensors weights (Keras names and layouts, see the README); without it the model is initialized
    /// randomly as the Keras notebook does (glorot_uniform, seeded).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Seed of the random initialization used without --weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `--input-shape`'s value. A newtype: as a plain `Vec<usize>` clap would take it for a list of
/// values and fail (panic) when the parsed shape is read back.
#[derive(Clone, Debug)]
pub struct InputShape(pub Vec<usize>);

pub fn parse_shape(s: &str) -> Result<InputShape, String> {
    let v: Result<Vec<usize>, _> = s.split(',').map(|x| x.trim().parse::<usize>()).collect();
    match v {
        Ok(v) if v.len() == 3 && v.iter().all(|&d| d > 0) => Ok(InputShape(v)),
        _ => Err(format!("expected three positive integers H,W,C, found `{s}`")),
    }
}

impl SpecOptions {
    /// Loading options with weights from `weights` (none: the seeded initialization).
    pub fn options(&self, weights: Option<&WeightsOptions>) -> Options {
        Options {
            weights: weights.and_then(|w| w.weights.clone()),
            input_shape: self.input_shape.as_ref().map(|s| s.0.clone()),
            projection: self.no_auto_projection.then_some(ProjectionPolicy::Error),
            seed: weights.map_or(0, |w| w.seed),
            ..Default::default()
        }
    }
}

/// `--threads`: a count the machine allows (0 = one per core).
pub fn parse_threads(s: &str) -> Result<usize, String> {
    let n: usize =
        s.trim().parse().map_err(|_| format!("expected a whole number of threads (0 = one per core), found `{s}`"))?;
    let max = max_threads();
    if n > max {
        return Err(format!(
            "{n} threads: this machine allows at most {max} ({THREADS_PER_CORE} per core, {} core(s) available); \
             0 uses one per core",
            cores()
        ));
    }
    Ok(n)
}

/// `--dump-after`/`--after`: the name of an optimizer pass, or `lower` (the kernel-level program).
pub fn parse_pass(s: &str) -> Result<String, String> {
    if resnetc_compiler::passes::is_pass(s) || s == resnetc_compiler::lower::STAGE {
        return Ok(s.to_string());
    }
    let mut names: Vec<&str> = resnetc_compiler::passes::PASSES.iter().map(|p| p.name).collect();
    names.push(resnetc_compiler::lower::STAGE);
    Err(format!("unknown pass; the passes are: {}", names.join(", ")))
}

/// The CPU tier of the kernels, for every command that compiles.
#[derive(Args, Clone)]
pub struct IsaOptions {
    /// CPU tier of the kernels: avx512, avx2 (micro-kernels assembled for this machine), f32x4 (cranelift's
    /// portable 128-bit kernels) or auto (the widest this CPU runs). A tier the CPU lacks is an error.
    #[arg(long, default_value = "auto", value_name = "TIER", value_parser = parse_isa)]
    pub isa: Isa,
}

fn parse_isa(s: &str) -> Result<Isa, String> {
    s.parse::<Isa>().map_err(|e| e.to_string())
}

/// Refuses a batch of `batch` items whose input or output would exceed [`MAX_INPUT_BYTES`], the bound an
/// input file has too: a usage error naming `option` and the most items this model allows.
pub fn check_batch(m: &Model, batch: usize, option: &str) -> Result<(), Fail> {
    let item_bytes = |s: &[usize]| 4 * s.iter().product::<usize>() as u64;
    let per_item = item_bytes(m.input_shape()).max(item_bytes(m.output_shape())).max(1);
    let allowed = MAX_INPUT_BYTES / per_item;
    if allowed == 0 {
        return Err(Fail::usage(format!(
            "error: invalid value '{batch}' for '{option}': one item of {} → {} takes {} of float32, more than \
             the {} a batch may hold",
            fmt_shape(m.input_shape()),
            fmt_shape(m.output_shape()),
            human_bytes(per_item),
            human_bytes(MAX_INPUT_BYTES)
        )));
    }
    if batch as u64 > allowed {
        return Err(Fail::usage(format!(
            "error: invalid value '{batch}' for '{option}': a batch may hold at most {} of float32 input or \
             output, which is {allowed} items of {} → {} for this model",
            human_bytes(MAX_INPUT_BYTES),
            fmt_shape(m.input_shape()),
            fmt_shape(m.output_shape())
        )));
    }
    Ok(())
}

/// Loads a model, printing its warnings.
pub fn load(spec: &Path, opts: &Options) -> Result<Model, Fail> {
    let m = Model::from_file(spec, opts)?;
    for w in m.warnings.warnings() {
        eprintln!("{w}");
    }
    Ok(m)
}

/// Says on stderr, every time, that the outputs come from random weights.
pub fn note_random_weights(opts: &Options) {
    if opts.weights.is_none() {
        eprintln!("warning: no --weights: random initialization, seed {}", opts.seed);
    }
}

/// A failure to report: the complete message and the exit status (1: the user's spec, weights or input
/// are wrong; 2: the command line is).
pub struct Fail {
    message: String,
    code: u8,
}

impl Fail {
    pub fn user(message: impl Into<String>) -> Fail {
        Fail { message: message.into(), code: 1 }
    }

    pub fn usage(message: impl Into<String>) -> Fail {
        Fail { message: message.into(), code: 2 }
    }

    /// Prints the message; returns the exit status.
    pub fn report(self) -> ExitCode {
        eprintln!("{}", self.message);
        ExitCode::from(self.code)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::user(e.to_string())
    }
}

/// Dies quietly on a closed pipe (`resnetc compile --emit clif | head`), as Unix tools do, instead of
/// panicking in `println!`.
pub fn default_sigpipe() {
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
