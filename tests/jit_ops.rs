//! The JIT back end on ops the optimizer leaves unfused: standalone relu, batch norm, multi-input add, zero
//! padding, softmax over a feature map, global pools. Against Keras on the committed `ops_edge` fixture, and
//! against the reference interpreter on small inline specs (batch 2, one and two threads).

mod common;

use common::{input, randomize, root, worst};
use ndarray::ArrayD;
use resnetc_compiler::backend::{BackendOptions, Compiled};
use resnetc_compiler::{Model, Options};

fn opts(threads: usize) -> BackendOptions {
    BackendOptions { threads, verify: true, ..Default::default() }
}

/// The kinds of the compiled kernels (first word of each op), sorted, with repeats.
fn kernel_kinds(c: &Compiled) -> Vec<String> {
    let mut v: Vec<String> = c.kernels.iter().map(|k| k.op.to_string()).collect();
    v.sort();
    v
}

#[test]
fn ops_edge_fixture_matches_keras() {
    let o = Options { weights: Some(root("tests/fixtures/ops_edge.safetensors").into()), ..Default::default() };
    let m = Model::from_file(root("tests/fixtures/ops_edge.yaml"), &o).unwrap();
    let x: ArrayD<f32> = ndarray_npy::read_npy(root("tests/fixtures/ops_edge_x.npy")).unwrap();
    let y: ArrayD<f32> = ndarray_npy::read_npy(root("tests/fixtures/ops_edge_y.npy")).unwrap();
    let c = m.compile(&opts(2)).unwrap_or_else(|e| panic!("ops_edge does not compile: {e}"));
    let kinds = kernel_kinds(&c);
    for k in ["batch_norm", "zero_padding", "add"] {
        assert!(kinds.iter().any(|x| x == k), "ops_edge: no `{k}` kernel in {kinds:?}");
    }
    // The five-input add runs as a chain of four binary steps.
    let merge: Vec<&str> =
        c.program.steps().iter().map(|s| s.name.as_str()).filter(|n| n.starts_with("merge (")).collect();
    assert_eq!(merge.len(), 4, "{merge:?}");
    let (d, s) = worst(&c.run(x.view()).unwrap(), &y);
    assert!(d <= 1e-5 * s + 1e-6, "ops_edge: JIT differs from Keras by {d} (scale {s})");
    // And the reference interpreter on the same weights.
    let (d, s) = worst(&c.run(x.view()).unwrap(), &m.run_reference(x.view()).unwrap());
    assert!(d <= 1e-5 * s + 1e-6, "ops_edge: JIT differs from the reference by {d} (scale {s})");
}

/// Compiles `spec` with one and two threads, runs a batch of 2 and compares with the reference interpreter
/// (within 1e-5 relative); both thread counts must agree exactly. Checks that the kernels `expect` are
/// there (each kind at least as many times as listed). Returns the two-thread compiled model.
fn check(what: &str, spec: &str, expect: &[&str]) -> Compiled {
    let mut m = Model::from_str(&format!("{what}.yaml"), spec, &Options::default())
        .unwrap_or_else(|e| panic!("{what}: the spec does not load:\n{e}"));
    randomize(&mut m.weights, 5);
    let x = input(m.input_shape(), 2, 17);
    let want = m.run_reference(x.view()).unwrap();
    let mut first: Option<ArrayD<f32>> = None;
    let mut last = None;
    for threads in [1, 2] {
        let c = m.compile(&opts(threads)).unwrap_or_else(|e| panic!("{what}: does not compile: {e}"));
        let kinds = kernel_kinds(&c);
        for k in expect {
            let need = expect.iter().filter(|e| *e == k).count();
            let have = kinds.iter().filter(|x| x == k).count();
            assert!(have >= need, "{what}: expected {need} `{k}` kernel(s), found {kinds:?}");
        }
        let got = c.run(x.view()).unwrap();
        let (d, s) = worst(&got, &want);
        assert!(d <= 1e-5 * s, "{what} ({threads} thread(s)): JIT differs from the reference by {d} (scale {s})");
        // A second run reuses the arena: every kernel must write all of its output again.
        assert_eq!(c.run(x.view()).unwrap(), got, "{what}: a second run differs");
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(f, &got, "{what}: one and two threads differ"),
        }
        last = Some(c);
    }
    last.unwrap()
}

#[test]
fn relu_on_a_map_with_channels_not_a_multiple_of_4() {
    check("relu", "input: [5, 7, 5]\nlayers:\n  - {op: relu}\n", &["relu"]);
    // More than one task (8192 floats each) and a scalar tail: 37*41*7 = 10619 floats.
    check("relu_big", "input: [37, 41, 7]\nlayers:\n  - {op: relu}\n  - {op: relu}\n", &["relu", "relu"]);
}

