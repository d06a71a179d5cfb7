//! Spec validation: every mistake a user can make in a spec gives a clear, located message — the file,
//! line and column, the node, what was expected and what was found — and never a panic.
//!
//! Each case is a small inline spec; the assertions pin the message content and its exact line:column.

use resnetc_compiler::diag::{Diagnostic, Diagnostics};
use resnetc_compiler::graph::Graph;
use resnetc_compiler::spec::ProjectionPolicy;
use resnetc_compiler::{check, Options};

const FILE: &str = "t.yaml";

/// The spec text of a test: the raw string without its first newline.
fn text(yaml: &str) -> &str {
    yaml.strip_prefix('\n').unwrap_or(yaml)
}

fn diags_with(yaml: &[u8], opts: &Options) -> (Option<Graph>, Diagnostics) {
    let (ok, d) = check(FILE, yaml, opts);
    for x in &d.0 {
        assert_clean(x);
    }
    (ok.map(|(_, g, _)| g), d)
}

/// Every message: located in our file, and free of Rust debug output.
fn assert_clean(d: &Diagnostic) {
    let all = d.to_string();
    for noise in ["Some(", "None", "Str(", "Int(", "Ident(", "Op('", "YValue", "Value::", "Seq(", "Map(", "\\\""] {
        assert!(!all.contains(noise), "debug noise `{noise}` in: {all}");
    }
    if let Some(l) = &d.loc {
        assert_eq!(&*l.file, FILE, "{all}");
        assert!(all.starts_with(&format!("{FILE}:{}:{}: ", l.line, l.col)), "{all}");
    }
}

/// The errors of a spec as (line, column, message).
fn errs_bytes(yaml: &[u8]) -> Vec<(u32, u32, String)> {
    let (g, d) = diags_with(yaml, &Options::default());
    let e: Vec<(u32, u32, String)> = d
        .errors()
        .map(|x| {
            let l = x.loc.as_ref().unwrap_or_else(|| panic!("error without a location: {x}"));
            (l.line, l.col, x.message.clone())
        })
        .collect();
    assert!(g.is_none() || e.is_empty(), "a graph came back with errors: {e:?}");
    assert!(g.is_some() || !e.is_empty(), "no graph and no error");
    e
}

fn errs(yaml: &str) -> Vec<(u32, u32, String)> {
    errs_bytes(text(yaml).as_bytes())
}

/// Asserts a spec has exactly one error, at `line:col`, whose message contains every one of `parts`.
#[track_caller]
fn one_error(yaml: &str, line: u32, col: u32, parts: &[&str]) -> Diagnostic {
    one_error_bytes(text(yaml).as_bytes(), line, col, parts)
}

#[track_caller]
fn one_error_bytes(yaml: &[u8], line: u32, col: u32, parts: &[&str]) -> Diagnostic {
    let e = errs_bytes(yaml);
    assert_eq!(e.len(), 1, "expected exactly one error, got {e:#?}");
    assert_eq!((e[0].0, e[0].1), (line, col), "wrong location for: {}", e[0].2);
    for p in parts {
        assert!(e[0].2.contains(p), "message lacks `{p}`: {}", e[0].2);
    }
    let (_, d) = diags_with(yaml, &Options::default());
    let first = d.errors().next().cloned();
    first.expect("an error")
}

// ---------------------------------------------------------------------------------------------------
// The file itself.

