//! Keras configs in (`resnetc_compiler::keras` and `resnetc import-keras`), on the Keras configs checked in
//! under `tests/fixtures/keras/` (what `model.to_json()` wrote, made by `tests/fixtures/make_fixtures.py`;
//! no Python needed here): the converted specs compute what Keras computed, carry the hand-written specs'
//! weights, write `add` nodes with `shortcut:` edges; every layer or setting resnetc lacks is refused by name.

use ndarray::ArrayD;
use resnetc_compiler::backend::BackendOptions;
use resnetc_compiler::keras::{self, Conversion};
use resnetc_compiler::{weights, Model, Options};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::cli::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn config(name: &str) -> Value {
    let p = fixtures().join(format!("keras/{name}.json"));
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn convert(name: &str, v: &Value) -> Result<Conversion, String> {
    keras::convert(&format!("{name}.json"), v.to_string().as_bytes(), None).map_err(|d| d.to_string())
}

#[track_caller]
fn refused(name: &str, v: &Value) -> String {
    match convert(name, v) {
        Ok(c) => panic!("{name}: converted, expected an error:\n{}", c.spec),
        Err(e) => e,
    }
}

/// The layer object of that name in a Keras 3 config.
fn layer<'a>(v: &'a mut Value, name: &str) -> &'a mut Value {
    v["config"]["layers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|l| l["config"]["name"] == name)
        .unwrap_or_else(|| panic!("no layer `{name}`"))
}