#[test]
fn batch_norm_on_the_raw_input() {
    check("bn", "input: [6, 5, 7]\nlayers:\n  - {op: batch_norm, epsilon: 0.01}\n", &["batch_norm"]);
    check("bn_c3", "input: [9, 4, 3]\nlayers:\n  - {op: batch_norm}\n", &["batch_norm"]);
    check("bn_c8_big", "input: [33, 35, 8]\nlayers:\n  - {op: batch_norm}\n", &["batch_norm"]);
}

#[test]
fn adds_of_two_to_five_inputs() {
    let spec = |inputs: &str| {
        format!(
            "input: [4, 6, 6]\nlayers:\n  - {{op: relu, name: a}}\n  - {{op: batch_norm, name: b, inputs: input}}\n  \
             - {{op: softmax, name: c, inputs: input}}\n  - {{op: add, name: sum, inputs: [{inputs}]}}\n"
        )
    };
    check("add2", &spec("a, b"), &["add"]);
    check("add3", &spec("a, b, input"), &["add"]);
    check("add4", &spec("a, b, input, c"), &["add"]);
    check("add5_repeated", &spec("a, a, b, input, a"), &["add"]);
    // The add's result feeds more work (its output lives in the arena, not in the model output).
    let c = check(
        "add3_inner",
        "input: [9, 10, 5]\nlayers:\n  - {op: relu, name: a}\n  - {op: batch_norm, name: b, inputs: input}\n  \
         - {op: add, name: sum, inputs: [a, b, input]}\n  - {op: relu}\n  - {op: global_max_pool}\n",
        &["add", "relu", "relu", "global_max_pool"],
    );
    let chain: Vec<&str> =
        c.program.steps().iter().map(|s| s.name.as_str()).filter(|n| n.starts_with("sum (")).collect();
    assert_eq!(chain, ["sum (1/2)", "sum (2/2)"]);
}

#[test]
fn zero_padding_asymmetric() {
    check("pad", "input: [5, 4, 6]\nlayers:\n  - {op: zero_padding, padding: [[1, 2], [0, 3]]}\n", &["zero_padding"]);
    check(
        "pad_then_pool",
        "input: [7, 6, 3]\nlayers:\n  - {op: zero_padding, padding: [[2, 0], [3, 1]]}\n  \
         - {op: max_pool, pool: 2}\n  - {op: zero_padding, padding: 1}\n  - {op: avg_pool, pool: 3, strides: 1}\n",
        &["zero_padding", "zero_padding"],
    );
    // Rows of more than one task, and a padded map that is later reduced to a vector.
    check(
        "pad_big",
        "input: [30, 31, 9]\nlayers:\n  - {op: zero_padding, padding: [[3, 1], [2, 5]]}\n  - {op: global_avg_pool}\n",
        &["zero_padding", "global_avg_pool"],
    );
}

#[test]
fn softmax_over_a_map() {
    check("softmax", "input: [3, 4, 6]\nlayers:\n  - {op: softmax}\n", &["softmax"]);
    check("softmax_big", "input: [20, 30, 3]\nlayers:\n  - {op: softmax}\n", &["softmax"]);
}

#[test]
fn global_max_pool_and_vector_ops() {
    check("gmax", "input: [6, 7, 10]\nlayers:\n  - {op: global_max_pool}\n", &["global_max_pool"]);
    // Dense followed by standalone vector ops the optimizer cannot fuse.
    check(
        "vector_tail",
        "input: [4, 5, 6]\nlayers:\n  - {op: global_max_pool, name: g}\n  - {op: dense, units: 11}\n  \
         - {op: batch_norm, name: bn}\n  - {op: relu, name: r}\n  - {op: dense, name: d2, inputs: g, units: 11}\n  \
         - {op: add, inputs: [r, d2, bn]}\n  - {op: softmax}\n",
        &["add", "batch_norm", "relu", "softmax", "global_max_pool"],
    );
}

#[test]
fn combinations_with_convolutions() {
    // A conv with two readers keeps its BatchNorm; a three-input add with a conv and the input; padding
    // before a pool; softmax over the final map.
    check(
        "combo",
        "input: [8, 9, 6]\nlayers:\n  - {op: conv, name: c, filters: 6, kernel: 3, padding: same}\n  \
         - {op: batch_norm, name: bn}\n  - {op: relu, name: r}\n  - {op: add, name: sum, inputs: [r, c, input]}\n  \
         - {op: zero_padding, padding: [[0, 1], [2, 0]]}\n  - {op: max_pool, pool: 2, padding: same}\n  \
         - {op: softmax}\n",
        &["add", "batch_norm", "relu", "zero_padding", "softmax"],
    );
    check(
        "combo_head",
        "input: [10, 10, 4]\nlayers:\n  - {op: conv, name: c, filters: 8, kernel: 3, strides: 2}\n  \
         - {op: relu, name: r}\n  - {op: batch_norm, name: bn, inputs: c}\n  - {op: add, inputs: [r, bn, c, r]}\n  \
         - {op: global_max_pool}\n  - {op: dense, units: 5, activation: softmax}\n",
        &["add", "batch_norm", "global_max_pool"],
    );
}