#[test]
fn yaml_syntax_error_is_located() {
    let d = one_error(
        r#"
input: [8, 8, 3]
layers:
  - {op: conv, filters: 4
  - {op: relu}
"#,
        3,
        5,
        &["invalid YAML", "unclosed bracket"],
    );
    assert!(d.to_string().starts_with("t.yaml:3:5: error: invalid YAML"), "{d}");
}

#[test]
fn duplicate_yaml_key() {
    one_error(
        r#"
input: [8, 8, 3]
layers:
  - {op: relu, op: conv}
"#,
        3,
        16,
        &["invalid YAML", "duplicate mapping key: op"],
    );
}

#[test]
fn tab_indentation() {
    one_error("input: [8, 8, 3]\nlayers:\n\t- {op: relu}\n", 3, 1, &["invalid YAML", "a tab in the indentation"]);
}

#[test]
fn empty_file() {
    one_error("", 1, 1, &["the spec is empty", "`input` and `layers`"]);
    one_error("# just a comment\n\n", 1, 1, &["the spec is empty"]);
}

#[test]
fn binary_file() {
    // A PNG header: not UTF-8.
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    one_error_bytes(png, 1, 1, &["not UTF-8", "binary"]);
    // Valid text with one bad byte: located at that byte.
    one_error_bytes(b"input: [8, 8, 3]\nlayers:\n  - {op: relu, name: \xff}\n", 3, 22, &["not UTF-8"]);
    // UTF-8, but with NUL bytes.
    one_error_bytes(b"input: [8, 8, 3]\0\0", 1, 1, &["NUL bytes"]);
}

#[test]
fn top_level_not_a_mapping() {
    one_error("[1, 2, 3]\n", 1, 1, &["a spec is a mapping with `input` and `layers`", "found the list [1, 2, 3]"]);
    one_error("hello\n", 1, 1, &["a spec is a mapping", "found the string \"hello\""]);
}

#[test]
fn unknown_top_level_key() {
    let e = errs(
        r#"
input: [8, 8, 3]
layer:
  - {op: relu}
"#,
    );
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_eq!((e[0].0, e[0].1), (1, 1));
    assert!(e[0].2.contains("missing field `layers`"), "{}", e[0].2);
    assert_eq!((e[1].0, e[1].1), (2, 1));
    assert!(e[1].2.contains("unknown field `layer` in the spec's top level (did you mean `layers`?)"), "{}", e[1].2);
    assert!(e[1].2.contains("expected one of: model, input, blocks, layers, output, shortcut_projection"));
}

// ---------------------------------------------------------------------------------------------------
// The input.

#[test]
fn missing_input() {
    // Only the one error: the first layer does not also complain that it has no input.
    one_error(
        r#"
model: x
layers:
  - {op: relu}
"#,
        1,
        1,
        &["missing field `input`", "[height, width, channels]"],
    );
}

#[test]
fn input_with_two_dimensions() {
    one_error(
        r#"
input: [8, 8]
layers:
  - {op: relu}
"#,
        1,
        8,
        &["[height, width, channels]", "found 2 dimension(s): [8, 8]"],
    );
}

#[test]
fn input_with_zero_or_negative_dimension() {
    one_error(
        "input: [8, 0, 3]\nlayers:\n  - {op: relu}\n",
        1,
        12,
        &["input dimension must be a positive integer, found 0"],
    );
    one_error(
        "input: [8, 8, -3]\nlayers:\n  - {op: relu}\n",
        1,
        15,
        &["input dimension must be a positive integer, found -3"],
    );
}

#[test]
fn input_that_is_a_string() {
    one_error(
        "input: big\nlayers:\n  - {op: relu}\n",
        1,
        8,
        &["input shape must be a list [height, width, channels]", "found the string \"big\""],
    );
    one_error(
        "input: [8, eight, 3]\nlayers:\n  - {op: relu}\n",
        1,
        12,
        &["positive integer", "found the string \"eight\""],
    );
}

#[test]
fn input_mapping_without_shape() {
    one_error(
        "input: {name: image, shap: [8, 8, 3]}\nlayers:\n  - {op: relu}\n",
        1,
        22,
        &["unknown field `shap` in `input` (did you mean `shape`?)"],
    );
}

#[test]
fn absurd_input_is_refused_before_allocation() {
    one_error(
        r#"
input: [100000, 100000, 3]
layers:
  - {op: relu}
"#,
        1,
        8,
        &["[100000, 100000, 3]", "30000000000 elements", "limit of 1073741824"],
    );
}

#[test]
fn errors_after_a_bad_input_are_still_reported() {
    // The input is wrong, and so is a reference further down: both at once.
    let e = errs(
        r#"
input: [8, 8]
layers:
  - {op: relu, name: a}
  - {op: relu, name: b, inputs: aa}
"#,
    );
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_eq!((e[0].0, e[0].1), (1, 8));
    assert_eq!((e[1].0, e[1].1), (4, 33));
    assert!(e[1].2.contains("node `b` refers to an unknown node `aa` (did you mean `a`?)"), "{}", e[1].2);
}

// ---------------------------------------------------------------------------------------------------
// Layers and nodes.

#[test]
fn missing_layers() {
    one_error("input: [8, 8, 3]\n", 1, 1, &["missing field `layers`"]);
}

#[test]
fn empty_layers() {
    one_error("input: [8, 8, 3]\nlayers: []\n", 2, 9, &["`layers` is empty"]);
    one_error(
        "input: [8, 8, 3]\nlayers: relu\n",
        2,
        9,
        &["`layers` must be a list of nodes", "found the string \"relu\""],
    );
}

#[test]
fn layer_that_is_not_a_mapping() {
    one_error(
        r#"
input: [8, 8, 3]
layers:
  - relu
"#,
        3,
        5,
        &["expected a node (a mapping with `op`)", "found the string \"relu\"", "write `{op: relu}`"],
    );
}

#[test]
fn unknown_op_with_did_you_mean() {
    one_error(
        r#"
input: [8, 8, 3]
layers:
  - {op: convv, name: c1, filters: 4, kernel: 3}
"#,
        3,
        10,
        &["node `c1`", "unknown op `convv` (did you mean `conv`?)", "ops: zero_padding, conv,"],
    );
}

#[test]
fn keras_op_names_suggest_ours() {
    one_error(
        r#"
input: [8, 8, 3]
layers:
  - {op: Conv2D, name: c1, filters: 4, kernel: 3}
"#,
        3,
        10,
        &["node `c1`", "unknown op `Conv2D` (did you mean `conv`?)"],
    );
    one_error(
        r#"
input: [8, 8, 3]
layers:
  - op: BatchNormalization
    name: bn
"#,
        3,
        9,
        &["unknown op `BatchNormalization` (did you mean `batch_norm`?)"],
    );
}

#[test]
fn errors_after_an_unknown_op_do_not_cascade() {
    // The node after the bad one is not checked against a wrong input: one error only.
    one_error(
        r#"
input: [8, 8, 3]
layers:
  - {op: flattn}
  - {op: dense, units: 3}
"#,
        3,
        10,
        &["unknown op `flattn` (did you mean `flatten`?)"],
    );
}

#[test]
fn missing_op() {
    one_error(
        r#"
input: [8, 8, 3]
layers:
  - {type: conv, name: c1, filters: 3, kernel: 1}
"#,
        3,
        5,
        &["node `c1`", "has no `op`", "did you mean `op: conv` instead of `type: conv`?"],
    );
}

#[test]
fn unknown_field_with_did_you_mean() {
    // One error: the misspelled `kernal` is not also reported as a missing `kernel`.
    one_error(
        r#"
input: [8, 8, 3]
layers:
  - {op: conv, name: c1, filters: 4, kernal: 3}
"#,
        3,
        38,
        &[
            "node `c1`",
            "unknown field `kernal` in a `conv` node (did you mean `kernel`?)",
            "expected one of: op, name, inputs, filters, kernel, strides, padding, bias",
        ],
    );
}

#[test]
fn field_of_another_op() {
    let d = one_error(
        r#"
input: [8, 8, 3]
layers:
  - {op: relu, name: r, filters: 3}
"#,
        3,
        25,
        &["node `r`", "unknown field `filters` in a `relu` node", "expected one of: op, name, inputs"],
    );
    assert!(d.notes.iter().any(|n| n.contains("`filters` is a field of conv")), "{d}");
}

#[test]
fn missing_required_field() {
    one_error(
        r#"
input: [8, 8, 3]
layers:
  - {op: conv, name: c1, kernel: 3}
"#,
        3,
        5,
        &["node `c1`", "missing the field `filters`", "number of output channels"],
    );
    one_error(
        r#"
input: [8, 8, 3]
layers:
  - {op: max_pool, name: p}
"#,
        3,
        5,
        &["node `p`", "missing the field `pool`"],
    );
}

#[test]
fn mistyped_fields_point_at_the_value() {
    // Every field error at once, each at its value, each naming its node and what was found.
    let e = errs(
        r#"
input: [8, 8, 3]
layers:
  - {op: conv, name: c1, filters: "abc", kernel: 3}
  - {op: conv, name: c2, filters: 4, kernel: [1, 2, 3]}
  - {op: conv, name: c3, filters: 4, kernel: 3, bias: 3}
  - {op: conv, name: c4, filters: 4, kernel: 3, padding: sideways}
  - {op: conv, name: c5, filters: 4, kernel: 3, padding: sme}
  - {op: dense, name: d, units: 4, activation: sigmoid}
  - {op: batch_norm, name: bn, epsilon: 2}
  - {op: zero_padding, name: z, padding: [1, 2, 3]}
"#,
    );
    let want: &[(u32, u32, &[&str])] = &[
        (3, 35, &["node `c1`", "`filters` must be a positive integer", "found the string \"abc\""]),
        (4, 46, &["node `c2`", "`kernel` must be an integer or a list [height, width]", "found the list [1, 2, 3]"]),
        (5, 55, &["node `c3`", "`bias` must be true or false", "found the integer 3"]),
        (6, 58, &["node `c4`", "`padding` must be one of valid, same", "found `sideways`"]),
        (7, 58, &["node `c5`", "found `sme` (did you mean `same`?)"]),
        (8, 48, &["node `d`", "`activation` must be one of linear, relu, softmax", "found `sigmoid`"]),
        (9, 41, &["node `bn`", "`epsilon` must be a small positive number", "found 2"]),
        (10, 42, &["node `z`", "[[top, bottom], [left, right]]", "found the list [1, 2, 3]"]),
    ];
    assert_eq!(e.len(), want.len(), "{e:#?}");
    for ((l, c, m), (wl, wc, parts)) in e.iter().zip(want) {
        assert_eq!((*l, *c), (*wl, *wc), "{m}");
        for p in *parts {
            assert!(m.contains(p), "message lacks `{p}`: {m}");
        }
    }
}

#[test]
fn non_positive_sizes() {
    one_error(
        "input: [8, 8, 3]\nlayers:\n  - {op: conv, name: c, filters: 0, kernel: 3}\n",
        3,
        34,
        &["node `c`", "`filters` must be a positive integer, found 0"],
    );
    one_error(
        "input: [8, 8, 3]\nlayers:\n  - {op: conv, name: c, filters: 4, kernel: 3, strides: -1}\n",
        3,
        57,
        &["node `c`", "`strides` must be a positive integer, found -1"],
    );
    one_error(
        "input: [8, 8, 3]\nlayers:\n  - {op: conv, name: c, filters: 4, kernel: [3, 0]}\n",
        3,
        49,
        &["node `c`", "`kernel` must be a positive integer, found 0"],
    );
    one_error(
        "input: [8, 8, 3]\nlayers:\n  - {op: conv, name: c, filters: 4.5, kernel: 3}\n",
        3,
        34,
        &["node `c`", "`filters` must be a positive integer, found the number 4.5"],
    );
}

#[test]
fn absurd_sizes() {
    one_error(
        "input: [8, 8, 3]\nlayers:\n  - {op: conv, name: c, filters: 1000000000000, kernel: 3}\n",
        3,
        34,
        &["node `c`", "`filters` is absurdly large: 1000000000000", "the limit is 1048576"],
    );
    // Each size is fine, the output tensor is not: refused when its shape is inferred.
    one_error(
        "input: [4096, 4096, 3]\nlayers:\n  - {op: conv, name: c, filters: 1048576, kernel: 1}\n",
        3,
        5,
        &["node `c`", "[4096, 4096, 1048576]", "larger than the limit of 1073741824 elements"],
    );
    // The weights would be absurd: refused before anything allocates them.
    one_error(
        "input: [1024, 1024, 1024]\nlayers:\n  - {op: conv, name: big, filters: 1024, kernel: 1024}\n",
        3,
        5,
        &["node `big`", "`kernel` weights would have shape [1024, 1024, 1024, 1024]", "1099511627776 elements"],
    );
}

#[test]
fn duplicate_name() {
    one_error(
        r#"
input: [8, 8, 3]
layers:
  - {op: relu, name: a}
  - {op: relu, name: a}
"#,
        4,
        22,
        &["duplicate node name `a`", "already defined at t.yaml:3:5"],
    );
}

#[test]
fn unknown_reference_with_did_you_mean() {
    one_error(
        r#"
input: [8, 8, 3]
layers:
  - {op: relu, name: first}
  - {op: relu, name: second, inputs: frist}
"#,
        4,
        38,
        &["node `second` refers to an unknown node `frist` (did you mean `first`?)"],
    );
    one_error(
        r#"
input: [8, 8, 3]
layers:
  - {op: conv, name: c, filters: 3, kernel: 1}
  - {op: add, name: sum, shortcut: inptu}
"#,
        4,
        36,
        &["node `sum` refers to an unknown node `inptu` (did you mean `input`?)"],
    );
}

#[test]
fn empty_inputs_list() {
    one_error(
        "input: [8, 8, 3]\nlayers:\n  - {op: relu, name: r, inputs: []}\n",
        3,
        33,
        &["node `r`", "`inputs` is empty"],
    );
}

#[test]
fn wrong_number_of_inputs() {
    let d = one_error(
        r#"
input: [8, 8, 3]
layers:
  - {op: relu, name: a}
  - {op: relu, name: b, inputs: [a, input]}
"#,
        4,
        5,
        &["node `b`", "`relu` takes 1 input(s), found 2"],
    );
    assert!(d.notes.iter().any(|n| n.contains("`a` [8, 8, 3], `input` [8, 8, 3]")), "{d}");
}

#[test]
fn cycle() {
    one_error(
        r#"
input: [8, 8, 3]
layers:
  - {op: relu, name: a, inputs: b}
  - {op: relu, name: b, inputs: a}
  - {op: relu, name: c, inputs: input}
"#,
        3,
        5,
        &["node `a`", "the graph has a cycle: a → b → a"],
    );
    one_error(
        "input: [8, 8, 3]\nlayers:\n  - {op: relu, name: self, inputs: self}\n",
        3,
        5,
        &["the graph has a cycle: self → self"],
    );
}

#[test]
fn output_naming_an_unknown_node() {
    one_error(
        r#"
input: [8, 8, 3]
output: reul
layers:
  - {op: relu, name: relu}
"#,
        2,
        9,
        &["the output `reul` is not a node (did you mean `relu`?)"],
    );
}

// ---------------------------------------------------------------------------------------------------
// Shapes.

#[test]
fn kernel_larger_than_padded_input() {
    let d = one_error(
        r#"
input: [4, 4, 3]
layers:
  - {op: conv, name: big, filters: 4, kernel: 7}
"#,
        3,
        5,
        &["node `big`", "kernel 7x7 is larger than the padded input 4x4", "input shape [4, 4, 3]"],
    );
    assert!(d.notes.iter().any(|n| n.contains("`input` [4, 4, 3]")), "{d}");
}

#[test]
fn pool_window_larger_than_input() {
    one_error(
        "input: [2, 2, 3]\nlayers:\n  - {op: max_pool, name: p, pool: 3}\n",
        3,
        5,
        &["node `p`", "pool window 3x3 is larger than the padded input 2x2"],
    );
}

#[test]
fn dense_on_a_feature_map() {
    one_error(
        r#"
input: [4, 4, 3]
layers:
  - {op: dense, name: fc, units: 4}
"#,
        3,
        5,
        &[
            "node `fc`",
            "`dense` expects a vector [C]",
            "add `flatten` or a global pool",
            "found a tensor of shape [4, 4, 3]",
        ],
    );
}

#[test]
fn conv_on_a_vector() {
    one_error(
        r#"
input: [8, 8, 3]
layers:
  - {op: flatten, name: f}
  - {op: conv, name: c, filters: 2, kernel: 1}
"#,
        4,
        5,
        &["node `c`", "`conv` expects a feature map [H, W, C]", "found a tensor of shape [192]"],
    );
}

#[test]
fn shortcut_smaller_than_main_path() {
    one_error(
        r#"
input: [8, 8, 3]
layers:
  - {op: conv, name: c, filters: 3, kernel: 1, strides: 2}
  - {op: add, name: sum, inputs: [input], shortcut: c}
"#,
        4,
        5,
        &["node `sum`", "shortcut is smaller than the main path", "`input` is [8, 8, 3]", "shortcut `c` is [4, 4, 3]"],
    );
}

#[test]
fn shortcut_with_no_integral_stride() {
    // Strides 3 and 2 on a 10x10 input: the main path is 4x4, the shortcut 5x5, and no 1x1 stride maps
    // 5 to 4 ((5 - 1) / s + 1 is 5, 3, 2, ...).
    one_error(
        r#"
input: [10, 10, 3]
layers:
  - {op: conv, name: main, filters: 3, kernel: 1, strides: 3}
  - {op: conv, name: side, filters: 3, kernel: 1, strides: 2, inputs: input}
  - {op: add, name: sum, inputs: [main], shortcut: side}
"#,
        5,
        5,
        &["node `sum`", "no integral stride maps 5x5 to 4x4", "`main` is [4, 4, 3]", "`side` is [5, 5, 3]"],
    );
    // Whereas 3x3 onto 2x2 is a stride-2 projection (what a stride-2 `same` conv gives on the main path).
    let y = "input: [6, 6, 3]\nlayers:\n  - {op: conv, name: main, filters: 3, kernel: 1, strides: 3}\n  - {op: conv, name: side, filters: 3, kernel: 1, strides: 2, inputs: input}\n  - {op: add, name: sum, inputs: [main], shortcut: side}\n";
    let (ok, d) = check(FILE, y.as_bytes(), &Options::default());
    assert!(!d.has_errors(), "{d}");
    let (_, _, p) = ok.unwrap();
    assert_eq!((p.len(), p[0].strides), (1, [2, 2]));
}

#[test]
fn projection_policy_error() {
    let d = one_error(
        r#"
input: [8, 8, 3]
shortcut_projection: error
layers:
  - {op: conv, name: c, filters: 8, kernel: 1, strides: 2}
  - {op: add, name: sum, shortcut: input}
"#,
        5,
        5,
        &[
            "node `sum`",
            "needs a projection (1x1 conv, stride 2x2, 8 filters)",
            "`c` is [4, 4, 8]",
            "`input` is [8, 8, 3]",
        ],
    );
    assert!(d.notes.iter().any(|n| n.contains("write the projection in the spec")), "{d}");
    // The same through Options (the CLI's --no-auto-projection).
    let yaml = "input: [8, 8, 3]\nlayers:\n  - {op: conv, name: c, filters: 8, kernel: 1, strides: 2}\n  - {op: add, name: sum, shortcut: input}\n";
    let opts = Options { projection: Some(ProjectionPolicy::Error), ..Default::default() };
    let (g, d) = diags_with(yaml.as_bytes(), &opts);
    assert!(g.is_none());
    assert_eq!(d.errors().count(), 1);
    let bad = one_error("input: [8, 8, 3]\nshortcut_projection: never\nlayers:\n  - {op: relu}\n", 2, 22, &[]);
    assert!(bad.message.contains("`shortcut_projection` must be one of insert, error, found `never`"), "{bad}");
}

// ---------------------------------------------------------------------------------------------------
// Blocks.

const UNIT: &str = r#"
input: [8, 8, 3]
blocks:
  unit:
    params: {filters: ~, k: 1}
    nodes:
      - {op: conv, name: "u{filters}", filters: "{filters}", kernel: "{k}"}
      - {op: relu}
layers:
"#;

fn with_unit(layers: &str) -> String {
    format!("{}{layers}", text(UNIT))
}

#[test]
fn unknown_block() {
    let y = with_unit("  - {use: unti, with: {filters: 3}}\n");
    one_error(&y, 9, 11, &["unknown block `unti` (did you mean `unit`?)", "defined: unit"]);
}

#[test]
fn block_parameter_missing() {
    let y = with_unit("  - {use: unit}\n");
    one_error(&y, 9, 11, &["block `unit` is missing parameter(s) `filters`", "defined at t.yaml:3:3"]);
}

#[test]
fn unknown_block_parameter() {
    let y = with_unit("  - {use: unit, with: {filters: 3, kk: 2}}\n");
    one_error(&y, 9, 36, &["block `unit` has no parameter `kk` (did you mean `k`?)", "its parameters: filters, k"]);
}

#[test]
fn unknown_key_in_block_use() {
    let y = with_unit("  - {use: unit, whith: {filters: 3}}\n");
    let e = errs(&y);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_eq!((e[0].0, e[0].1), (9, 11));
    assert!(e[0].2.contains("missing parameter(s) `filters`"));
    assert_eq!((e[1].0, e[1].1), (9, 17));
    assert!(e[1].2.contains("unknown field `whith` in a block use (did you mean `with`?)"), "{}", e[1].2);
}

#[test]
fn recursive_block_direct() {
    let d = one_error(
        r#"
input: [8, 8, 3]
blocks:
  a:
    nodes:
      - {op: relu}
      - {use: a}
layers:
  - {use: a}
"#,
        6,
        15,
        &["block `a` uses itself (a → a)", "cannot be recursive"],
    );
    assert!(d.notes.iter().any(|n| n.contains("in block `a` used at t.yaml:8:11")), "{d}");
}

#[test]
fn recursive_block_mutual() {
    let d = one_error(
        r#"
input: [8, 8, 3]
blocks:
  b:
    nodes:
      - {use: c}
  c:
    nodes:
      - {use: b}
layers:
  - {use: b}
"#,
        8,
        15,
        &["block `b` uses itself (b → c → b)"],
    );
    assert_eq!(d.notes.len(), 2, "{d}");
    assert!(d.notes[0].contains("in block `c` used at t.yaml:5:15"), "{d}");
    assert!(d.notes[1].contains("in block `b` used at t.yaml:10:11"), "{d}");
}

#[test]
fn template_with_an_unknown_parameter() {
    let d = one_error(
        r#"
input: [8, 8, 3]
blocks:
  unit:
    params: [filters]
    nodes:
      - {op: conv, name: "u_{filtres}", filters: "{filters}", kernel: 1}
      - {op: relu}
layers:
  - {use: unit, with: {filters: 4}}
"#,
        6,
        26,
        &["unknown parameter `filtres` in `{filtres}` (did you mean `filters`?)", "parameters here: filters, input"],
    );
    assert_eq!(d.notes, vec!["in block `unit` used at t.yaml:9:11".to_string()]);
}

#[test]
fn template_index_out_of_range() {
    one_error(
        r#"
input: [8, 8, 3]
blocks:
  unit:
    params: [filters]
    nodes:
      - {op: conv, name: u, filters: "{filters[3]}", kernel: 1}
layers:
  - {use: unit, with: {filters: [4, 5]}}
"#,
        6,
        38,
        &["node `u`", "index 3 is out of range for a list of 2 (valid indices: 0 to 1) in `{filters[3]}`"],
    );
}

#[test]
fn template_syntax_errors() {
    let e = errs(
        r#"
input: [8, 8, 3]
blocks:
  b:
    params: [i]
    nodes:
      - {op: relu, name: "r{i"}
      - {op: relu, name: "s{i * }"}
      - {op: relu, name: "t{i i}"}
layers:
  - {use: b, with: {i: 1}}
"#,
    );
    assert_eq!(e.len(), 3, "{e:#?}");
    assert_eq!((e[0].0, e[0].1, e[0].2.as_str()), (6, 26, "unclosed `{` in `r{i`"));
    assert_eq!((e[1].0, e[1].1, e[1].2.as_str()), (7, 26, "incomplete expression `{i * }`"));
    assert_eq!((e[2].0, e[2].1, e[2].2.as_str()), (8, 26, "unexpected `i` in expression `{i i}`"));
}

#[test]
fn template_outside_a_block() {
    one_error(
        "input: [8, 8, 3]\nlayers:\n  - {op: relu, name: \"r{i}\"}\n",
        3,
        22,
        &["unknown parameter `i` in `{i}`", "no parameters here"],
    );
}

#[test]
fn bad_for_ranges() {
    let y = |f: &str| format!("{}{f}\n", text(UNIT).replace("{filters: ~, k: 1}", "{filters: 4, k: ~}"));
    one_error(&y("  - {use: unit, for: {k: \"5..2\"}}"), 9, 26, &["`5..2` is not a range (2 is before 5)"]);
    one_error(&y("  - {use: unit, for: {k: \"1..x\"}}"), 9, 26, &["`1..x` is not a range", "write `2..5` or `b..f`"]);
    one_error(&y("  - {use: unit, for: {k: []}}"), 9, 26, &["`for` gives `k` no values"]);
    one_error(
        &y("  - {use: unit, for: {kk: [1, 3]}}"),
        9,
        23,
        &["no parameter `kk` to iterate over (did you mean `k`?)"],
    );
    one_error(
        &y("  - {use: unit, for: {k: 3}}"),
        9,
        26,
        &["`for` values must be a list or a range", "found the integer 3"],
    );
    one_error(&y("  - {use: unit, for: {k: [1]}, repeat: 2}"), 9, 40, &["`for` or `repeat`, not both"]);
    one_error(&y("  - {use: unit, repeat: 0, with: {k: 1}}"), 9, 25, &["`repeat` must be a positive integer, found 0"]);
}

#[test]
fn field_errors_inside_a_block_point_at_the_template_and_name_the_use() {
    // The bad value came in through `with`; the error is at the field in the block, naming the node
    // that instance made, with a note naming the block use.
    let y = with_unit("  - {use: unit, with: {filters: 3}}\n  - {use: unit, with: {filters: \"abc\"}}\n");
    let (g, d) = diags_with(y.as_bytes(), &Options::default());
    assert!(g.is_none());
    let e: Vec<&Diagnostic> = d.errors().collect();
    assert_eq!(e.len(), 1, "{d}");
    let l = e[0].loc.as_ref().unwrap();
    assert_eq!((l.line, l.col), (6, 49), "{}", e[0]);
    assert!(
        e[0].message.contains("node `uabc`: `filters` must be a positive integer, found the string \"abc\""),
        "{}",
        e[0]
    );
    assert_eq!(e[0].notes, vec!["in block `unit` used at t.yaml:10:11".to_string()]);
}

#[test]
fn shape_errors_inside_a_block_instance_carry_the_use() {
    let y = text(
        r#"
input: [4, 4, 3]
blocks:
  unit:
    params: {k: 3}
    nodes:
      - {op: conv, name: "c{k}", filters: 2, kernel: "{k}"}
layers:
  - {use: unit}
  - {use: unit, with: {k: 9}}
"#,
    );
    let d = one_error(y, 6, 9, &["node `c9`", "kernel 9x9 is larger than the padded input 2x2"]);
    assert_eq!(d.notes[0], "in block `unit` used at t.yaml:9:11");
    assert!(d.to_string().contains("\n  = note: in block `unit` used at t.yaml:9:11"), "{d}");
}

#[test]
fn for_iterations_are_named_in_notes() {
    let y = text(
        r#"
input: [8, 8, 3]
blocks:
  unit:
    params: [i]
    nodes:
      - {op: relu, name: "r{i % 2}"}
layers:
  - {use: unit, for: {i: 1..3}}
"#,
    );
    let d = one_error(y, 6, 26, &["duplicate node name `r1`", "already defined at t.yaml:6:9"]);
    assert_eq!(d.notes, vec!["in block `unit` used at t.yaml:8:11 with i=3".to_string()]);
}

#[test]
fn block_definition_errors() {
    let e = errs(
        r#"
input: [8, 8, 3]
blocks:
  b:
    params: [i, i]
    nodes: []
  c:
    params: {x: {a: 1}}
    nods:
      - {op: relu}
layers:
  - {op: relu}
"#,
    );
    assert_eq!(e.len(), 5, "{e:#?}");
    assert_eq!((e[0].0, e[0].1), (4, 17));
    assert!(e[0].2.contains("block `b` declares the parameter `i` twice"));
    assert_eq!((e[1].0, e[1].1), (5, 12));
    assert!(e[1].2.contains("block `b` needs a non-empty list of `nodes`"));
    assert_eq!((e[2].0, e[2].1), (7, 5));
    assert!(e[2].2.contains("block `c` has no `nodes`"), "{}", e[2].2);
    assert_eq!((e[3].0, e[3].1), (7, 17));
    assert!(e[3].2.contains("the default of parameter `x` must be a number, string or list"), "{}", e[3].2);
    assert_eq!((e[4].0, e[4].1), (8, 5));
    assert!(e[4].2.contains("unknown field `nods` in block `c` (did you mean `nodes`?)"), "{}", e[4].2);
}

#[test]
fn yaml_11_booleans_are_names() {
    // `n` and `y` are parameter names here, not YAML 1.1 booleans.
    let y = text(
        r#"
input: [8, 8, 3]
blocks:
  unit:
    params: [n, y]
    nodes:
      - {op: conv, name: c, filters: "{n}", kernel: "{y}"}
layers:
  - {use: unit, with: {n: 3, y: 1}}
"#,
    );
    let (g, d) = diags_with(y.as_bytes(), &Options::default());
    assert!(d.0.is_empty(), "{d}");
    let g = g.unwrap();
    assert_eq!(g.node(g.output).shape, vec![8, 8, 3]);
    // And `bias: yes` is not taken for true.
    one_error(
        "input: [8, 8, 3]\nlayers:\n  - {op: conv, name: c, filters: 4, kernel: 1, bias: yes}\n",
        3,
        54,
        &["`bias` must be true or false, found the string \"yes\""],
    );
}

// ---------------------------------------------------------------------------------------------------
// All at once.

#[test]
fn several_errors_reported_at_once() {
    let e = errs(
        r#"
inputs: [8, 8, 3]
input: [8, 8, 3]
layers:
  - {op: conv, name: c1, filters: -2, kernel: 3}
  - {op: relux}
  - {op: conv, name: c3, filters: 2, kernel: 3, stride: 2}
  - {op: dense, name: d, units: 4, inputs: nope}
  - {op: relu, name: c1}
output: dd
"#,
    );
    let want: &[(u32, u32, &str)] = &[
        (1, 1, "unknown field `inputs` in the spec's top level (did you mean `input`?)"),
        (4, 35, "node `c1`: `filters` must be a positive integer, found -2"),
        (5, 10, "unknown op `relux` (did you mean `relu`?)"),
        (6, 49, "node `c3`: unknown field `stride` in a `conv` node (did you mean `strides`?)"),
        (7, 44, "node `d` refers to an unknown node `nope`"),
        (8, 22, "duplicate node name `c1`: already defined at t.yaml:4:5"),
        (9, 9, "the output `dd` is not a node (did you mean `d`?)"),
    ];
    assert_eq!(e.len(), want.len(), "{e:#?}");
    for ((l, c, m), (wl, wc, part)) in e.iter().zip(want) {
        assert_eq!((*l, *c), (*wl, *wc), "{m}");
        assert!(m.contains(part), "message lacks `{part}`: {m}");
    }
}

#[test]
fn display_is_file_line_col() {
    let (_, d) = diags_with(b"input: [8, 8, 3]\nlayers:\n  - {op: relu, name: a, inputs: b}\n", &Options::default());
    assert_eq!(d.to_string(), "t.yaml:3:33: error: node `a` refers to an unknown node `b`");
}

// ---------------------------------------------------------------------------------------------------
// What is fine: warnings, projections, the input shape override.

#[test]
fn unused_node_is_a_warning_at_its_line() {
    let (g, d) = diags_with(
        text(
            r#"
input: [8, 8, 3]
layers:
  - {op: relu, name: a}
  - {op: relu, name: b, inputs: input}
output: b
"#,
        )
        .as_bytes(),
        &Options::default(),
    );
    assert!(g.is_some(), "{d}");
    assert!(!d.has_errors());
    let w: Vec<&Diagnostic> = d.warnings().collect();
    assert_eq!(w.len(), 1, "{d}");
    assert_eq!(w[0].to_string(), "t.yaml:3:5: warning: node `a` is unused: it does not reach the output `b`");
}

#[test]
fn automatic_projection_is_inserted() {
    let y = text(
        r#"
input: [8, 8, 3]
layers:
  - {op: conv, name: c, filters: 8, kernel: 3, strides: 2, padding: same}
  - {op: add, name: sum, shortcut: input}
  - {op: conv, name: c2, filters: 8, kernel: 1, strides: 2}
  - {op: add, name: sum2, shortcut: sum, projection: my_proj}
"#,
    );
    let (ok, d) = check(FILE, y.as_bytes(), &Options::default());
    assert!(!d.has_errors(), "{d}");
    // A projection straight from the model input is legal, but suspicious: a warning at the shortcut.
    assert_eq!(d.0.len(), 1, "{d}");
    assert_eq!(
        d.0[0].to_string(),
        "t.yaml:4:36: warning: node `sum`: its shortcut is the model input `input` [8, 8, 3]: a 1x1 projection with \
         stride 2x2 is inserted from the raw input to `sum` [4, 4, 8]; is the shortcut linked to the right node?"
    );
    let (_, g, p) = ok.unwrap();
    assert_eq!(p.len(), 2);
    assert_eq!(p[0].name, "sum_shortcut_proj");
    assert_eq!((p[0].add.as_str(), p[0].from.as_str()), ("sum", "input"));
    assert_eq!(p[0].strides, [2, 2]);
    assert_eq!((p[0].from_shape.clone(), p[0].to_shape.clone()), (vec![8, 8, 3], vec![4, 4, 8]));
    assert_eq!(
        p[0].to_string(),
        "inserted shortcut projection `sum_shortcut_proj`: 1x1 conv stride 2x2 from `input` [8, 8, 3] to [4, 4, 8] for `sum`"
    );
    // `projection:` names it.
    assert_eq!(p[1].name, "my_proj");
    assert_eq!(p[1].strides, [2, 2]);
    let n = g.find("my_proj").unwrap();
    assert_eq!(g.node(n).shape, vec![2, 2, 8]);
    assert_eq!(g.node(g.output).shape, vec![2, 2, 8]);
    assert_eq!(g.verify(), Ok(()));
}

#[test]
fn projection_name_that_is_not_needed_is_a_warning() {
    let y = "input: [8, 8, 3]\nlayers:\n  - {op: conv, name: c, filters: 3, kernel: 1}\n  - {op: add, name: sum, shortcut: input, projection: p}\n";
    let (g, d) = diags_with(y.as_bytes(), &Options::default());
    assert!(g.is_some());
    let w: Vec<&Diagnostic> = d.warnings().collect();
    assert_eq!(w.len(), 1, "{d}");
    assert_eq!(w[0].loc.as_ref().map(|l| (l.line, l.col)), Some((4, 5)));
    assert!(w[0].message.contains("node `sum`: `projection: p` is unused"), "{}", w[0]);
}

#[test]
fn projection_name_in_a_block_is_silent_where_not_needed() {
    // A block may name the projection that only some of its uses need.
    let y = text(
        r#"
input: [8, 8, 3]
blocks:
  basic:
    params: {name: ~, filters: ~, stride: 1}
    nodes:
      - {op: conv, name: "{name}_conv", filters: "{filters}", kernel: 3, strides: "{stride}", padding: same}
      - {op: add, name: "{name}_add", shortcut: "{input}", projection: "{name}_proj"}
layers:
  - {use: basic, with: {name: a, filters: 3}}
  - {use: basic, with: {name: b, filters: 6, stride: 2}}
"#,
    );
    let (ok, d) = check(FILE, y.as_bytes(), &Options::default());
    assert!(d.0.is_empty(), "{d}");
    let (_, _, p) = ok.unwrap();
    let names: Vec<&str> = p.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["b_proj"]);
}

