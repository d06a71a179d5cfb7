//! `resnetc predict`: classify image files with a model whose spec says how images are fed (`preprocess`,
//! `resize`) and what its classes are called (`labels`).
//!
//! In: a spec, optional weights, image files and directories of images. Out, per image in the order given
//! (a directory's images sorted by path): its top-K classes on stdout, as text or (`--json`) one JSON object
//! per line, and a row of the `--csv` file. On stderr: each image that cannot be read, when it is met; a
//! progress bar when stderr is a terminal; a throughput line at the end. The exit status is 1 when any image
//! could not be read: every other image is still classified.

use crate::cli::{load, note_random_weights, parse_threads, Fail, IsaOptions, SpecOptions, WeightsOptions};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array3, Array4, Axis};
use resnetc_compiler::backend::{BackendOptions, Compiled};
use resnetc_compiler::images::{self, Prediction};
use resnetc_compiler::report::thousands;
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// File name extensions of the images a directory is searched for (case-insensitive). Files named on the
/// command line are read whatever their name.
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "jpe", "jfif", "png", "bmp", "webp"];
/// The most images one run takes (their paths are held in memory).
const MAX_IMAGES: usize = 1_000_000;
/// The most memory a batch's input, activations and output may take.
const MAX_BATCH_BYTES: usize = 4 << 30;

#[derive(Args)]
pub struct PredictArgs {
    /// The model spec (YAML); its `preprocess`, `resize` and `labels` say how images are fed and named.
    spec: PathBuf,
    /// Image files (JPEG, PNG, BMP, WebP) and directories of them.
    #[arg(required = true, value_name = "IMAGE_OR_DIR")]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    spec_options: SpecOptions,
    #[command(flatten)]
    weights: WeightsOptions,
    /// Classes printed per image, highest first.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    top: u32,
    /// Images run through the model together.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=65536))]
    batch: u32,
    /// Threads for decoding and for the model's kernels (0 = one per core).
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = parse_threads)]
    threads: usize,
    #[command(flatten)]
    isa: IsaOptions,
    /// Print one JSON object per image, one per line: {"file", "top": [{"class", "label", "score"}]} or
    /// {"file", "error"}.
    #[arg(long)]
    json: bool,
    /// Also write the results to this CSV file: a header, then one row per image (file, class, label and score
    /// of each of the top classes, error).
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Search directories' subdirectories too (symbolic links to directories are not followed).
    #[arg(short, long)]
    recursive: bool,
}

/// One image to classify, or a path that already failed (a directory that cannot be listed, a missing file).
struct Item {
    path: PathBuf,
    failed: Option<String>,
}

/// What happened to one image.
enum Outcome {
    Top(Vec<Prediction>),
    Failed(String),
}

#[derive(Serialize)]
struct JsonClass<'a> {
    class: usize,
    label: Option<&'a str>,
    score: f32,
}

#[derive(Serialize)]
struct JsonLine<'a> {
    file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    top: Option<Vec<JsonClass<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

fn is_image_name(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// The images named by `inputs`: files as given, directories searched (sorted by path, recursively with
/// `recursive`). Paths that cannot be read become failed items; notes go to stderr.
fn collect(inputs: &[PathBuf], recursive: bool) -> Result<Vec<Item>, Fail> {
    let mut items = vec![];
    let too_many = || {
        Fail::user(format!(
            "error: more than {} images in one run (the limit); split the run",
            thousands(MAX_IMAGES as u64)
        ))
    };
    for input in inputs {
        let meta = match std::fs::metadata(input) {
            Ok(m) => m,
            Err(e) => {
                items.push(Item { path: input.clone(), failed: Some(format!("cannot read it: {e}")) });
                continue;
            }
        };
        if !meta.is_dir() {
            items.push(Item { path: input.clone(), failed: None });
            continue;
        }
        let (before, mut skipped_dirs) = (items.len(), 0usize);
        // Iterative, so that deep trees cannot exhaust the stack.
        let mut stack = vec![input.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) => {
                    items.push(Item { path: dir, failed: Some(format!("cannot list this directory: {e}")) });
                    continue;
                }
            };
            let mut files = vec![];
            let mut subdirs = vec![];
            for entry in entries {
                let Ok(entry) = entry else { continue };
                let path = entry.path();
                // `file_type` does not follow symbolic links: a link to a directory is not searched (no cycles).
                match entry.file_type() {
                    Ok(t) if t.is_dir() => {
                        if recursive {
                            subdirs.push(path);
                        } else {
                            skipped_dirs += 1;
                        }
                    }
                    Ok(_) if is_image_name(&path) => files.push(path),
                    _ => {}
                }
            }
            if items.len() + files.len() > MAX_IMAGES {
                return Err(too_many());
            }
            items.extend(files.into_iter().map(|path| Item { path, failed: None }));
            stack.extend(subdirs);
        }
        items[before..].sort_by(|a, b| a.path.cmp(&b.path));
        if items.len() == before {
            eprintln!(
                "{}: warning: no images in this directory ({} files)",
                input.display(),
                IMAGE_EXTENSIONS.join(", ")
            );
        }
        if skipped_dirs > 0 {
            let dirs = if skipped_dirs == 1 { "subdirectory" } else { "subdirectories" };
            eprintln!("{}: note: {skipped_dirs} {dirs} not searched (-r searches them)", input.display());
        }
    }
    if items.len() > MAX_IMAGES {
        return Err(too_many());
    }
    Ok(items)
}