fn read_npy(path: &Path) -> ArrayD<f32> {
    ndarray_npy::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn keras_params(name: &str) -> usize {
    let v: Value = serde_json::from_slice(&std::fs::read(fixtures().join("params.json")).unwrap()).unwrap();
    v["params"][name].as_u64().unwrap_or_else(|| panic!("params.json has no {name}")) as usize
}

/// Largest |got - want| relative to max |want|.
fn rel_diff(got: &ArrayD<f32>, want: &ArrayD<f32>) -> f32 {
    assert_eq!(got.shape(), want.shape());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    got.iter().zip(want).map(|(a, b)| if (a - b).is_nan() { f32::INFINITY } else { (a - b).abs() }).fold(0f32, f32::max)
        / scale
}

/// The converted spec, loaded with the fixture's Keras weights: it computes what Keras computed.
#[test]
fn converted_fixtures_match_keras() {
    for (name, dir) in [("tiny_resnet", ""), ("tiny_apps", ""), ("ops_edge", ""), ("tiny_seq", "keras/")] {
        let conv = convert(name, &config(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let opts = Options { weights: Some(fixtures().join(format!("{dir}{name}.safetensors"))), ..Default::default() };
        let model = Model::from_str(&format!("{name}.yaml"), &conv.spec, &opts)
            .unwrap_or_else(|e| panic!("{name}: the converted spec does not load:\n{e}\n{}", conv.spec));
        // Every Keras weight tensor is used by the node of its layer's name, and every node reaches the output.
        assert!(model.warnings.0.is_empty(), "{name}: {}", model.warnings);
        assert!(model.projections.is_empty(), "{name}: {:?}", model.projections);
        assert_eq!(model.graph.params(), keras_params(name), "{name}: parameters vs Keras's count_params()");
        let x = read_npy(&fixtures().join(format!("{dir}{name}_x.npy")));
        let want = read_npy(&fixtures().join(format!("{dir}{name}_y.npy")));
        let d = rel_diff(&model.run_reference(x.view()).unwrap(), &want);
        assert!(d <= 1e-5, "{name}: reference interpreter differs from Keras by {d:e} relative");
        let c = model.compile(&BackendOptions { threads: 1, ..Default::default() }).unwrap();
        let d = rel_diff(&c.run(x.view()).unwrap(), &want);
        assert!(d <= 1e-5, "{name}: JIT differs from Keras by {d:e} relative");
    }
}

/// The converted specs need exactly the weights the hand-written ones do (names and shapes).
#[test]
fn converted_specs_need_the_hand_written_weights() {
    for name in ["tiny_resnet", "tiny_apps", "ops_edge"] {
        let conv = convert(name, &config(name)).unwrap();
        let converted = Model::from_str("c.yaml", &conv.spec, &Options::default()).unwrap();
        let written = Model::from_file(fixtures().join(format!("{name}.yaml")), &Options::default()).unwrap();
        let req = |m: &Model| {
            let mut v: Vec<(String, Vec<usize>)> =
                weights::required(&m.graph).into_iter().map(|(k, s, _)| (k, s)).collect();
            v.sort();
            v
        };
        assert_eq!(req(&converted), req(&written), "{name}");
        assert_eq!(converted.input_shape(), written.input_shape(), "{name}");
        assert_eq!(converted.output_shape(), written.output_shape(), "{name}");
    }
}

/// Residual adds are written with `shortcut:` edges, the main path (the deeper operand) read top to bottom;
/// a conv with an activation becomes two nodes; identity layers are left out with a comment.
#[test]
fn spec_text_is_readable() {
    let s = convert("tiny_resnet", &config("tiny_resnet")).unwrap().spec;
    let lines: Vec<&str> = s.lines().collect();
    let at = |l: &str| lines.iter().position(|x| x.trim() == l).unwrap_or_else(|| panic!("no line `{l}` in\n{s}"));
    // The notebook's convolutional block: main path, then the projection shortcut, then the add.
    let main = at("- {op: batch_norm, name: bn2a_branch2c}");
    let proj = at("- {op: conv, name: res2a_branch1, inputs: max_pooling2d, filters: 6, kernel: 1}");
    let add = at("- {op: add, name: add, inputs: [bn2a_branch2c], shortcut: bn2a_branch1}");
    assert!(main < proj && proj < add, "{s}");
    // The identity block: the shortcut is the block's input.
    at("- {op: add, name: add_1, shortcut: activation_3}");
    at("- {op: conv, name: res3b_branch2b, filters: 5, kernel: 2, padding: same}");
    at("input: {shape: [36, 28, 3], name: input_layer}");
    let m = Model::from_str("t.yaml", &s, &Options::default()).unwrap();
    let g = &m.graph;
    // The projection branch is the add's shortcut edge (drawn dashed).
    let (sc, add) = (g.find("bn2a_branch1").unwrap().index(), g.find("add").unwrap().index());
    let dot = resnetc_compiler::report::dot(g);
    assert!(dot.contains(&format!("n{sc} -> n{add} [style=dashed")), "{dot}");

    let seq = convert("tiny_seq", &config("tiny_seq")).unwrap();
    for l in [
        "- {op: conv, name: conv_a, filters: 4, kernel: 3}",
        "- {op: relu, name: conv_a_relu}",
        "# `drop_a` (Dropout): an identity at inference, left out",
        "- {op: conv, name: conv_b, filters: 6, kernel: [3, 2], strides: [1, 2], padding: same}",
        "- {op: softmax, name: conv_b_softmax}",
        "- {op: dense, name: fc_a, units: 7, activation: relu}",
        "# `logits` (Activation): an identity at inference, left out",
    ] {
        assert!(seq.spec.lines().any(|x| x.trim() == l), "no line `{l}` in\n{}", seq.spec);
    }
    assert_eq!(seq.notes.len(), 3, "{:?}", seq.notes);
    // Mixed precision converts, with a note: resnetc computes in float32.
    let mut v = config("tiny_seq");
    layer(&mut v, "conv_b")["config"]["dtype"]["config"]["name"] = json!("mixed_bfloat16");
    let notes = convert("tiny_seq", &v).unwrap().notes;
    assert!(notes.contains(&"layer `conv_b` (Conv2D) computes in mixed_bfloat16 in Keras; resnetc computes in float32, so the outputs differ by mixed_bfloat16 rounding".to_string()), "{notes:?}");
    let apps = convert("tiny_apps", &config("tiny_apps")).unwrap().spec;
    assert!(apps.contains("{op: batch_norm, name: conv1_bn, epsilon: 1.001e-5}"), "{apps}");
    assert!(apps.contains("{op: zero_padding, name: conv1_pad, padding: 3}"), "{apps}");
    let edge = convert("ops_edge", &config("ops_edge")).unwrap().spec;
    assert!(edge.contains("padding: [[1, 2], [0, 3]]"), "{edge}");
    assert!(edge.contains("inputs: [conv_s2, max_same, avg_same, max_padded, avg_padded]"), "{edge}");
}

/// Every layer resnetc has no op for is refused, all of them at once, each by name and class.
#[test]
fn unsupported_layers_are_refused_by_name() {
    let mut v = config("tiny_seq");
    layer(&mut v, "relu_b")["class_name"] = json!("LeakyReLU");
    layer(&mut v, "pool_a")["class_name"] = json!("DepthwiseConv2D");
    let e = refused("tiny_seq", &v);
    assert!(e.contains("layer `relu_b` (LeakyReLU) is not supported: resnetc converts InputLayer, Conv2D"), "{e}");
    assert!(e.contains("layer `pool_a` (DepthwiseConv2D) is not supported"), "{e}");
    assert_eq!(e.matches("error:").count(), 2, "{e}");
    assert!(e.starts_with("error: tiny_seq.json: "), "{e}");
}

/// Settings that would change what a supported layer computes are refused, naming layer, field and value.
#[test]
fn settings_resnetc_lacks_are_refused() {
    type Edit = fn(&mut Value);
    let cases: &[(&str, &str, Edit, &str)] = &[
        (
            "tiny_seq",
            "dilation",
            |v| layer(v, "conv_a")["config"]["dilation_rate"] = json!([2, 2]),
            "layer `conv_a` (Conv2D): `dilation_rate` is [2,2]: resnetc convolutions have dilation 1",
        ),
        ("tiny_seq", "groups", |v| layer(v, "conv_b")["config"]["groups"] = json!(2), "`groups` is 2"),
        (
            "tiny_seq",
            "channels_first",
            |v| layer(v, "conv_a")["config"]["data_format"] = json!("channels_first"),
            "`data_format` is \"channels_first\": resnetc tensors are NHWC",
        ),
        (
            "tiny_seq",
            "sigmoid",
            |v| layer(v, "fc_a")["config"]["activation"] = json!("sigmoid"),
            "layer `fc_a` (Dense): `activation` is \"sigmoid\": resnetc supports linear, relu, softmax",
        ),
        ("tiny_seq", "relu6", |v| layer(v, "relu_b")["config"]["max_value"] = json!(6.0), "layer `relu_b` (ReLU)"),
        (
            "tiny_seq",
            "bn axis",
            |v| layer(v, "bn_b")["config"]["axis"] = json!(1),
            "layer `bn_b` (BatchNormalization): `axis` is 1",
        ),
        (
            "tiny_seq",
            "padding",
            |v| layer(v, "conv_b")["config"]["padding"] = json!("causal"),
            "`padding` is \"causal\": expected \"valid\" or \"same\"",
        ),
        (
            "tiny_seq",
            "filters",
            |v| layer(v, "conv_b")["config"]["filters"] = json!(0),
            "`filters` is 0: expected a size from 1 to",
        ),
        ("tiny_seq", "huge", |v| layer(v, "fc_a")["config"]["units"] = json!(1e300), "`units` is 1e+300"),
        (
            "tiny_apps",
            "keepdims",
            |v| layer(v, "avg_pool")["config"]["keepdims"] = json!(true),
            "layer `avg_pool` (GlobalAveragePooling2D): `keepdims` is true",
        ),
        (
            "tiny_resnet",
            "training",
            |v| layer(v, "bn_conv1")["inbound_nodes"][0]["kwargs"]["training"] = json!(true),
            "layer `bn_conv1` (BatchNormalization) is called with training=True",
        ),
        (
            "tiny_resnet",
            "shared",
            |v| {
                let n = layer(v, "conv1")["inbound_nodes"][0].clone();
                layer(v, "conv1")["inbound_nodes"].as_array_mut().unwrap().push(n);
            },
            "layer `conv1` (Conv2D) is called 2 times (a shared layer)",
        ),
        (
            "tiny_resnet",
            "nested",
            |v| layer(v, "conv1")["class_name"] = json!("Functional"),
            "layer `conv1` is a nested Functional model",
        ),
        (
            "tiny_resnet",
            "two outputs",
            |v| v["config"]["output_layers"] = json!([["fc3", 0, 0], ["avg_pool", 0, 0]]),
            "has 1 input(s) and 2 output(s)",
        ),
        (
            "tiny_resnet",
            "dangling",
            |v| layer(v, "fc3")["inbound_nodes"][0]["args"][0]["config"]["keras_history"][0] = json!("nope"),
            "layer `fc3` (Dense) takes `nope`, which no layer before it in the config defines",
        ),
        (
            "tiny_resnet",
            "dense on a map",
            |v| {
                let t = json!({"class_name": "__keras_tensor__", "config": {"shape": [null, 2, 1, 10], "keras_history": ["avg_pool", 0, 0]}});
                layer(v, "fc3")["inbound_nodes"][0]["args"] = json!([t]);
            },
            "layer `fc3` (Dense) is applied to a rank-4 tensor",
        ),
        (
            "tiny_seq",
            "quantized",
            |v| layer(v, "fc_a")["config"]["dtype"] = json!({"module": "keras", "class_name": "QuantizedDTypePolicy", "config": {"name": "int8_from_float32", "source_name": "float32"}}),
            "layer `fc_a` (Dense): `dtype` is \"int8_from_float32\" (QuantizedDTypePolicy): a quantized layer",
        ),
        (
            "tiny_seq",
            "quantization_config",
            |v| layer(v, "fc_b")["config"]["quantization_config"] = json!({"mode": "int8"}),
            "layer `fc_b` (Dense): `quantization_config` is {\"mode\":\"int8\"}: a quantized layer",
        ),
        (
            "tiny_resnet",
            "control",
            |v| layer(v, "conv1")["name"] = json!("a\u{7}b"),
            "layer 2 (Conv2D) has the name \"a\\u{7}b\": names with control characters",
        ),
        (
            "tiny_resnet",
            "braces",
            |v| layer(v, "conv1")["name"] = json!("c{x}"),
            "names with control characters or braces (`{...}` is a template in specs)",
        ),
    ];
    for (name, what, edit, want) in cases {
        let mut v = config(name);
        edit(&mut v);
        let e = refused(name, &v);
        assert!(e.contains(want), "{what}: expected `{want}` in:\n{e}");
    }
}

/// What is not a Keras model config gets a message saying what it is and what to pass instead.
#[test]
fn not_a_config() {
    let conv = |bytes: &[u8]| keras::convert("m.json", bytes, None).map(|c| c.spec).unwrap_err().to_string();
    let e = conv(b"{\"class_name\": \"Functional\",\n  \"config\": {\"layers\": [}}");
    assert!(e.starts_with("m.json:2:25: error: not a Keras model config: invalid JSON: expected value"), "{e}");
    assert!(conv(b"PK\x03\x04rest").contains("this is a zip archive (a `.keras` file?)"));
    assert!(conv(b"\x89HDF\r\n").contains("this is an HDF5 file (a `.h5` model?)"));
    assert!(conv(b"[1, 2]").contains("found a list of 2"));
    let e = conv(br#"{"class_name": "MyModel", "config": {"name": "m"}}"#);
    assert!(e.contains("the MyModel model `m` has no `layers` list"), "{e}");
    // serde_json's nesting limit: a deep document is an error, not a stack overflow.
    let deep = "[".repeat(100_000);
    assert!(conv(deep.as_bytes()).contains("recursion limit exceeded"));
}

/// A model whose input size Keras leaves open needs the size given; a wrong override is refused.
#[test]
fn open_input_sizes() {
    let mut v = config("tiny_apps");
    layer(&mut v, "input_layer")["config"]["batch_shape"] = json!([null, null, null, 3]);
    let e = refused("tiny_apps", &v);
    assert!(
        e.contains("the input `input_layer` has shape (None, None, None, 3): resnetc compiles for one image size"),
        "{e}"
    );
    let s = v.to_string();
    let c = keras::convert("a.json", s.as_bytes(), Some(&[40, 36, 3])).unwrap();
    assert!(c.spec.contains("input: {shape: [40, 36, 3], name: input_layer}"), "{}", c.spec);
    let e = keras::convert("a.json", s.as_bytes(), Some(&[40, 36, 4])).unwrap_err().to_string();
    assert!(e.contains("the input shape override [40, 36, 4] does not fit the input `input_layer`"), "{e}");
}

/// The format tf.keras 2 writes (nested-list inbound nodes, `batch_input_shape`, list-valued BN axis).
#[test]
fn tf_keras_2_format() {
    let cfg = r#"{"class_name": "Functional", "config": {"name": "model", "layers": [
      {"class_name": "InputLayer", "config": {"batch_input_shape": [null, 8, 8, 3], "dtype": "float32", "sparse": false, "ragged": false, "name": "input_1"}, "name": "input_1", "inbound_nodes": []},
      {"class_name": "Conv2D", "config": {"name": "conv2d", "trainable": true, "dtype": "float32", "filters": 4, "kernel_size": [3, 3], "strides": [1, 1], "padding": "same", "data_format": "channels_last", "dilation_rate": [1, 1], "groups": 1, "activation": "linear", "use_bias": true}, "name": "conv2d", "inbound_nodes": [[["input_1", 0, 0, {}]]]},
      {"class_name": "BatchNormalization", "config": {"name": "batch_normalization", "axis": [3], "momentum": 0.99, "epsilon": 0.001, "center": true, "scale": true}, "name": "batch_normalization", "inbound_nodes": [[["conv2d", 0, 0, {}]]]},
      {"class_name": "Activation", "config": {"name": "activation", "activation": "relu"}, "name": "activation", "inbound_nodes": [[["batch_normalization", 0, 0, {}]]]},
      {"class_name": "Conv2D", "config": {"name": "conv2d_1", "filters": 4, "kernel_size": [3, 3], "strides": [1, 1], "padding": "same", "data_format": "channels_last", "dilation_rate": [1, 1], "groups": 1, "activation": "relu", "use_bias": false}, "name": "conv2d_1", "inbound_nodes": [[["activation", 0, 0, {}]]]},
      {"class_name": "Add", "config": {"name": "add"}, "name": "add", "inbound_nodes": [[["activation", 0, 0, {}], ["conv2d_1", 0, 0, {}]]]},
      {"class_name": "GlobalAveragePooling2D", "config": {"name": "global_average_pooling2d", "data_format": "channels_last", "keepdims": false}, "name": "global_average_pooling2d", "inbound_nodes": [[["add", 0, 0, {}]]]},
      {"class_name": "Dense", "config": {"name": "dense", "units": 5, "activation": "softmax", "use_bias": true}, "name": "dense", "inbound_nodes": [[["global_average_pooling2d", 0, 0, {}]]]}
    ], "input_layers": [["input_1", 0, 0]], "output_layers": [["dense", 0, 0]]}, "keras_version": "2.13.1", "backend": "tensorflow"}"#;
    let c = keras::convert("tf2.json", cfg.as_bytes(), None).unwrap_or_else(|e| panic!("{e}"));
    let want = "\
# The Keras model `model`, converted from its config by resnetc import-keras: one node per Keras layer,
# named as the layer, so that its weights load as they are (`<layer>.<weight>`, README \"Weights\").
model: model
input: {shape: [8, 8, 3], name: input_1}

layers:
  - {op: conv, name: conv2d, filters: 4, kernel: 3, padding: same}
  - {op: batch_norm, name: batch_normalization}
  - {op: relu, name: activation}
  - {op: conv, name: conv2d_1, filters: 4, kernel: 3, padding: same, bias: false}
  - {op: relu, name: conv2d_1_relu}
  - {op: add, name: add, shortcut: activation}
  - {op: global_avg_pool, name: global_average_pooling2d}
  - {op: dense, name: dense, units: 5, activation: softmax}
";
    assert_eq!(c.spec, want);
    assert_eq!((c.layers, c.nodes), (8, 8));
    let m = Model::from_str("tf2.yaml", &c.spec, &Options::default()).unwrap();
    assert_eq!(m.output_shape(), &[5]);
}

/// Layer names that are not plain YAML words (or hold template braces) come back exactly.
#[test]
fn names_that_need_quoting() {
    let mut v = config("tiny_seq");
    let renames = [("conv_a", "null"), ("pool_a", "max pool: 2"), ("bn_b", "bn:b"), ("fc_a", "1st \"fc\"")];
    for (from, to) in renames {
        layer(&mut v, from)["config"]["name"] = json!(to);
    }
    let c = convert("tiny_seq", &v).unwrap();
    let m = Model::from_str("q.yaml", &c.spec, &Options::default()).unwrap_or_else(|e| panic!("{e}\n{}", c.spec));
    for (_, to) in renames {
        assert!(m.graph.find(to).is_some(), "no node `{to}` in\n{}", c.spec);
    }
    assert!(m.graph.find("null_relu").is_some(), "{}", c.spec);
}

// ---- the command line ----

#[track_caller]
fn exit(o: &Output, code: i32) -> (String, String) {
    let (out, err) = (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned());
    assert_eq!(o.status.code(), Some(code), "stdout:\n{out}\nstderr:\n{err}");
    (out, err)
}

#[test]
fn cli_import_keras() {
    let dir = std::env::temp_dir().join(format!("resnetc-import-keras-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("tiny_resnet.yaml");
    let o = resnetc(&["import-keras", "tests/fixtures/keras/tiny_resnet.json", "-o", out.to_str().unwrap()]);
    let (stdout, stderr) = exit(&o, 0);
    assert_eq!(
        stdout.trim(),
        format!("{}: ok: 53 Keras layers -> 53 nodes, 1,883 parameters, 200,496 MACs per image", out.display())
    );
    assert!(stderr.is_empty(), "{stderr}");
    // The written spec runs with the Keras weights as any spec does.
    let o = resnetc(&["summary", out.to_str().unwrap()]);
    assert!(exit(&o, 0).0.contains("Total params: 1,883"));

    // Without -o the spec goes to standard output, notes and verdict to standard error.
    let (spec, err) = exit(&resnetc(&["import-keras", "tests/fixtures/keras/tiny_seq.json"]), 0);
    assert!(spec.starts_with("# The Keras model `tiny_seq`"), "{spec}");
    assert!(err.contains("note: layer `drop_a` (Dropout) is an identity at inference: left out"), "{err}");
    assert!(err.contains("<stdout>: ok: 13 Keras layers -> 12 nodes, 737 parameters"), "{err}");

    // Errors: exit 1, nothing written.
    let bad = dir.join("bad.json");
    let mut v = config("tiny_seq");
    layer(&mut v, "relu_b")["class_name"] = json!("PReLU");
    std::fs::write(&bad, v.to_string()).unwrap();
    let never = dir.join("never.yaml");
    let (_, err) = exit(&resnetc(&["import-keras", bad.to_str().unwrap(), "-o", never.to_str().unwrap()]), 1);
    assert!(err.contains("layer `relu_b` (PReLU) is not supported"), "{err}");
    assert!(err.contains("1 error(s); nothing written"), "{err}");
    assert!(!never.exists());
    let (_, err) = exit(&resnetc(&["import-keras", dir.to_str().unwrap()]), 1);
    assert!(err.contains("not a regular file; expected the JSON text of a Keras model config"), "{err}");
    let (_, err) = exit(&resnetc(&["import-keras", "no/such.json"]), 1);
    assert!(err.contains("no/such.json: error: cannot read the Keras config"), "{err}");
    // An open input size, given on the command line.
    let mut v = config("tiny_apps");
    layer(&mut v, "input_layer")["config"]["batch_shape"] = json!([null, null, null, 3]);
    let open = dir.join("open.json");
    std::fs::write(&open, v.to_string()).unwrap();
    let (_, err) = exit(&resnetc(&["import-keras", open.to_str().unwrap(), "--input-shape", "64,48,3"]), 0);
    assert!(err.contains("ok: 43 Keras layers"), "{err}");
    exit(&resnetc(&["import-keras", open.to_str().unwrap(), "--input-shape", "64,0,3"]), 2);

    let (help, _) = exit(&resnetc(&["import-keras", "--help"]), 0);
    for opt in ["<CONFIG>", "--output", "--input-shape", "model.to_json()"] {
        assert!(help.contains(opt), "`import-keras --help` does not mention `{opt}`:\n{help}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every file under tests/fixtures/keras/ is a known fixture, and together they stay small.
#[test]
fn keras_fixture_files_are_known_and_small() {
    let with_spec = ["tiny_resnet", "tiny_apps", "ops_edge"];
    let mut total = 0;
    for entry in std::fs::read_dir(fixtures().join("keras")).unwrap() {
        let entry = entry.unwrap();
        let file = entry.file_name().to_string_lossy().into_owned();
        total += entry.metadata().unwrap().len();
        let known = with_spec.iter().any(|n| file == format!("{n}.json"))
            || [".json", ".safetensors", "_x.npy", "_y.npy"].iter().any(|s| file == format!("tiny_seq{s}"));
        assert!(known, "tests/fixtures/keras/{file} is not a known fixture file");
    }
    assert!(total <= 200_000, "tests/fixtures/keras holds {total} bytes, over the 200 KB budget");
}