#[test]
fn input_shape_override_changes_the_shapes() {
    let y = b"input: [8, 8, 3]\nlayers:\n  - {op: conv, name: c, filters: 4, kernel: 3}\n  - {op: global_avg_pool}\n";
    let (g, _) = diags_with(y, &Options::default());
    let g = g.unwrap();
    assert_eq!(g.node(g.find("c").unwrap()).shape, vec![6, 6, 4]);
    let opts = Options { input_shape: Some(vec![32, 16, 5]), ..Default::default() };
    let (g, d) = diags_with(y, &opts);
    assert!(d.0.is_empty(), "{d}");
    let g = g.unwrap();
    assert_eq!(g.node(g.input).shape, vec![32, 16, 5]);
    assert_eq!(g.node(g.find("c").unwrap()).shape, vec![30, 14, 4]);
    // Too small for the kernel: the error says so at the node.
    let opts = Options { input_shape: Some(vec![2, 2, 3]), ..Default::default() };
    let (g, d) = diags_with(y, &opts);
    assert!(g.is_none());
    assert!(
        d.to_string().contains("t.yaml:3:5: error: node `c`: kernel 3x3 is larger than the padded input 2x2"),
        "{d}"
    );
    // Absurd: refused.
    let opts = Options { input_shape: Some(vec![100000, 100000, 3]), ..Default::default() };
    let (g, d) = diags_with(y, &opts);
    assert!(g.is_none());
    assert!(d.to_string().contains("(from the input shape override)"), "{d}");
}

