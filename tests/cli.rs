//! The `resnetc` command line, run as a user would: exit codes (0 ok, 1 user error, 2 usage), help,
//! located error messages, and the outputs of every subcommand.

use ndarray::{Array4, ArrayD};
use std::path::Path;
use std::process::Command;

mod common;
use common::cli::*;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// A small classifier: 8x8x3 in, 7 classes out, with a residual shortcut that needs a projection.
const TINY: &str = "\
model: tiny
input: [8, 8, 3]
layers:
  - {op: conv, name: c1, filters: 4, kernel: 3, padding: same}
  - {op: batch_norm, name: bn1}
  - {op: relu, name: r1}
  - {op: conv, name: c2, filters: 8, kernel: 3, strides: 2, padding: same}
  - {op: batch_norm, name: bn2}
  - {op: add, name: sum, shortcut: r1}
  - {op: relu}
  - {op: global_avg_pool}
  - {op: dense, name: fc, units: 7, activation: softmax}
";

#[test]
fn help_for_the_top_level() {
    let o = resnetc(&["--help"]);
    assert_exit(&o, 0);
    let out = stdout(&o);
    for sub in ["check", "compile", "summary", "dot", "run"] {
        assert!(out.contains(sub), "`{sub}` missing from:\n{out}");
    }
    assert_exit(&resnetc(&["--version"]), 0);
}

#[test]
fn help_for_every_subcommand() {
    let spec_options = ["--input-shape", "--no-auto-projection"];
    let cases: &[(&str, &[&str])] = &[
        ("check", &["<SPECS>..."]),
        ("compile", &["--weights", "--seed", "--json", "--threads", "--dump-after", "--emit"]),
        ("summary", &["<SPEC>", "--weights"]),
        ("dot", &["--output", "--after"]),
        ("run", &["--weights", "--seed", "--input", "--output", "--backend", "--threads"]),
        ("bench", &["--weights", "--seed", "--batch", "--threads", "--iters", "--profile", "--json", "--paced"]),
    ];
    for (sub, opts) in cases {
        let o = resnetc(&[sub, "--help"]);
        assert_exit(&o, 0);
        let out = stdout(&o);
        for opt in spec_options.iter().chain(opts.iter()) {
            assert!(out.contains(opt), "`{sub} --help` does not mention `{opt}`:\n{out}");
        }
    }
    // `help <sub>` works too.
    assert_exit(&resnetc(&["help", "run"]), 0);
    // Commands that use no weights take no seed.
    for sub in ["check", "summary", "dot"] {
        let o = resnetc(&[sub, "specs/resnet50.yaml", "--seed", "3"]);
        assert_exit(&o, 2);
        assert!(stderr(&o).contains("unexpected argument '--seed'"), "{sub}: {}", stderr(&o));
    }
}

