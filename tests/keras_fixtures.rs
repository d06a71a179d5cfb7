//! resnetc's reference interpreter against Keras, on small fixtures checked in under `tests/fixtures/`
//! (made by `tests/fixtures/make_fixtures.py`; see its header to rerun it). No Python or network needed.
//!
//! Each fixture NAME is a spec (`NAME.yaml`), Keras weights (`NAME.safetensors`), an NHWC input batch
//! (`NAME_x.npy`) and Keras's `predict` output for it (`NAME_y.npy`); `params.json` holds Keras's
//! `count_params()` per fixture. The graph as written and the optimized graph both run on the reference
//! interpreter. The full-size reference models (`~/.cache/resnetc-peers/models`, or the directory
//! `RESNETC_PEERS` names; made outside the repository by the developers' peers set-up) are checked by the
//! `#[ignore]`d `peers_*` tests: `cargo test --release --test keras_fixtures -- --include-ignored`.

use ndarray::ArrayD;
use resnetc_compiler::{Model, Options};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read_npy(path: &Path) -> ArrayD<f32> {
    ndarray_npy::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load(spec: &Path, weights: &Path) -> Model {
    let opts = Options { weights: Some(weights.to_owned()), ..Default::default() };
    let model = Model::from_file(spec, &opts).unwrap_or_else(|e| panic!("{} does not load:\n{e}", spec.display()));
    // No warnings: every node reaches the output and every Keras tensor is used by a node of the same name.
    assert!(model.warnings.0.is_empty(), "{} loads with warnings:\n{}", spec.display(), model.warnings);
    assert!(model.projections.is_empty(), "{}: resnetc inserted projections {:?}", spec.display(), model.projections);
    model
}

/// Largest |a - b| and where (flat index), with `tol = 1e-5 * max|want| + 1e-6`; panics past it.
fn assert_close(what: &str, got: &ArrayD<f32>, want: &ArrayD<f32>) -> f32 {
    assert_eq!(got.shape(), want.shape(), "{what}: output shape");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let tol = 1e-5 * scale + 1e-6;
    let (mut worst, mut at) = (0.0f32, 0);
    for (i, (a, b)) in got.iter().zip(want.iter()).enumerate() {
        let d = (a - b).abs();
        if d > worst || d.is_nan() {
            (worst, at) = (if d.is_nan() { f32::INFINITY } else { d }, i);
        }
    }
    let (g, w) = (got.iter().nth(at).copied().unwrap_or(0.0), want.iter().nth(at).copied().unwrap_or(0.0));
    assert!(
        worst <= tol,
        "{what}: resnetc differs from Keras by {worst:e} (> {tol:e} = 1e-5 * max|y| + 1e-6) at flat index {at} \
         of shape {:?}: resnetc {g}, Keras {w}",
        want.shape()
    );
    eprintln!("{what}: max |resnetc - keras| = {worst:e} (tolerance {tol:e}, max|y| = {scale})");
    worst
}

fn keras_params(name: &str) -> usize {
    let path = fixtures().join("params.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    v["params"][name].as_u64().unwrap_or_else(|| panic!("{}: no params.{name}", path.display())) as usize
}

fn check_fixture(name: &str) {
    let dir = fixtures();
    let model = load(&dir.join(format!("{name}.yaml")), &dir.join(format!("{name}.safetensors")));
    assert_eq!(model.graph.params(), keras_params(name), "{name}: parameters, resnetc vs Keras's count_params()");
    let x = read_npy(&dir.join(format!("{name}_x.npy")));
    let want = read_npy(&dir.join(format!("{name}_y.npy")));
    assert_eq!(x.shape()[0], 2, "{name}: the fixture input is a batch of 2");
    let got = model.run_reference(x.view()).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_close(name, &got, &want);
    // The optimized graph (padding and BatchNorm folded, adds and relus fused) on the same interpreter.
    let opt = model.optimize(None).unwrap_or_else(|e| panic!("{name}: the optimizer failed: {e}"));
    assert_close(&format!("{name} (optimized)"), &opt.run_reference(x.view()), &want);
}

#[test]
fn tiny_resnet() {
    check_fixture("tiny_resnet");
}

#[test]
fn tiny_apps() {
    check_fixture("tiny_apps");
}

#[test]
fn ops_edge() {
    check_fixture("ops_edge");
}

/// Every fixture file is used by a test here, and together they stay small.
#[test]
fn fixtures_are_complete_and_small() {
    let names = ["tiny_resnet", "tiny_apps", "ops_edge"];
    let mut total = 0;
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        let file = entry.file_name().to_string_lossy().into_owned();
        if !meta.is_file() {
            continue; // e.g. a __pycache__
        }
        total += meta.len();
        let known = file == "params.json"
            || file == "make_fixtures.py"
            || names.iter().any(|n| {
                [".yaml", ".safetensors", "_x.npy", "_y.npy"].iter().any(|suffix| file == format!("{n}{suffix}"))
            });
        assert!(known, "tests/fixtures/{file} is not a known fixture file");
    }
    for n in names {
        keras_params(n);
    }
    assert!(total <= 300_000, "tests/fixtures holds {total} bytes, over the 300 KB budget");
}

/// The directory of the full-size reference models, if there is one.
fn peers() -> Option<PathBuf> {
    let dir = match std::env::var_os("RESNETC_PEERS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/resnetc-peers/models"),
    };
    dir.is_dir().then_some(dir)
}

/// Checks `spec` against the peers' `NAME.safetensors`, `NAME_x.npy`, `NAME_y.npy`; fails when they are not
/// there (these tests are `#[ignore]`d: run them where the peers are).
fn check_peer(spec: &str, name: &str) {
    let dir = peers().expect("no reference models in ~/.cache/resnetc-peers/models (or set RESNETC_PEERS)");
    let files = [format!("{name}.safetensors"), format!("{name}_x.npy"), format!("{name}_y.npy")].map(|f| dir.join(f));
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        panic!("{} is missing", missing.display());
    }
    let model = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("specs").join(spec), &files[0]);
    let (x, want) = (read_npy(&files[1]), read_npy(&files[2]));
    let got = model.run_reference(x.view()).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_close(&format!("{spec} on {}", files[0].display()), &got, &want);
    let opt = model.optimize(None).unwrap_or_else(|e| panic!("{spec}: the optimizer failed: {e}"));
    assert_close(&format!("{spec} (optimized)"), &opt.run_reference(x.view()), &want);
    for isa in resnetc_compiler::codegen::x86::Isa::available() {
        for threads in [1, 2] {
            let o = resnetc_compiler::backend::BackendOptions { threads, isa, ..Default::default() };
            let c = model.compile(&o).unwrap_or_else(|e| panic!("{spec}: does not compile: {e}"));
            let got = c.run(x.view()).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_close(&format!("{spec} (JIT, {isa}, {threads} thread(s))"), &got, &want);
        }
    }
}

/// The notebook ResNet50 (64x64x3) against Keras (needs the peers' models; CI has none).
#[test]
#[ignore]
fn peers_notebook_resnet50() {
    check_peer("notebook_resnet50.yaml", "seed");
}

/// keras.applications.ResNet50 (224x224x3) against Keras: ~20 s in the reference interpreter.
#[test]
#[ignore]
fn peers_imagenet_resnet50() {
    check_peer("resnet50.yaml", "imagenet");
}