#[test]
fn block_input_can_be_given() {
    // `with: {input: x}` starts the block at `x` (and `{input}` is `x` inside it).
    let y = text(
        r#"
input: [8, 8, 3]
blocks:
  res:
    params: [f]
    nodes:
      - {op: conv, name: "r{f}", filters: "{f}", kernel: 1}
      - {op: add, name: "a{f}", shortcut: "{input}"}
layers:
  - {op: conv, name: c, filters: 3, kernel: 3, padding: same}
  - {op: relu, name: side, inputs: input}
  - {use: res, with: {f: 3, input: c}}
  - {op: add, name: out, inputs: [a3], shortcut: side}
"#,
    );
    let (g, d) = diags_with(y.as_bytes(), &Options::default());
    assert!(d.0.is_empty(), "{d}");
    let g = g.unwrap();
    let r3 = g.find("r3").unwrap();
    assert_eq!(g.node(g.inputs(r3)[0]).name, "c");
    let a3 = g.find("a3").unwrap();
    let ins: Vec<&str> = g.inputs(a3).iter().map(|&i| g.node(i).name.as_str()).collect();
    assert_eq!(ins, ["r3", "c"]);
}

#[test]
fn the_shipped_specs_are_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("specs");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let name = path.display().to_string();
        let (ok, d) = check(&name, &bytes, &Options::default());
        assert!(ok.is_some(), "{d}");
        assert!(d.0.is_empty(), "{name}: {d}");
        n += 1;
    }
    assert!(n >= 2, "no specs found in {}", dir.display());
}

