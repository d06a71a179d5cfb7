//! The optimizer: each pass where it must fire and where it must not, the fused kernel counts of the
//! shipped specs, the memory plan, and numerics (optimized graph = unoptimized graph on the reference
//! interpreter, with trained-looking BatchNorm statistics so that folding is really exercised).

mod common;

use common::{assert_close, input, randomize};
use ndarray::ArrayD;
use resnetc_compiler::backend::BackendOptions;
use resnetc_compiler::graph::Graph;
use resnetc_compiler::passes::{self, Pass};
use resnetc_compiler::weights::Weights;
use resnetc_compiler::{Model, Options};

fn spec_path(name: &str) -> String {
    format!("{}/specs/{name}.yaml", env!("CARGO_MANIFEST_DIR"))
}

fn model(text: &str) -> Model {
    Model::from_str("t.yaml", text, &Options::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn kinds(g: &Graph) -> Vec<&'static str> {
    let mut v: Vec<&str> = g.topo().into_iter().map(|n| g.node(n).op.kind()).collect();
    v.sort();
    v
}

fn count(g: &Graph, kind: &str) -> usize {
    g.g.node_weights().filter(|n| n.op.kind() == kind).count()
}

#[test]
fn notebook_resnet50_fuses_to_56_kernels() {
    let m = Model::from_file(spec_path("notebook_resnet50"), &Options::default()).unwrap();
    let o = m.optimize(None).unwrap();
    let p = o.lower(&BackendOptions { threads: 1, ..Default::default() }).unwrap();
    let steps: Vec<&str> = p.lowered.kernels.iter().map(|k| k.op.kind()).collect();
    let c = |k: &str| steps.iter().filter(|s| **s == k).count();
    assert_eq!((c("conv"), c("max_pool"), c("avg_pool"), c("dense")), (53, 1, 1, 1));
    assert_eq!(steps.len(), 56);
    for k in ["batch_norm", "relu", "add", "zero_padding", "softmax"] {
        assert_eq!(count(&o.graph, k), 0, "{k} left");
    }
    assert!(o.graph.g.node_weights().any(|n| matches!(
        n.op,
        resnetc_compiler::ops::Op::Dense { activation: resnetc_compiler::ops::Activation::Softmax, .. }
    )));
    let r = &o.report.rewrites;
    assert_eq!((r["fold_padding"], r["fold_batch_norm"], r["fuse_residual_add"]), (1, 53, 16));
    // 33 relus directly after a conv (+BN) and 16 after a fused add.
    assert_eq!(r["fuse_conv_relu"], 49);
}

#[test]
fn every_shipped_spec_has_no_bn_relu_add_left_and_a_tight_arena() {
    for name in ["notebook_resnet50", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"] {
        let m = Model::from_file(spec_path(name), &Options::default()).unwrap();
        let o = m.optimize(None).unwrap();
        for k in ["batch_norm", "relu", "add", "zero_padding"] {
            assert_eq!(count(&o.graph, k), 0, "{name}: {k} left");
        }
        let plan = o.lower(&BackendOptions { threads: 1, ..Default::default() }).unwrap().plan;
        plan.verify().unwrap();
        let (a, lb) = (plan.arena_bytes as f64, plan.lower_bound_bytes as f64);
        assert!(a <= lb * 1.10, "{name}: arena {a} vs lower bound {lb}");
        assert!(lb < plan.total_bytes as f64, "{name}: no reuse");
        // The caller's weights are untouched: the folded tensors live in the optimizer's copy.
        assert!(m.weights.tensors.keys().all(|k| !k.contains('+')));
        assert!(o.weights.tensors.keys().any(|k| k.contains('+')));
    }
}

#[test]
fn optimized_equals_unoptimized_on_every_shipped_spec() {
    for (name, hw) in [
        ("notebook_resnet50", 64),
        ("resnet18", 40),
        ("resnet34", 32),
        ("resnet50", 32),
        ("resnet101", 32),
        ("resnet152", 32),
    ] {
        let opts = Options { input_shape: Some(vec![hw, hw, 3]), ..Default::default() };
        let mut m = Model::from_file(spec_path(name), &opts).unwrap();
        randomize(&mut m.weights, 7);
        let before = m.weights.clone();
        let x = input(&[hw, hw, 3], 2, 1);
        let y0 = m.run_reference(x.view()).unwrap();
        let o = m.optimize(None).unwrap();
        let y1 = o.run_reference(x.view());
        assert_close(&y1, &y0, 1e-5, name);
        assert_eq!(m.weights, before, "{name}: the optimizer changed the caller's weights");
    }
}

const CHAIN: &str = "
input: [9, 9, 3]
layers:
  - {op: zero_padding, name: pad, padding: [[1, 2], [0, 1]]}
  - {op: conv, name: c1, filters: 4, kernel: 3, strides: 2, padding: same}
  - {op: batch_norm, name: bn1}
  - {op: relu, name: r1}
  - {op: zero_padding, name: pad2, padding: 1}
  - {op: max_pool, name: mp, pool: 3, strides: 2}
  - {op: conv, name: c2, filters: 4, kernel: 1}
  - {op: batch_norm, name: bn2}
  - {op: add, name: add, shortcut: mp}
  - {op: relu, name: out}
  - {op: global_avg_pool}
  - {op: dense, name: fc, units: 3}
  - {op: softmax}
";

#[test]
fn every_pass_fires_on_a_small_chain() {
    let mut m = model(CHAIN);
    randomize(&mut m.weights, 3);
    let o = m.optimize(None).unwrap();
    assert_eq!(kinds(&o.graph), ["conv", "conv", "dense", "global_avg_pool", "input", "max_pool"]);
    let r = &o.report.rewrites;
    assert_eq!(
        (
            r["fold_padding"],
            r["fold_batch_norm"],
            r["fuse_residual_add"],
            r["fuse_conv_relu"],
            r["fuse_dense_activation"]
        ),
        (2, 2, 1, 2, 1)
    );
    let x = input(&[9, 9, 3], 3, 5);
    assert_close(&o.run_reference(x.view()), &m.run_reference(x.view()).unwrap(), 1e-5, "chain");
}

#[test]
fn dont_fold_padding_before_max_pool_on_possibly_negative_input() {
    let o = model(
        "input: [8, 8, 2]\nlayers:\n  - {op: zero_padding, padding: 1}\n  - {op: max_pool, pool: 3, strides: 2}\n",
    )
    .optimize(None)
    .unwrap();
    assert_eq!(count(&o.graph, "zero_padding"), 1);
}

#[test]
fn dont_fold_padding_before_avg_pool_or_when_shared() {
    let o = model(
        "input: [8, 8, 2]\nlayers:\n  - {op: relu}\n  - {op: zero_padding, padding: 1}\n  - {op: avg_pool, pool: 3}\n",
    )
    .optimize(None)
    .unwrap();
    assert_eq!(count(&o.graph, "zero_padding"), 1);
    let shared = "input: [8, 8, 2]\nlayers:\n  - {op: zero_padding, name: p, padding: 1}\n  - {op: conv, name: a, filters: 2, kernel: 3}\n  - {op: conv, name: b, inputs: p, filters: 2, kernel: 3}\n  - {op: add, inputs: [a, b]}\n";
    let o = model(shared).optimize(None).unwrap();
    assert_eq!(count(&o.graph, "zero_padding"), 1);
}

#[test]
fn weights_moved_into_the_optimizer_are_folded_in_place() {
    // Moved in (as the CLI does), a conv kernel is scaled where it lies; shared with a model, it is copied
    // first. The two give the same folded weights.
    let mut m = model(CHAIN);
    randomize(&mut m.weights, 3);
    let shared = m.optimize(None).unwrap();
    let kernel = |w: &Weights, key: &str| (w.tensors[key].as_ptr(), (*w.tensors[key]).clone());
    let (at, before) = kernel(&m.weights, "c1.kernel");
    assert_ne!(kernel(&shared.weights, "c1+bn1.kernel").0, at, "a shared kernel is copied");
    let w = std::mem::take(&mut m.weights);
    let moved = m.optimize_weights(w, None).unwrap();
    let (folded_at, folded) = kernel(&moved.weights, "c1+bn1.kernel");
    assert_eq!(folded_at, at, "folded in place");
    assert_ne!(folded, before, "and scaled");
    assert_eq!(moved.weights, shared.weights);
}

#[test]
fn dont_fold_batch_norm_when_the_conv_output_is_used_twice() {
    let text = "input: [6, 6, 2]\nlayers:\n  - {op: conv, name: c, filters: 2, kernel: 1}\n  - {op: batch_norm, name: bn}\n  - {op: add, inputs: [bn, c]}\n";
    let mut m = model(text);
    randomize(&mut m.weights, 1);
    let o = m.optimize(None).unwrap();
    assert_eq!(count(&o.graph, "batch_norm"), 1);
    let x = input(&[6, 6, 2], 1, 2);
    assert_close(&o.run_reference(x.view()), &m.run_reference(x.view()).unwrap(), 1e-5, "bn kept");
}

#[test]
fn dont_fold_batch_norm_after_something_other_than_a_conv() {
    let o = model("input: [6, 6, 2]\nlayers:\n  - {op: relu}\n  - {op: batch_norm}\n").optimize(None).unwrap();
    assert_eq!(count(&o.graph, "batch_norm"), 1);
}

#[test]
fn dont_fuse_add_without_a_private_conv_operand() {
    // Both operands are relus: nothing to fuse the add into.
    let text = "input: [6, 6, 2]\nlayers:\n  - {op: relu, name: a}\n  - {op: relu, name: b, inputs: input}\n  - {op: add, inputs: [a, b]}\n";
    assert_eq!(count(&model(text).optimize(None).unwrap().graph, "add"), 1);
    // The conv's output is also the other operand's input: it must stay materialized.
    let text = "input: [6, 6, 2]\nlayers:\n  - {op: conv, name: c, filters: 2, kernel: 1}\n  - {op: relu, name: r}\n  - {op: add, inputs: [c, r]}\n";
    let o = model(text).optimize(None).unwrap();
    assert_eq!((count(&o.graph, "add"), count(&o.graph, "relu")), (1, 1));
    // Three operands.
    let text = "input: [6, 6, 2]\nlayers:\n  - {op: conv, name: c, filters: 2, kernel: 1}\n  - {op: add, inputs: [c, input, input]}\n";
    assert_eq!(count(&model(text).optimize(None).unwrap().graph, "add"), 1);
}

#[test]
fn dont_fuse_relu_into_a_shared_conv_or_twice() {
    let text = "input: [6, 6, 2]\nlayers:\n  - {op: conv, name: c, filters: 2, kernel: 1}\n  - {op: relu, name: r}\n  - {op: add, inputs: [r, c]}\n";
    assert_eq!(count(&model(text).optimize(None).unwrap().graph, "relu"), 1);
    let text = "input: [6, 6, 2]\nlayers:\n  - {op: conv, filters: 2, kernel: 1}\n  - {op: relu}\n  - {op: relu}\n";
    assert_eq!(count(&model(text).optimize(None).unwrap().graph, "relu"), 1);
}

#[test]
fn dont_fuse_softmax_into_a_dense_that_has_an_activation() {
    let text = "input: [2, 2, 2]\nlayers:\n  - {op: flatten}\n  - {op: dense, units: 3, activation: relu}\n  - {op: softmax}\n";
    assert_eq!(count(&model(text).optimize(None).unwrap().graph, "softmax"), 1);
}

#[test]
fn dump_after_each_pass() {
    let m = model(CHAIN);
    for p in passes::PASSES {
        let o = m.optimize(Some(p.name)).unwrap();
        let d = o.report.dump.unwrap_or_else(|| panic!("no dump after {}", p.name));
        assert!(d.contains("fc"), "{}", p.name);
    }
    let after_bn = m.optimize(Some("fold_batch_norm")).unwrap().report.dump.unwrap();
    assert!(after_bn.contains("c1+bn1") && !after_bn.contains("batch_norm"), "{after_bn}");
    assert!(after_bn.contains("relu"), "relu is fused later: {after_bn}");
}

#[test]
fn a_pass_that_breaks_the_graph_is_named() {
    fn corrupt(g: &mut Graph, _: &mut Weights) -> usize {
        let n = g.output;
        g.g[n].shape = vec![7];
        1
    }
    let passes = [Pass { name: "corrupt_shapes", about: "test", run: corrupt }];
    let m = model(CHAIN);
    let e = passes::run_pipeline(&passes, 1, &m.graph, m.weights.clone(), None).unwrap_err();
    assert_eq!(e.pass, "corrupt_shapes");
    assert!(e.to_string().contains("after pass `corrupt_shapes`"), "{e}");
}

/// The optimized notebook model still matches Keras (needs the reference peers' models: `#[ignore]`d, run
/// with `--include-ignored` where they are).
#[test]
#[ignore]
fn optimized_notebook_matches_keras_with_peers() {
    let dir = std::env::var("RESNETC_PEERS").map(std::path::PathBuf::from).unwrap_or_else(|_| {
        std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/resnetc-peers/models")
    });
    assert!(dir.join("seed.safetensors").exists(), "no reference peers in {}", dir.display());
    let opts = Options { weights: Some(dir.join("seed.safetensors")), ..Default::default() };
    let m = Model::from_file(spec_path("notebook_resnet50"), &opts).unwrap();
    let x: ArrayD<f32> = ndarray_npy::read_npy(dir.join("seed_x.npy")).unwrap();
    let y: ArrayD<f32> = ndarray_npy::read_npy(dir.join("seed_y.npy")).unwrap();
    let o = m.optimize(None).unwrap();
    assert_close(&o.run_reference(x.view()), &y, 1e-5, "optimized notebook vs Keras");
}