/// One image as the model's input, or why it cannot be.
type Prepared = Result<Array3<f32>, String>;

/// Reads and preprocesses the images of one batch on `threads` threads, in order.
fn prepare(items: &[Item], model: &Compiled, threads: usize) -> Vec<Prepared> {
    let one = |item: &Item| -> Prepared {
        if let Some(e) = &item.failed {
            return Err(e.clone());
        }
        let img = images::read_image(&item.path).map_err(|e| e.to_string())?;
        model.preprocess(&img).map_err(|e| e.to_string())
    };
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Prepared>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, items.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = one(item);
                *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            });
        }
    });
    results
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()).unwrap_or_else(|| Err("not processed".into())))
        .collect()
}

/// A CSV field, quoted when it must be (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn run(a: PredictArgs) -> Result<(), Fail> {
    let opts = a.spec_options.options(Some(&a.weights));
    let mut m = load(&a.spec, &opts)?;
    note_random_weights(&opts);
    let shape = m.input_shape().to_vec();
    if shape.len() != 3 || !(shape[2] == 1 || shape[2] == 3) {
        return Err(Fail::user(format!(
            "{}: error: images give 1 (grayscale) or 3 (RGB) channels, but the model's input is {}",
            a.spec.display(),
            resnetc_compiler::ops::fmt_shape(&shape)
        )));
    }
    let items = collect(&a.inputs, a.recursive)?;
    if items.is_empty() {
        return Err(Fail::user("error: no images to classify"));
    }
    let batch = (a.batch as usize).min(items.len());
    // Only the JIT runs: the model's weights move into the compiler.
    let weights = std::mem::take(&mut m.weights);
    // The kernels fold each batch (a batch group; the last, partial batch runs padded).
    let group = batch.min(resnetc_compiler::backend::MAX_BATCH_GROUP);
    let bo = BackendOptions { threads: a.threads, isa: a.isa.isa, batch: group, ..Default::default() };
    let model = m.compile_weights(weights, &bo)?;
    let per_item_bytes = model.plan.arena_bytes
        + 4 * (shape.iter().product::<usize>() + model.program.output_shape().iter().product::<usize>());
    if batch.saturating_mul(per_item_bytes) > MAX_BATCH_BYTES {
        return Err(Fail::user(format!(
            "error: --batch {batch} needs {} bytes for this model's inputs and activations, more than the limit of {}; \
             use --batch {} or less",
            thousands(batch.saturating_mul(per_item_bytes) as u64),
            thousands(MAX_BATCH_BYTES as u64),
            (MAX_BATCH_BYTES / per_item_bytes).max(1)
        )));
    }
    let classes: usize = model.program.output_shape().iter().product();
    let k = (a.top as usize).min(classes);
    let labels = model.labels();

    let mut csv = match &a.csv {
        Some(p) => {
            let f = std::fs::File::create(p)
                .map_err(|e| Fail::user(format!("{}: error: cannot write the CSV file: {e}", p.display())))?;
            let mut w = std::io::BufWriter::new(f);
            let mut header = vec!["file".to_string()];
            for r in 1..=k {
                header.extend([format!("class_{r}"), format!("label_{r}"), format!("score_{r}")]);
            }
            header.push("error".into());
            writeln!(w, "{}", header.join(",")).map_err(|e| Fail::user(format!("{}: error: {e}", p.display())))?;
            Some((p, w))
        }
        None => None,
    };

    let bar = if std::io::stderr().is_terminal() && items.len() > 1 {
        let style = ProgressStyle::with_template("{wide_bar} {pos}/{len} images, {rate}, {eta} left")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key("rate", |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.1}/s", s.per_sec());
            });
        ProgressBar::new(items.len() as u64).with_style(style)
    } else {
        ProgressBar::hidden()
    };
    let stdout = std::io::stdout();
    let (mut ok, mut failed) = (0usize, 0usize);
    let (mut read_secs, mut model_secs) = (0f64, 0f64);
    let t0 = Instant::now();
    for chunk in items.chunks(batch) {
        let t = Instant::now();
        let prepared = prepare(chunk, &model, model.threads());
        read_secs += t.elapsed().as_secs_f64();
        let inputs: Vec<&Array3<f32>> = prepared.iter().filter_map(|r| r.as_ref().ok()).collect();
        let mut tops = vec![];
        if !inputs.is_empty() {
            let t = Instant::now();
            let mut x = Array4::<f32>::zeros((inputs.len(), shape[0], shape[1], shape[2]));
            for (mut row, img) in x.axis_iter_mut(Axis(0)).zip(&inputs) {
                row.assign(img);
            }
            let y = model.run(x.into_dyn().view())?;
            let y = y
                .into_shape_with_order((inputs.len(), classes))
                .map_err(|e| Fail::user(format!("internal error: {e}")))?;
            tops = y.axis_iter(Axis(0)).map(|row| images::top_k(row, k, labels)).collect();
            model_secs += t.elapsed().as_secs_f64();
        }
        let mut tops = tops.into_iter();
        let outcomes: Vec<Outcome> = prepared
            .into_iter()
            .map(|r| match r {
                Ok(_) => Outcome::Top(tops.next().unwrap_or_default()),
                Err(e) => Outcome::Failed(e),
            })
            .collect();
        let mut out = String::new();
        for (item, outcome) in chunk.iter().zip(&outcomes) {
            let file = item.path.display().to_string();
            match outcome {
                Outcome::Top(top) => {
                    ok += 1;
                    if a.json {
                        let top =
                            top.iter().map(|p| JsonClass { class: p.class, label: p.label.as_deref(), score: p.score });
                        let line = JsonLine { file: file.clone(), top: Some(top.collect()), error: None };
                        out += &serde_json::to_string(&line).unwrap_or_default();
                    } else {
                        let named: Vec<String> = top.iter().map(|p| format!("{} ({:.4})", name(p), p.score)).collect();
                        out += &format!("{file}: {}", named.join(", "));
                    }
                    out.push('\n');
                }
                Outcome::Failed(e) => {
                    failed += 1;
                    bar.suspend(|| eprintln!("{file}: error: {e}"));
                    if a.json {
                        out += &serde_json::to_string(&JsonLine { file: file.clone(), top: None, error: Some(e) })
                            .unwrap_or_default();
                        out.push('\n');
                    }
                }
            }
            if let Some((p, w)) = &mut csv {
                let mut row = vec![csv_field(&file)];
                match outcome {
                    Outcome::Top(top) => {
                        for p in top {
                            row.extend([
                                p.class.to_string(),
                                csv_field(p.label.as_deref().unwrap_or("")),
                                p.score.to_string(),
                            ]);
                        }
                        row.push(String::new());
                    }
                    Outcome::Failed(e) => {
                        row.extend(std::iter::repeat_n(String::new(), 3 * k));
                        row.push(csv_field(e));
                    }
                }
                writeln!(w, "{}", row.join(",")).map_err(|e| Fail::user(format!("{}: error: {e}", p.display())))?;
            }
        }
        bar.suspend(|| {
            let mut so = stdout.lock();
            let _ = so.write_all(out.as_bytes()).and_then(|_| so.flush());
        });
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if let Some((p, mut w)) = csv {
        w.flush().map_err(|e| Fail::user(format!("{}: error: {e}", p.display())))?;
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "classified {ok} image(s) in {secs:.2} s: {:.1} images/s (reading and preprocessing {read_secs:.2} s, model {model_secs:.2} s; batch {batch}, {} thread(s))",
        ok as f64 / secs.max(1e-9),
        model.threads()
    );
    if failed > 0 {
        return Err(Fail::user(format!("error: {failed} of {} image(s) could not be read", items.len())));
    }
    Ok(())
}

/// The class's label, or its index when the spec has no labels.
fn name(p: &Prediction) -> String {
    p.label.clone().unwrap_or_else(|| format!("class {}", p.class))
}
