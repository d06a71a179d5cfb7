//! Every shipped spec: it validates, and its shapes and parameter totals are what Keras gives.

use resnetc_compiler::{check, Options};

mod common;
use common::cli::*;

fn load(name: &str) -> resnetc_compiler::graph::Graph {
    let path = format!("{}/specs/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap();
    let (ok, diags) = check(&path, &bytes, &Options::default());
    assert_eq!(diags.0, vec![], "{path} gave diagnostics:\n{diags}");
    ok.unwrap().1
}

fn shape_of(g: &resnetc_compiler::graph::Graph, name: &str) -> Vec<usize> {
    g.node(g.find(name).unwrap_or_else(|| panic!("no node `{name}`"))).shape.clone()
}

#[test]
fn notebook_resnet50() {
    let g = load("notebook_resnet50");
    assert_eq!(g.params(), 23_600_006);
    assert_eq!(shape_of(&g, "conv1"), [32, 32, 64]);
    assert_eq!(shape_of(&g, "res2a_branch2c"), [15, 15, 256]);
    assert_eq!(shape_of(&g, "res3a_branch1"), [8, 8, 512]);
    assert_eq!(shape_of(&g, "res5c_branch2c"), [2, 2, 2048]);
    assert_eq!(shape_of(&g, "avg_pool"), [1, 1, 2048]);
    assert_eq!(shape_of(&g, "fc6"), [6]);
    assert_eq!(g.node(g.output).name, "fc6");
    // 53 convolutions and 53 batch norms, as in the notebook.
    let count = |k: &str| g.g.node_weights().filter(|n| n.op.kind() == k).count();
    assert_eq!((count("conv"), count("batch_norm"), count("add")), (53, 53, 16));
}

#[test]
fn keras_applications_resnets() {
    for (name, params, nodes) in
        [("resnet50", 25_636_712, 177), ("resnet101", 44_707_176, 347), ("resnet152", 60_419_944, 517)]
    {
        let g = load(name);
        assert_eq!(g.params(), params, "{name}");
        assert_eq!(g.g.node_count(), nodes, "{name}");
        assert_eq!(shape_of(&g, "conv1_conv"), [112, 112, 64]);
        assert_eq!(shape_of(&g, "pool1_pool"), [56, 56, 64]);
        assert_eq!(shape_of(&g, "conv2_block3_out"), [56, 56, 256]);
        assert_eq!(shape_of(&g, "conv3_block1_out"), [28, 28, 512]);
        assert_eq!(shape_of(&g, "conv5_block3_out"), [7, 7, 2048]);
        assert_eq!(shape_of(&g, "predictions"), [1000]);
    }
    assert_eq!(load("resnet50").macs(), 3_857_973_248);
}

#[test]
fn basic_block_resnets_get_projections() {
    for (name, params, blocks) in [("resnet18", 11_696_424, 8), ("resnet34", 21_812_008, 16)] {
        let path = format!("{}/specs/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
        let (ok, _) = check(&path, &std::fs::read(&path).unwrap(), &Options::default());
        let (_, g, projections) = ok.unwrap();
        assert_eq!(g.params(), params, "{name}");
        let names: Vec<&str> = projections.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["conv3_block1_0_conv", "conv4_block1_0_conv", "conv5_block1_0_conv"]);
        assert!(projections.iter().all(|p| p.strides == [2, 2]));
        assert_eq!(g.g.node_weights().filter(|n| n.op.kind() == "add").count(), blocks);
        assert_eq!(shape_of(&g, "conv5_block1_0_conv"), [7, 7, 512]);
        assert_eq!(shape_of(&g, "predictions"), [1000]);
    }
}

#[test]
fn resnet50_spec_stays_short() {
    let text = std::fs::read_to_string(format!("{}/specs/resnet50.yaml", env!("CARGO_MANIFEST_DIR"))).unwrap();
    assert!(text.lines().count() <= 80, "resnet50.yaml has {} lines", text.lines().count());
}

#[test]
fn input_shape_override() {
    let path = format!("{}/specs/resnet50.yaml", env!("CARGO_MANIFEST_DIR"));
    let opts = Options { input_shape: Some(vec![64, 96, 3]), ..Default::default() };
    let (ok, diags) = check(&path, &std::fs::read(&path).unwrap(), &opts);
    assert!(!diags.has_errors(), "{diags}");
    let g = ok.unwrap().1;
    assert_eq!(shape_of(&g, "conv5_block3_out"), [2, 3, 2048]);
}

/// The layer names Keras 3.15 gives tests/fixtures/make_fixtures.py's `tiny_resnet()` (printed with
/// `[l.name for l in tiny_resnet().layers]` in a fresh session), apart from its `input_layer`.
const KERAS_TINY_RESNET_NAMES: &str = "zero_padding2d conv1 bn_conv1 activation max_pooling2d res2a_branch2a \
    bn2a_branch2a activation_1 res2a_branch2b bn2a_branch2b activation_2 res2a_branch2c res2a_branch1 bn2a_branch2c \
    bn2a_branch1 add activation_3 res2b_branch2a bn2b_branch2a activation_4 res2b_branch2b bn2b_branch2b activation_5 \
    res2b_branch2c bn2b_branch2c add_1 activation_6 res3a_branch2a bn3a_branch2a activation_7 res3a_branch2b \
    bn3a_branch2b activation_8 res3a_branch2c res3a_branch1 bn3a_branch2c bn3a_branch1 add_2 activation_9 \
    res3b_branch2a bn3b_branch2a activation_10 res3b_branch2b bn3b_branch2b activation_11 res3b_branch2c \
    bn3b_branch2c add_3 activation_12 avg_pool flatten fc3";

#[test]
fn unnamed_nodes_are_named_as_keras_names_them() {
    let path = format!("{}/tests/fixtures/tiny_resnet.yaml", env!("CARGO_MANIFEST_DIR"));
    let (ok, d) = check(&path, &std::fs::read(&path).unwrap(), &Options::default());
    assert!(d.0.is_empty(), "{d}");
    let mut ours: Vec<String> = ok.unwrap().0.nodes.iter().map(|n| n.name.clone()).collect();
    let mut keras: Vec<&str> = KERAS_TINY_RESNET_NAMES.split_whitespace().collect();
    ours.sort();
    keras.sort();
    assert_eq!(ours, keras);
    // The notebook model's unnamed layers, the same way (16 adds, 49 activations).
    let g = load("notebook_resnet50");
    for name in ["zero_padding2d", "max_pooling2d", "activation", "activation_48", "add", "add_15", "flatten"] {
        assert!(g.find(name).is_some(), "no `{name}`");
    }
    assert!(g.find("activation_49").is_none() && g.find("add_16").is_none());
    // Every name is short.
    for spec in ["notebook_resnet50", "resnet50", "resnet152", "resnet18"] {
        let g = load_any(spec);
        let longest = g.g.node_weights().map(|n| n.name.len()).max().unwrap();
        assert!(longest <= 32, "{spec}: a name of {longest} bytes");
    }
}

fn load_any(name: &str) -> resnetc_compiler::graph::Graph {
    let path = format!("{}/specs/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    let (ok, d) = check(&path, &std::fs::read(&path).unwrap(), &Options::default());
    assert!(!d.has_errors(), "{d}");
    ok.unwrap().1
}

#[test]
fn check_notes_each_inserted_projection_at_its_shortcut() {
    let o = resnetc(&["check", "specs/resnet18.yaml"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    let notes: Vec<&str> = out.lines().filter(|l| l.contains(": note: ")).collect();
    assert_eq!(notes.len(), 3, "{out}");
    // Where the block's `add` names its shortcut, with the instance's projection.
    assert_eq!(
        notes[0],
        "specs/resnet18.yaml:21:63: note: inserted shortcut projection `conv3_block1_0_conv`: 1x1 conv stride 2x2 from \
         `conv2_block2_out` [56, 56, 64] to [28, 28, 128] for `conv3_block1_add`"
    );
}

#[test]
fn dot_draws_block_instances_as_clusters() {
    let o = resnetc(&["dot", "specs/resnet50.yaml"]);
    assert_eq!(o.status.code(), Some(0));
    let dot = String::from_utf8_lossy(&o.stdout);
    // One cluster per block instance (16), labelled like the spec's use.
    assert_eq!(dot.matches("subgraph cluster_").count(), 16);
    assert!(dot.contains("label=\"projection_block(name=conv2_block1, filters=64, stride=1)\""), "{dot}");
    assert!(dot.contains("label=\"identity_block(stage=2, filters=64, i=3)\""), "{dot}");
    // Inside it, the block's nodes; outside, the stem.
    let c0 = dot.find("subgraph cluster_0").unwrap();
    assert!(dot[c0..].find("conv2_block1_0_conv").unwrap() < dot[c0..].find("subgraph cluster_1").unwrap());
    assert!(dot.find("conv1_conv").unwrap() < c0);
    // --collapse: one box per instance, edges between them (the shortcuts inside are gone).
    let o = resnetc(&["dot", "--collapse", "specs/resnet50.yaml"]);
    assert_eq!(o.status.code(), Some(0));
    let dot = String::from_utf8_lossy(&o.stdout);
    assert_eq!(dot.matches("style=\"rounded,filled\"").count(), 16, "{dot}");
    assert!(
        dot.contains("b0 [label=\"projection_block(name=conv2_block1, filters=64, stride=1)\\n[56, 56, 256]\""),
        "{dot}"
    );
    assert!(dot.contains("  b0 -> b1;"), "{dot}");
    assert_eq!(dot.matches(" -> ").count(), 6 + 16 + 2, "{dot}");
    // Nested blocks nest their clusters; `repeat` instances are numbered.
    let d = std::env::temp_dir().join(format!("resnetc-specs-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let spec = d.join("nested.yaml");
    std::fs::write(
        &spec,
        "input: [8, 8, 3]\nblocks:\n  unit:\n    nodes:\n      - {op: relu}\n  stage:\n    params: [s]\n    nodes:\n      \
         - {use: unit, repeat: 2}\nlayers:\n  - {use: stage, with: {s: 1}}\n",
    )
    .unwrap();
    let o = resnetc(&["dot", &spec.display().to_string()]);
    let dot = String::from_utf8_lossy(&o.stdout);
    let (outer, inner) = (dot.find("label=\"stage(s=1)\"").unwrap(), dot.find("label=\"unit() #2\"").unwrap());
    assert!(outer < inner, "{dot}");
    let _ = std::fs::remove_dir_all(&d);
}