#[test]
fn errors_in_the_output_node_do_not_hide_shape_errors_before_it() {
    let e = errs(
        r#"
input: [8, 8, 3]
layers:
  - {op: conv, name: c1, filters: 4, kernel: 3, strides: 4}
  - {op: conv, name: c2, filters: 4, kernel: 5}
  - {op: flatten}
  - {op: dense, name: out, unit: 10}
"#,
    );
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_eq!((e[0].0, e[0].1), (4, 5), "{}", e[0].2);
    assert!(e[0].2.contains("node `c2`: kernel 5x5 is larger than the padded input 2x2"), "{}", e[0].2);
    assert_eq!((e[1].0, e[1].1), (6, 28), "{}", e[1].2);
    assert!(e[1].2.contains("node `out`: unknown field `unit`"), "{}", e[1].2);
}

// ---------------------------------------------------------------------------------------------------
// The spec language's traps (issue 15).

#[test]
fn a_float_size_says_to_write_an_integer() {
    one_error(
        "input: [8, 8, 3]\nlayers:\n  - {op: conv, name: c, filters: 64.0, kernel: 1}\n",
        3,
        34,
        &["`filters` must be an integer, found the float 64.0: write 64"],
    );
    one_error(
        "input: [8, 8, 3]\nlayers:\n  - {op: conv, name: c, filters: 4, kernel: [3.0, 3]}\n",
        3,
        46,
        &["`kernel` must be an integer, found the float 3.0: write 3"],
    );
    // A float that is not a whole number stays "a number".
    one_error(
        "input: [8, 8, 3]\nlayers:\n  - {op: conv, name: c, filters: 6.5, kernel: 1}\n",
        3,
        34,
        &["`filters` must be a positive integer, found the number 6.5"],
    );
}