#[test]
fn check_the_shipped_specs() {
    let o = resnetc(&["check", "specs/notebook_resnet50.yaml", "specs/resnet50.yaml"]);
    assert_exit(&o, 0);
    let out = stdout(&o);
    assert!(out.contains("specs/notebook_resnet50.yaml: ok: 177 nodes, 23,600,006 parameters"), "{out}");
    assert!(out.contains("specs/resnet50.yaml: ok:"), "{out}");
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

#[test]
fn check_an_invalid_spec() {
    let d = scratch("invalid");
    let bad = write(
        &d,
        "bad.yaml",
        "input: [8, 8, 3]\nlayers:\n  - {op: Conv2D, name: c1, filters: 4, kernel: 3}\n  - {op: relu, inputs: c2}\n",
    );
    let o = resnetc(&["check", &bad]);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{bad}:3:10: error: node `c1`: unknown op `Conv2D` (did you mean `conv`?)")),
        "{err}"
    );
    assert!(err.contains(&format!("{bad}:4:24: error:")), "{err}");
    assert!(err.contains("unknown node `c2` (did you mean `c1`?)"), "{err}");
    assert!(err.contains(&format!("{bad}: 2 error(s)")), "{err}");
    // A good spec and a bad one: the good one is checked, the run still fails.
    let o = resnetc(&["check", "specs/notebook_resnet50.yaml", &bad]);
    assert_exit(&o, 1);
    assert!(stdout(&o).contains("notebook_resnet50.yaml: ok"));
    assert!(stderr(&o).contains("1 of 2 spec(s) failed"), "{}", stderr(&o));
    // The other subcommands refuse it the same way.
    for sub in ["compile", "summary", "dot"] {
        let o = resnetc(&[sub, &bad]);
        assert_exit(&o, 1);
        assert!(stderr(&o).contains(&format!("{bad}:3:10: error:")), "{sub}: {}", stderr(&o));
    }
    // Binary input is a located error, not a crash.
    let bin = d.join("bin.yaml");
    std::fs::write(&bin, b"\x89PNG\r\n\x1a\n\0\0").unwrap();
    let o = resnetc(&["check", &bin.display().to_string()]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains(&format!("{}:1:1: error:", bin.display())), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn check_a_missing_file() {
    let o = resnetc(&["check", "no/such/spec.yaml"]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("no/such/spec.yaml"), "{}", stderr(&o));
}

#[test]
fn usage_errors_exit_2() {
    let o = resnetc(&["check", "--frobnicate", "specs/resnet50.yaml"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("--frobnicate"), "{}", stderr(&o));
    assert_exit(&resnetc(&["--frobnicate"]), 2);
    assert_exit(&resnetc(&[]), 2);
    assert_exit(&resnetc(&["check"]), 2);
    assert_exit(&resnetc(&["frobnicate"]), 2);
    let o = resnetc(&["summary", "specs/resnet50.yaml", "--input-shape", "32,32"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("expected three positive integers H,W,C, found `32,32`"), "{}", stderr(&o));
    assert_exit(&resnetc(&["run", "specs/resnet50.yaml", "--input", "x.npy", "--backend", "gpu"]), 2);
}

#[test]
fn bad_option_values_are_usage_errors() {
    // An unknown pass.
    let o = resnetc(&["compile", "specs/resnet50.yaml", "--dump-after", "foo"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("invalid value 'foo' for '--dump-after <PASS>': unknown pass; the passes are: "));
    assert!(stderr(&o).contains("fold_batch_norm"), "{}", stderr(&o));
    let o = resnetc(&["dot", "specs/resnet50.yaml", "--after", "bogus"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("invalid value 'bogus' for '--after <PASS>': unknown pass"), "{}", stderr(&o));
    // More threads than the machine allows, or not a count: refused before anything is loaded.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for sub in ["compile", "run", "bench"] {
        let mut args = vec![sub, "specs/resnet50.yaml", "--threads", "10000"];
        if sub == "run" {
            args.extend(["--input", "x.npy"]);
        }
        let o = resnetc(&args);
        assert_exit(&o, 2);
        let want = format!(
            "invalid value '10000' for '--threads <N>': 10000 threads: this machine allows at most {} (4 per core, \
             {cores} core(s) available)",
            4 * cores
        );
        assert!(stderr(&o).contains(&want), "{sub}: {}", stderr(&o));
    }
    let o = resnetc(&["bench", "specs/resnet50.yaml", "--threads", "1e12"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("expected a whole number of threads (0 = one per core), found `1e12`"));
    // A batch whose input would exceed 1 GiB; zero iterations; an iteration count that would not end.
    let o = resnetc(&["bench", "specs/resnet50.yaml", "--batch", "1000000"]);
    assert_exit(&o, 2);
    assert!(
        stderr(&o).contains(
            "invalid value '1000000' for '--batch <N>': a batch may hold at most 1 GiB of float32 input or output, \
             which is 1783 items of [224, 224, 3] → [1000] for this model"
        ),
        "{}",
        stderr(&o)
    );
    // One item larger than a batch may be.
    let d = scratch("huge-item");
    let spec = write(&d, "tiny.yaml", TINY);
    let o = resnetc(&["bench", &spec, "--input-shape", "10000,10000,3"]);
    assert_exit(&o, 2);
    assert!(
        stderr(&o).contains(
            "invalid value '1' for '--batch <N>': one item of [10000, 10000, 3] → [7] takes 1200.0 MB of float32, \
             more than the 1 GiB a batch may hold"
        ),
        "{}",
        stderr(&o)
    );
    // Larger still, the model's activations pass their limit first (a spec error, located).
    let o = resnetc(&["bench", &spec, "--input-shape", "15000,15000,3"]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("bytes of activations per batch item in all, more than the limit"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&d);
    for (opt, v) in [("--batch", "0"), ("--iters", "0"), ("--iters", "1000000000")] {
        let o = resnetc(&["bench", "specs/resnet50.yaml", opt, v]);
        assert_exit(&o, 2);
        assert!(stderr(&o).contains(&format!("invalid value '{v}' for '{opt} <N>'")), "{}", stderr(&o));
    }
}

/// TINY's weights, initialized with `seed` and saved as safetensors in `d`.
fn tiny_weights(d: &Path, seed: u64) -> String {
    let opts = resnetc_compiler::Options { seed, ..Default::default() };
    let m = resnetc_compiler::Model::from_str("tiny.yaml", TINY, &opts).unwrap();
    let p = d.join(format!("tiny_{seed}.safetensors"));
    resnetc_compiler::weights::save_safetensors(&m.weights, &p).unwrap();
    p.display().to_string()
}

#[test]
fn run_says_when_weights_are_random_and_times_inference_only() {
    let d = scratch("run-notice");
    let spec = write(&d, "tiny.yaml", TINY);
    let xin = d.join("x.npy");
    ndarray_npy::write_npy(&xin, &Array4::<f32>::from_elem((3, 8, 8, 3), 0.25)).unwrap();
    let x = xin.display().to_string();
    for backend in ["jit", "reference"] {
        let o = resnetc(&["run", &spec, "--input", &x, "--backend", backend]);
        assert_exit(&o, 0);
        let err = stderr(&o);
        assert!(err.contains("warning: no --weights: random initialization, seed 0\n"), "{err}");
        assert!(err.contains("ran a batch of 3 in ") && err.contains(" ms (inference only)"), "{err}");
        assert_eq!(stdout(&o).lines().filter(|l| l.starts_with("item ")).count(), 3);
        let o = resnetc(&["run", &spec, "--input", &x, "--backend", backend, "--seed", "7"]);
        assert_exit(&o, 0);
        assert!(stderr(&o).contains("warning: no --weights: random initialization, seed 7\n"), "{}", stderr(&o));
    }
    // Compiling is timed apart from running.
    let o = resnetc(&["run", &spec, "--input", &x]);
    assert!(stderr(&o).contains("compiled ") && stderr(&o).contains(" tier) in "), "{}", stderr(&o));
    // With weights: no notice, and the seed-7 weights give what --seed 7 gave.
    let w = tiny_weights(&d, 7);
    let (out_w, y_w) = run_model(&d, &spec, &Array4::from_elem((3, 8, 8, 3), 0.25), &["--weights", &w]);
    let (out_s, y_s) = run_model(&d, &spec, &Array4::from_elem((3, 8, 8, 3), 0.25), &["--seed", "7"]);
    assert_eq!(out_w, out_s);
    assert_eq!(y_w, y_s);
    let o = resnetc(&["run", &spec, "--input", &d.join("x.npy").display().to_string(), "--weights", &w]);
    assert_exit(&o, 0);
    assert!(!stderr(&o).contains("no --weights"), "{}", stderr(&o));
    // bench says it too.
    let o = resnetc(&["bench", &spec, "--iters", "1", "--threads", "1"]);
    assert_exit(&o, 0);
    assert!(stderr(&o).contains("warning: no --weights: random initialization, seed 0"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn run_refuses_hostile_inputs() {
    let d = scratch("run-hostile");
    let spec = write(&d, "tiny.yaml", TINY);
    // An empty batch.
    let empty = d.join("empty.npy");
    ndarray_npy::write_npy(&empty, &Array4::<f32>::zeros((0, 8, 8, 3))).unwrap();
    let o = resnetc(&["run", &spec, "--input", &empty.display().to_string()]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains(&format!(
            "{}: error: the input is an empty batch (shape [0, 8, 8, 3]): N must be at least 1; expected [N, 8, 8, 3]",
            empty.display()
        )),
        "{}",
        stderr(&o)
    );
    // A device and a directory instead of a file.
    for (path, what) in [("/dev/zero", "a character device"), ("/", "a directory")] {
        let o = resnetc(&["run", &spec, "--input", path]);
        assert_exit(&o, 1);
        let want = format!("{path}: error: an input batch must be a regular file, found {what}");
        assert!(stderr(&o).contains(&want), "{}", stderr(&o));
    }
    // A header that declares far more data than the file holds: refused before allocating it.
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let mut h = b"{'descr': '<f4', 'fortran_order': False, 'shape': (100000000, 8, 8, 3), }".to_vec();
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(b' ');
    }
    h.push(b'\n');
    npy.extend_from_slice(&(h.len() as u16).to_le_bytes());
    npy.extend_from_slice(&h);
    npy.extend_from_slice(&[0; 64]);
    let huge = d.join("huge.npy");
    std::fs::write(&huge, npy).unwrap();
    let o = resnetc(&["run", &spec, "--input", &huge.display().to_string()]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("the header declares shape [100000000, 8, 8, 3], more than 1 GiB of float32"),
        "{}",
        stderr(&o)
    );
    // float64 gets a hint.
    let f64_path = d.join("f64.npy");
    ndarray_npy::write_npy(&f64_path, &Array4::<f64>::zeros((1, 8, 8, 3))).unwrap();
    let o = resnetc(&["run", &spec, "--input", &f64_path.display().to_string()]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("save it with x.astype('float32')"), "{}", stderr(&o));
    // A weights path that is a device.
    let o = resnetc(&["run", &spec, "--input", &empty.display().to_string(), "--weights", "/dev/zero"]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("/dev/zero: a weights file must be a regular file, found a character device"),
        "{}",
        stderr(&o)
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn summary_checks_weights() {
    let d = scratch("summary-weights");
    let spec = write(&d, "tiny.yaml", TINY);
    let w = tiny_weights(&d, 1);
    let o = resnetc(&["summary", &spec, "--weights", &w]);
    assert_exit(&o, 0);
    assert!(stdout(&o).contains("Total params"), "{}", stdout(&o));
    assert!(stdout(&o).contains(&format!("Weights: {w} checked")), "{}", stdout(&o));
    // Weights of another model: every missing tensor is named.
    let o = resnetc(&["summary", "specs/notebook_resnet50.yaml", "--weights", &w]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains(&format!("{w}: missing tensor `conv1.kernel`, expected shape [7, 7, 3, 64]")));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn compile_reports_for_a_user() {
    let d = scratch("compile-report");
    let spec = write(&d, "tiny.yaml", TINY);
    let o = resnetc(&["compile", &spec, "--threads", "1", "--isa", "f32x4"]);
    assert_exit(&o, 0);
    let out = stdout(&o);
    let first = out.lines().next().unwrap();
    assert!(first.starts_with("compiled `tiny` in "), "{out}");
    assert!(first.ends_with(" s: input [8, 8, 3] → output [7], 5 kernels (f32x4 tier) on 1 thread(s)"), "{out}");
    for want in [
        "  parameters   ",
        "  memory       ",
        " per run in progress: activations (2,112 bytes in all, reused across layers) and the kernels' scratch",
        "  optimizer    11 → 6 nodes: ",
        "fold_batch_norm 2, ",
        "shortcut_projections 1\n",
        "inserted shortcut projection `sum_shortcut_proj`",
        "  time (ms)    spec ",
        "next:\n",
        &format!("  resnetc run {spec} --weights W.safetensors --input BATCH.npy "),
        "# BATCH.npy: float32 [N, 8, 8, 3] (NHWC)",
        &format!("  resnetc bench {spec} "),
    ] {
        assert!(out.contains(want), "`{want}` missing from:\n{out}");
    }
    // Jargon is gone; a pass that inserted nothing is not listed.
    for gone in ["arena", "with work", "finalize", "remove_dead_nodes 0"] {
        assert!(!out.contains(gone), "`{gone}` in:\n{out}");
    }
    // The JSON keys the report had are still there; the projection pass counts what it inserted.
    let o = resnetc(&["compile", &spec, "--json", "--threads", "1"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("valid JSON");
    assert_eq!(v["fusions"]["shortcut_projections"], 1);
    assert_eq!(v["threads"], 1);
    assert!(v["compile_ms"].as_f64().is_some_and(|ms| ms > 0.0));
    for key in ["arena_bytes", "arena_with_work_bytes", "work_bytes", "packed_weight_bytes", "stages_ms"] {
        assert!(!v[key].is_null(), "{key} in {v}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn summary_of_the_notebook_model() {
    let o = resnetc(&["summary", "specs/notebook_resnet50.yaml"]);
    assert_exit(&o, 0);
    let out = stdout(&o);
    assert!(out.contains("Total params: 23,600,006"), "{out}");
    assert!(out.contains("fc6"), "{out}");
}

#[test]
fn summary_with_an_input_shape_override() {
    // A 32x32 input changes the shapes, not the parameter count of the convolutional trunk.
    let o = resnetc(&["summary", "specs/resnet50.yaml", "--input-shape", "64,64,3"]);
    assert_exit(&o, 0);
    let out = stdout(&o);
    assert!(out.contains("(None, 64, 64, 3)"), "{out}");
    assert!(out.contains("(None, 2, 2, 2048)"), "{out}");
}

#[test]
fn dot_draws_shortcuts_dashed() {
    let o = resnetc(&["dot", "specs/notebook_resnet50.yaml"]);
    assert_exit(&o, 0);
    let out = stdout(&o);
    assert!(out.starts_with("digraph"), "{}", &out[..out.len().min(200)]);
    assert!(out.contains("style=dashed"), "no dashed shortcut edge");
    assert!(out.trim_end().ends_with('}'));
    // To a file, with an inserted projection shaded.
    let d = scratch("dot");
    let spec = write(&d, "tiny.yaml", TINY);
    let out_path = d.join("tiny.dot");
    let o = resnetc(&["dot", &spec, "-o", &out_path.display().to_string()]);
    assert_exit(&o, 0);
    let text = std::fs::read_to_string(&out_path).unwrap();
    assert!(text.contains("digraph \"tiny\""), "{text}");
    assert!(text.contains("sum_shortcut_proj") && text.contains("fillcolor"), "{text}");
    assert!(text.contains("style=dashed"), "{text}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Runs `spec` on `x` with the given extra arguments; returns stdout and the output batch.
fn run_model(d: &Path, spec: &str, x: &Array4<f32>, extra: &[&str]) -> (String, ArrayD<f32>) {
    let xin = d.join("x.npy");
    ndarray_npy::write_npy(&xin, x).unwrap();
    let yout = d.join("y.npy");
    let _ = std::fs::remove_file(&yout);
    let (xs, ys) = (xin.display().to_string(), yout.display().to_string());
    let mut args = vec!["run", spec, "--input", &xs, "--output", &ys];
    args.extend_from_slice(extra);
    let o = resnetc(&args);
    assert_exit(&o, 0);
    (stdout(&o), ndarray_npy::read_npy(&yout).expect("the output .npy is written"))
}

#[test]
fn run_a_tiny_model() {
    let d = scratch("run");
    let spec = write(&d, "tiny.yaml", TINY);
    let x = Array4::<f32>::from_shape_fn((2, 8, 8, 3), |(n, h, w, c)| ((n * 7 + h * 3 + w * 5 + c) % 11) as f32 / 11.0);
    let (out, y) = run_model(&d, &spec, &x, &["--backend", "reference"]);
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("item ")).collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (i, l) in lines.iter().enumerate() {
        assert!(l.starts_with(&format!("item {i}: ")), "{l}");
        // Five "class: probability" pairs.
        assert_eq!(l.matches(": ").count(), 1 + 5, "{l}");
    }
    assert_eq!(y.shape(), &[2, 7]);
    for row in y.outer_iter() {
        let s: f32 = row.sum();
        assert!((s - 1.0).abs() < 1e-4, "softmax row sums to {s}");
        assert!(row.iter().all(|p| p.is_finite() && *p >= 0.0));
    }
    // The printed top class is the largest output.
    let best = y.outer_iter().next().unwrap().iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    assert!(lines[0].starts_with(&format!("item 0: {best}: ")), "{} vs class {best}", lines[0]);
    // The default (JIT) back end agrees with the reference interpreter.
    let (out_jit, y_jit) = run_model(&d, &spec, &x, &[]);
    assert_eq!(out_jit.lines().filter(|l| l.starts_with("item ")).count(), 2, "{out_jit}");
    assert_eq!(y_jit.shape(), y.shape());
    let diff = (&y_jit - &y).iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(diff < 1e-4, "JIT and reference differ by {diff}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn run_with_an_input_of_the_wrong_shape() {
    let d = scratch("run-shape");
    let spec = write(&d, "tiny.yaml", TINY);
    let xin = d.join("x.npy");
    ndarray_npy::write_npy(&xin, &Array4::<f32>::zeros((1, 5, 5, 3))).unwrap();
    let o = resnetc(&["run", &spec, "--input", &xin.display().to_string()]);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(err.contains(&xin.display().to_string()), "{err}");
    assert!(err.contains("[1, 5, 5, 3]"), "found shape missing: {err}");
    assert!(err.contains("[N, 8, 8, 3]"), "expected shape missing: {err}");
    assert!(!err.contains("panicked"), "{err}");
    // Not a .npy at all.
    let junk = write(&d, "junk.npy", "not numpy");
    let o = resnetc(&["run", &spec, "--input", &junk]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains(&format!("{junk}: error: not a .npy file: it does not start with")), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn compile_json() {
    // The f32x4 tier, which every machine runs: which 3x3 convolutions run as Winograd depends on the tier
    // (the cost model), and with it the packed weights' size checked below.
    let o = resnetc(&["compile", "specs/notebook_resnet50.yaml", "--json", "--threads", "2", "--isa", "f32x4"]);
    assert_exit(&o, 0);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("valid JSON");
    assert_eq!(v["isa"], "f32x4");
    assert_eq!(v["model"], "notebook_resnet50");
    assert_eq!(v["params"], 23_600_006);
    assert_eq!(v["input_shape"], serde_json::json!([64, 64, 3]));
    assert_eq!(v["output_shape"], serde_json::json!([6]));
    // 53 convs, 2 pools, the dense layer and (on two threads) its softmax; equal plans share a function.
    assert_eq!(v["functions"], 25);
    let kernels = v["kernel_list"].as_array().expect("a kernel list");
    assert_eq!(kernels.len(), 57);
    let algos = |a: &str| kernels.iter().filter(|k| k["algorithm"] == a).count();
    assert_eq!(algos("winograd stem F(3x3,4x4)"), 1, "{kernels:?}");
    assert_eq!(kernels[0]["name"], "conv1+bn_conv1");
    assert!(kernels.iter().all(|k| k["packed_weight_bytes"].as_u64().is_some() && k["macs"].as_u64().is_some()));
    let (macs, packed): (u64, u64) = kernels
        .iter()
        .fold((0, 0), |(m, p), k| (m + k["macs"].as_u64().unwrap(), p + k["packed_weight_bytes"].as_u64().unwrap()));
    assert_eq!((macs, packed), (v["macs"].as_u64().unwrap(), v["packed_weight_bytes"].as_u64().unwrap()));
    assert_eq!(
        v["arena_with_work_bytes"].as_u64().unwrap(),
        v["arena_bytes"].as_u64().unwrap() + 2 * v["work_bytes"].as_u64().unwrap()
    );
    // Winograd kernels keep their weights transformed (16/9 or 36/9 of the 3x3 kernels' size): the packed
    // weights are larger than the model's, by a share set by its 3x3 layers (here ~21 %).
    let (w, packed) = (v["weight_bytes"].as_f64().unwrap(), v["packed_weight_bytes"].as_f64().unwrap());
    assert!((1.15..1.25).contains(&(packed / w)), "packed {packed} vs weights {w}");
    // With an inserted projection, listed by name.
    let d = scratch("json");
    let spec = write(&d, "tiny.yaml", TINY);
    let o = resnetc(&["compile", &spec, "--json"]);
    assert_exit(&o, 0);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("valid JSON");
    assert_eq!(v["projections"], serde_json::json!(["sum_shortcut_proj"]));
    // --no-auto-projection refuses it instead.
    let o = resnetc(&["compile", &spec, "--json", "--no-auto-projection"]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains(&format!("{spec}:9:5: error: node `sum`: the shortcut needs a projection")),
        "{}",
        stderr(&o)
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bench_json_and_profile() {
    let d = scratch("bench");
    let spec = write(&d, "tiny.yaml", TINY);
    let o = resnetc(&["bench", &spec, "--iters", "3", "--threads", "2", "--json"]);
    assert_exit(&o, 0);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("valid JSON");
    for key in ["compile_ms", "median_ms", "min_ms", "gflops"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key} in {v}");
    }
    assert_eq!(v["threads"], 2);
    // A node that runs as several steps (an add of three inputs; a dense softmax on two threads) is one
    // profile row.
    let spec = write(
        &d,
        "chain.yaml",
        "input: [8, 8, 4]\nlayers:\n  - {op: conv, name: c1, filters: 4, kernel: 3, padding: same}\n  \
         - {op: conv, name: c2, filters: 4, kernel: 1, inputs: input}\n  - {op: add, name: sum, inputs: [c1, c2, input]}\n  \
         - {op: global_avg_pool}\n  - {op: dense, name: fc, units: 7, activation: softmax}\n",
    );
    let o = resnetc(&["bench", &spec, "--iters", "2", "--threads", "2", "--profile"]);
    assert_exit(&o, 0);
    let out = stdout(&o);
    for node in ["sum ", "fc "] {
        assert_eq!(out.lines().filter(|l| l.starts_with(node)).count(), 1, "one `{node}` row in:\n{out}");
    }
    // Paced: `ready`, then one timing per input line.
    let mut p = Command::new(env!("CARGO_BIN_EXE_resnetc"))
        .args(["bench", &spec, "--threads", "1", "--paced"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(p.stdin.as_mut().unwrap(), b"\n\n\n").unwrap();
    let o = p.wait_with_output().unwrap();
    assert_exit(&o, 0);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(lines[0], "ready");
    assert!(lines[1..].iter().all(|l| l.parse::<f64>().is_ok_and(|ms| ms > 0.0)), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}

/// `compile --emit asm`: each kernel's machine code, then the wide micro-kernels disassembled (on a CPU
/// with a wide tier); `--dump-after lower` and `dot --after lower` show each kernel's algorithm.
#[test]
fn compile_emits_asm_and_dumps_the_lowered_program() {
    let o = resnetc(&["compile", "tests/fixtures/tiny_resnet.yaml", "--emit", "asm", "--threads", "1"]);
    assert_exit(&o, 0);
    let out = stdout(&o);
    assert!(out.contains("; kernel 0: `"), "{out}");
    let wide = resnetc_compiler::codegen::x86::Isa::detect();
    if wide.is_wide() {
        assert!(out.contains("; micro-kernel GemmUkernel {") && out.contains("vfmadd231ps"), "{out}");
        assert!(out.contains("vzeroupper"), "every micro-kernel returns with vzeroupper");
    } else {
        eprintln!("no wide tier on this CPU: the micro-kernel listing is not checked");
    }
    let o = resnetc(&["compile", "specs/resnet50.yaml", "--dump-after", "lower", "--isa", "f32x4", "--threads", "1"]);
    assert_exit(&o, 0);
    let out = stdout(&o);
    assert!(out.starts_with("lowered: 56 kernels over 57 values, 1 thread(s);"), "{out}");
    assert!(out.contains("conv %0 [winograd stem F(3x3,4x4): 1444 tiles of 3x3, 12 per task"), "{out}");
    assert!(out.lines().filter(|l| l.contains("[strassen: ")).count() == 14, "{out}");
    let o = resnetc(&["dot", "tests/fixtures/tiny_resnet.yaml", "--after", "lower"]);
    assert_exit(&o, 0);
    assert!(stdout(&o).starts_with("digraph lowered {") && stdout(&o).contains("winograd"), "{}", stdout(&o));
}
