//! Every shipped spec: it validates, and its shapes and parameter totals are what Keras gives.

use resnetc_compiler::{check, Options};

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