#[test]
fn an_unquoted_template_says_to_quote_it() {
    // `{filters}` unquoted is a YAML mapping.
    let y = with_unit_params("[filters]", "  - {op: conv, name: c, filters: {filters}, kernel: 1}", "{filters: 4}");
    one_error(
        &y,
        6,
        38,
        &[
            "`filters` must be a positive integer, found the mapping {\"filters\": null}",
            "an unquoted template: write \"{filters}\"",
        ],
    );
    // `{filters[0]}` and `res{stage}a` unquoted are YAML syntax errors: the note says what to quote.
    let y =
        with_unit_params("[filters]", "  - {op: conv, name: c, filters: {filters[0]}, kernel: 1}", "{filters: [4]}");
    let d = one_error(&y, 6, 46, &["invalid YAML"]);
    assert_eq!(d.notes, ["templates must be quoted: write \"{filters[0]}\" (unquoted, YAML reads `{` as a mapping)"]);
    let y = with_unit_params("[stage]", "  - {op: relu, name: res{stage}a}", "{stage: 2}");
    let d = one_error(&y, 6, 29, &["invalid YAML"]);
    assert_eq!(d.notes, ["templates must be quoted: write \"res{stage}a\" (unquoted, YAML reads `{` as a mapping)"]);
}

/// A spec with one block `unit` (params `params`, one node line `node`), used once with `with`.
fn with_unit_params(params: &str, node: &str, with: &str) -> String {
    format!("input: [8, 8, 3]\nblocks:\n  unit:\n    params: {params}\n    nodes:\n    {node}\nlayers:\n  - {{use: unit, with: {with}}}\n")
}

