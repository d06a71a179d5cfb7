//! The `resnetc` command line, run as a user would: exit codes (0 ok, 1 user error, 2 usage), help,
//! located error messages, and the outputs of every subcommand.

use ndarray::{Array4, ArrayD};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn resnetc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resnetc"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the resnetc binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_exit(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "stdout:\n{}\nstderr:\n{}", stdout(o), stderr(o));
}

/// A fresh scratch directory for one test under the system temp dir.
fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("resnetc-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

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
    let common = ["--input-shape", "--no-auto-projection", "--seed"];
    let cases: &[(&str, &[&str])] = &[
        ("check", &["<SPECS>..."]),
        ("compile", &["--weights", "--json"]),
        ("summary", &["<SPEC>"]),
        ("dot", &["--output"]),
        ("run", &["--weights", "--input", "--output", "--backend"]),
    ];
    for (sub, opts) in cases {
        let o = resnetc(&[sub, "--help"]);
        assert_exit(&o, 0);
        let out = stdout(&o);
        for opt in common.iter().chain(opts.iter()) {
            assert!(out.contains(opt), "`{sub} --help` does not mention `{opt}`:\n{out}");
        }
    }
    // `help <sub>` works too.
    assert_exit(&resnetc(&["help", "run"]), 0);
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
    assert!(stderr(&o).contains("cannot read a float32 .npy array"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn compile_json() {
    let o = resnetc(&["compile", "specs/notebook_resnet50.yaml", "--json", "--threads", "2"]);
    assert_exit(&o, 0);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("valid JSON");
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