#[test]
fn a_model_whose_output_is_its_input_reshaped() {
    let c = check("flatten_only", "input: [3, 4, 5]\nlayers:\n  - {op: flatten}\n", &["copy"]);
    assert_eq!(c.program.output_shape(), [60]);
}

#[test]
fn dense_softmax_splits_over_threads() {
    // 100 units: several tasks of 8 panels. On two threads the lowering splits the layer: the dense part runs
    // in parallel into an intermediate value and the softmax follows as a kernel of its own; on one thread
    // it is one kernel.
    let spec = "input: [3, 5, 8]\nlayers:\n  - {op: flatten}\n  - {op: dense, units: 100, activation: softmax}\n";
    let c = check("dense_softmax", spec, &["dense"]);
    assert_eq!(c.kernels.iter().map(|k| k.op).collect::<Vec<_>>(), ["dense", "softmax"]);
    assert_eq!(c.kernels[1].name, format!("{}_softmax", c.kernels[0].name));
    assert_eq!(c.kernels[0].node, c.kernels[1].node);
    assert_eq!(c.program.steps().len(), c.kernels.len());
    let m = Model::from_str("dense_softmax.yaml", spec, &Options::default()).unwrap();
    let one = m.compile(&opts(1)).unwrap();
    assert_eq!(one.kernels.iter().map(|k| k.op).collect::<Vec<_>>(), ["dense"]);
}

/// NaN and Inf as Keras treats them (IEEE propagation: relu(NaN) = NaN, a max with NaN is NaN): the JIT is
/// non-finite exactly where the reference interpreter is, per op on small specs (one bad pixel per item), and
/// on the notebook model, whose output a single NaN pixel makes NaN everywhere.
#[test]
fn nan_and_inf_propagate_as_in_the_reference() {
    let specs = [
        ("relu_max_pool", "input: [6, 7, 5]\nlayers:\n  - {op: relu}\n  - {op: max_pool, pool: 3, strides: 2, padding: same}\n"),
        ("global_max", "input: [5, 4, 6]\nlayers:\n  - {op: relu}\n  - {op: global_max_pool}\n"),
        ("global_avg_dense", "input: [5, 4, 6]\nlayers:\n  - {op: global_avg_pool}\n  - {op: dense, units: 9, activation: relu}\n"),
        ("add_bn", "input: [4, 4, 3]\nlayers:\n  - {op: batch_norm, name: bn}\n  - {op: add, inputs: [bn, input, input]}\n  - {op: relu}\n"),
        ("conv_relu", "input: [9, 9, 4]\nlayers:\n  - {op: conv, filters: 6, kernel: 1}\n  - {op: relu}\n  - {op: avg_pool, pool: 2}\n"),
    ];
    for (what, spec) in specs {
        let mut m = Model::from_str(&format!("{what}.yaml"), spec, &Options::default()).unwrap();
        randomize(&mut m.weights, 3);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = input(m.input_shape(), 2, 5);
            x[[0, 1, 2, 0]] = bad;
            x[[1, 3, 3, 2]] = bad;
            let want = m.run_reference(x.view()).unwrap();
            for threads in [1, 2] {
                let got = m.compile(&opts(threads)).unwrap().run(x.view()).unwrap();
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    let ok = if w.is_nan() { g.is_nan() } else { g == w || (g - w).abs() <= 1e-5 * w.abs().max(1.0) };
                    assert!(ok, "{what}, {bad} in the input, {threads} thread(s): output {i} is {g}, reference {w}");
                }
                // (-Inf may meet a relu first, which makes it 0.)
                let reaches = want.iter().any(|v| !v.is_finite());
                assert!(reaches || bad == f32::NEG_INFINITY, "{what}: {bad} reaches no output");
            }
        }
    }
    let mut m = Model::from_file(root("specs/notebook_resnet50.yaml"), &Options::default()).unwrap();
    randomize(&mut m.weights, 4);
    let mut x = input(m.input_shape(), 1, 6);
    x[[0, 30, 20, 1]] = f32::NAN;
    let want = m.run_reference(x.view()).unwrap();
    let got = m.compile(&opts(2)).unwrap().run(x.view()).unwrap();
    assert!(want.iter().all(|v| v.is_nan()) && got.iter().all(|v| v.is_nan()), "{want:?} vs {got:?}");
}