#[test]
fn one_mistake_in_a_block_used_eight_times_prints_once() {
    let y = text(
        r#"
input: [8, 8, 3]
blocks:
  unit:
    params: [k]
    nodes:
      - {op: conv, name: "c{k}", filters: 4, kernel: 1, stides: 2}
      - {op: add, shortcut: "c{k}_typo"}
layers:
  - {use: unit, for: {k: 1..8}}
"#,
    );
    let (_, d) = diags_with(y.as_bytes(), &Options::default());
    let e: Vec<&Diagnostic> = d.errors().collect();
    assert_eq!(e.len(), 2, "{d}");
    assert_eq!(e[0].loc.as_ref().map(|l| (l.line, l.col)), Some((6, 57)));
    assert_eq!(e[0].message, "node `c1`: unknown field `stides` in a `conv` node (did you mean `strides`?); expected one of: op, name, inputs, filters, kernel, strides, padding, bias");
    assert_eq!(
        e[0].notes,
        [
            "in block `unit` used at t.yaml:9:11 with k=1",
            "the same error in 7 more instance(s): `unit` used at t.yaml:9:11 with k=2; `unit` used at t.yaml:9:11 \
             with k=3; `unit` used at t.yaml:9:11 with k=4; `unit` used at t.yaml:9:11 with k=5; and 3 more"
        ]
    );
    // The graph stage merges too: the unknown shortcut (a different name in every instance) once.
    assert_eq!(e[1].loc.as_ref().map(|l| (l.line, l.col)), Some((7, 29)));
    assert!(e[1].message.starts_with("node `add` refers to an unknown node `c1_typo`"), "{}", e[1]);
    assert!(e[1].notes[1].starts_with("the same error in 7 more instance(s)"), "{}", e[1]);
}

#[test]
fn repeat_binds_the_instance_number_rep() {
    let y = text(
        r#"
input: [8, 8, 3]
blocks:
  unit:
    params: {filters: 8}
    nodes:
      - {op: conv, name: "c{filters}_{rep}", filters: "{filters}", kernel: 3, padding: same}
      - {op: relu, name: "c{filters}_{rep}_relu"}
layers:
  - {use: unit, repeat: 3}
  - {use: unit, with: {filters: 4}}
"#,
    );
    let (g, d) = diags_with(y.as_bytes(), &Options::default());
    assert!(d.0.is_empty(), "{d}");
    let g = g.unwrap();
    for name in ["c8_1", "c8_2", "c8_3_relu", "c4_1", "c4_1_relu"] {
        assert!(g.find(name).is_some(), "no `{name}`");
    }
    // `for` numbers its instances the same way.
    let y =
        with_unit_params("[k]", "  - {op: relu, name: \"r{k}_{rep}\"}", "{}").replace("with: {}", "for: {k: [a, b]}");
    let (g, d) = diags_with(y.as_bytes(), &Options::default());
    assert!(d.0.is_empty(), "{d}");
    let g = g.unwrap();
    assert!(g.find("ra_1").is_some() && g.find("rb_2").is_some());
    // It cannot be given.
    let y = with_unit_params("[k]", "  - {op: relu}", "{k: 1, rep: 2}");
    one_error(&y, 8, 30, &["`rep` cannot be given: it numbers the instances of a use"]);
}

#[test]
fn a_duplicate_name_in_a_repeated_block_points_at_rep() {
    let y = text(
        r#"
input: [8, 8, 3]
blocks:
  unit:
    nodes:
      - {op: conv, name: c64_a, filters: 4, kernel: 1}
layers:
  - {use: unit, repeat: 3}
"#,
    );
    let d = one_error(
        y,
        5,
        26,
        &[
            "duplicate node name `c64_a`: already defined at t.yaml:5:9",
            "put a parameter into them, e.g. `c64_a_{rep}` (`rep` numbers the instances of a use: 1, 2, ...)",
        ],
    );
    assert_eq!(d.notes[0], "in block `unit` used at t.yaml:7:11 (repetition 2 of 3)");
    assert!(
        d.notes[1].starts_with("the same error in 1 more instance(s): `unit` used at t.yaml:7:11 (repetition 3 of 3)")
    );
}

#[test]
fn suspicious_projections_are_warnings_naming_both_ends() {
    // `shortcut: input` in a block: the model input, not the block's input.
    let y = text(
        r#"
input: [32, 32, 3]
blocks:
  down:
    params: [f]
    nodes:
      - {op: conv, name: "c{f}", filters: "{f}", kernel: 3, strides: 2, padding: same}
      - {op: add, name: "a{f}", shortcut: input}
layers:
  - {use: down, with: {f: 8}}
  - {use: down, with: {f: 16}}
  - {use: down, with: {f: 32}}
"#,
    );
    let (ok, d) = check(FILE, y.as_bytes(), &Options::default());
    assert!(!d.has_errors(), "{d}");
    let w: Vec<&Diagnostic> = d.warnings().collect();
    // One warning for the three instances.
    assert_eq!(w.len(), 1, "{d}");
    assert_eq!(w[0].loc.as_ref().map(|l| (l.line, l.col)), Some((7, 43)));
    assert_eq!(
        w[0].message,
        "node `a8`: its shortcut is the model input `input` [32, 32, 3]: a 1x1 projection with stride 2x2 is inserted \
         from the raw input to `a8` [16, 16, 8]; is the shortcut linked to the right node?"
    );
    assert_eq!(w[0].notes[0], "in block `down` used at t.yaml:9:11");
    assert_eq!(
        w[0].notes[1],
        "`input` names the model input; the node that feeds the block is the template `\"{input}\"`"
    );
    assert!(w[0].notes[2].starts_with("the same error in 2 more instance(s)"), "{}", w[0]);
    let (_, _, p) = ok.unwrap();
    assert_eq!(p.iter().map(|p| p.strides).collect::<Vec<_>>(), [[2, 2], [4, 4], [8, 8]]);
    // Each projection is located at its shortcut.
    assert!(p.iter().all(|p| p.loc.as_ref().map(|l| (l.line, l.col)) == Some((7, 43))));
    // A wrong `inputs:` link with a stride over 2.
    let y = text(
        r#"
input: [32, 32, 3]
layers:
  - {op: conv, name: stem, filters: 8, kernel: 3, padding: same}
  - {op: conv, name: s2, filters: 8, kernel: 3, strides: 2, padding: same}
  - {op: conv, name: s4, filters: 16, kernel: 3, strides: 2, padding: same}
  - {op: conv, name: s8, filters: 16, kernel: 3, strides: 2, padding: same}
  - {op: add, name: sum, inputs: [s8, stem]}
"#,
    );
    let (ok, d) = check(FILE, y.as_bytes(), &Options::default());
    assert!(ok.is_some(), "{d}");
    assert_eq!(d.0.len(), 1, "{d}");
    assert_eq!(
        d.0[0].to_string(),
        "t.yaml:7:39: warning: node `sum`: the shortcut from `stem` [32, 32, 8] to `sum` [4, 4, 16] gets an inserted 1x1 \
         projection with stride 8x8 (more than 2): is the shortcut linked to the right node?"
    );
}

#[test]
fn unnamed_nodes_get_keras_names() {
    let y = text(
        r#"
input: [8, 8, 3]
layers:
  - {op: zero_padding, padding: 1}
  - {op: conv, filters: 4, kernel: 3}
  - {op: batch_norm}
  - {op: relu}
  - {op: conv, name: conv2d_1, filters: 4, kernel: 1}
  - {op: conv, filters: 4, kernel: 1}
  - {op: add, shortcut: activation}
  - {op: max_pool, pool: 2}
  - {op: avg_pool, pool: 2}
  - {op: global_max_pool}
  - {op: dense, units: 3}
  - {op: softmax}
"#,
    );
    let (ok, d) = check(FILE, y.as_bytes(), &Options::default());
    assert!(d.0.is_empty(), "{d}");
    let names: Vec<String> = ok.unwrap().0.nodes.iter().map(|n| n.name.clone()).collect();
    // As Keras names unnamed layers: first `conv2d`, then `conv2d_1`, ... (a name taken is skipped).
    assert_eq!(
        names,
        [
            "zero_padding2d",
            "conv2d",
            "batch_normalization",
            "activation",
            "conv2d_1",
            "conv2d_2",
            "add",
            "max_pooling2d",
            "average_pooling2d",
            "global_max_pooling2d",
            "dense",
            "activation_1"
        ]
    );
    // A written name that a generated one took first: the message says so.
    let y = "input: [8, 8, 3]\nlayers:\n  - {op: relu}\n  - {op: relu, name: activation}\n";
    one_error(
        y,
        4,
        22,
        &["duplicate node name `activation`: already defined at t.yaml:3:5, where `activation` is the name given to \
           an unnamed node (as Keras names them); name that node, or choose another name here"],
    );
}
