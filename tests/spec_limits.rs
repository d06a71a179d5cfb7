//! Hostile specs: every class of input that once panicked, aborted, hung or ate memory (issue 14)
//! gets a located error naming what is wrong — or the limit it reached — in bounded time and memory.
//!
//! The huge specs are built here, in code. Time and memory are not asserted by the clock: each test
//! checks the limit error that arrives *instead of* the expansion (so a regression shows as a missing
//! error, or as a test that takes minutes and gigabytes).

use resnetc_compiler::diag::{Diagnostic, Diagnostics, MAX_REPORTED};
use resnetc_compiler::spec::Limits;
use resnetc_compiler::{check, Error, Model, Options};
use std::path::Path;
use std::process::Command;

mod common;
use common::cli::*;

const FILE: &str = "t.yaml";

/// Checks a spec; asserts every error is located in it (or is the closing count of omitted errors).
fn diags_with(yaml: &str, opts: &Options) -> (bool, Diagnostics) {
    let (ok, d) = check(FILE, yaml.as_bytes(), opts);
    for x in &d.0 {
        if x.is_error() || x.is_warning() {
            let l = x.loc.as_ref().unwrap_or_else(|| panic!("not located: {x}"));
            assert_eq!(&*l.file, FILE, "{x}");
            assert!(x.message.len() < 2000, "a message of {} bytes", x.message.len());
        }
    }
    assert_eq!(ok.is_some(), !d.has_errors(), "{d}");
    (ok.is_some(), d)
}

fn diags(yaml: &str) -> Diagnostics {
    diags_with(yaml, &Options::default()).1
}

/// The one error of a spec: its line, column and message.
#[track_caller]
fn one_error(yaml: &str) -> (u32, u32, Diagnostic) {
    let d = diags(yaml);
    let e: Vec<&Diagnostic> = d.errors().collect();
    assert_eq!(d.error_count(), 1, "expected one error:\n{d}");
    let l = e[0].loc.clone().unwrap();
    (l.line, l.col, e[0].clone())
}

#[track_caller]
fn assert_error(yaml: &str, line: u32, col: u32, parts: &[&str]) -> Diagnostic {
    let (l, c, e) = one_error(yaml);
    for p in parts {
        assert!(e.message.contains(p), "message lacks `{p}`: {e}");
    }
    assert_eq!((l, c), (line, col), "{e}");
    e
}

/// A spec with one block `b(x)` holding one node written as `node`, used once with `x: arg`.
fn with_block(node: &str, arg: &str) -> String {
    format!(
        "input: [8, 8, 3]\nblocks:\n  b:\n    params: [x]\n    nodes:\n      - {node}\nlayers:\n  - {{use: b, with: {{x: {arg}}}}}\n"
    )
}

// ---------------------------------------------------------------------------------------------------
// Integer arithmetic in templates.

const MIN: &str = "-9223372036854775808";

#[test]
fn template_arithmetic_on_i64_min_is_an_error_not_a_panic() {
    for (expr, want) in [
        ("{x % -1}", "-9223372036854775808 % -1 overflows 64-bit integers"),
        ("{x / -1}", "-9223372036854775808 / -1 overflows 64-bit integers"),
        ("{x * -1}", "overflows 64-bit integers"),
        ("{x - 1}", "overflows 64-bit integers"),
        ("{-x}", "-(-9223372036854775808) overflows 64-bit integers"),
        ("{x % 0}", "division by zero"),
    ] {
        let y = with_block(&format!("{{op: conv, filters: \"{expr}\", kernel: 1}}"), MIN);
        let e = assert_error(&y, 6, 29, &[want]);
        assert_eq!(e.notes, ["in block `b` used at t.yaml:8:11"], "{e}");
    }
    // Negation in a name: no silent wrap-around into the name.
    let y = with_block("{op: relu, name: \"n{-x}\"}", MIN);
    assert_error(&y, 6, 26, &["-(-9223372036854775808) overflows"]);
    // A number past i64 in a template.
    let y = with_block("{op: relu, name: \"n{x + 99999999999999999999}\"}", "1");
    assert_error(&y, 6, 26, &["the number `99999999999999999999` is too large"]);
}

#[test]
fn for_ranges_from_i64_min_are_refused_without_allocating() {
    let y = "input: [8, 8, 3]\nblocks:\n  b:\n    params: [x]\n    nodes:\n      - {op: relu, name: \"n{x}\"}\nlayers:\n  - {use: b, for: {x: \"-9223372036854775808..9223372036854775807\"}}\n";
    assert_error(y, 8, 23, &["is not a range (more than 10000 values, the limit per use)"]);
    let y = y.replace("9223372036854775807\"", "-9223372036854775807\"");
    let d = diags(&y);
    assert!(!d.has_errors(), "{d}");
}

// ---------------------------------------------------------------------------------------------------
// Deep nesting.

#[test]
fn deeply_nested_parentheses_and_minus_signs_are_refused() {
    for depth in [65, 10_000] {
        let parens = format!("\"{{{}x{}}}\"", "(".repeat(depth), ")".repeat(depth));
        let y = with_block(&format!("{{op: conv, filters: {parens}, kernel: 1}}"), "2");
        assert_error(&y, 6, 29, &["the expression nests more than 64 levels deep"]);
    }
    let minus = format!("\"{{{}x}}\"", "-".repeat(20_000));
    let y = with_block(&format!("{{op: conv, filters: {minus}, kernel: 1}}"), "2");
    assert_error(&y, 6, 29, &["nests more than 64 levels deep"]);
    // 64 levels are fine.
    let parens = format!("\"{{{}x{}}}\"", "(".repeat(64), ")".repeat(64));
    assert!(!diags(&with_block(&format!("{{op: conv, filters: {parens}, kernel: 1}}"), "2")).has_errors());
}

/// Blocks b0 .. b{n-1}, each using the one before (b0 holds a relu), and `layers` using the last.
fn nested_blocks(n: usize) -> String {
    let mut s = String::from("input: [8, 8, 3]\nblocks:\n  b0:\n    nodes:\n      - {op: relu}\n");
    for i in 1..n {
        s += &format!("  b{i}:\n    nodes:\n      - {{use: b{}}}\n", i - 1);
    }
    s + &format!("layers:\n  - {{use: b{}}}\n", n - 1)
}

#[test]
fn blocks_nested_thousands_deep_hit_the_depth_limit() {
    // The error points at the use one level too deep; it names the chain and how to raise the limit.
    let e = assert_error(
        &nested_blocks(10_000),
        29_813,
        15,
        &[
            "blocks nest more than 64 levels deep here (b9999 → b9998 → ... → b9936 → b9935): the limit",
            "RESNETC_MAX_BLOCK_DEPTH",
        ],
    );
    // The notes name the uses around it, the middle ones counted.
    assert_eq!(e.notes.len(), 8, "{e}");
    assert_eq!(e.notes[6], "... in 57 more enclosing block uses");
    // 64 levels are allowed, and the limit can be raised.
    assert!(!diags(&nested_blocks(64)).has_errors());
    let opts = Options { limits: Some(Limits { max_block_depth: 200, ..Limits::default() }), ..Default::default() };
    assert!(!diags_with(&nested_blocks(150), &opts).1.has_errors());
}

#[test]
fn deeply_nested_yaml_is_a_yaml_error() {
    for depth in [100, 10_000] {
        let y = format!("input: [8, 8, 3]\nx: {}{}\nlayers: [{{op: relu}}]\n", "[".repeat(depth), "]".repeat(depth));
        let (l, _, e) = one_error(&y);
        assert_eq!(l, 2);
        assert!(e.message.starts_with("invalid YAML: collections are nested"), "{e}");
    }
}

// ---------------------------------------------------------------------------------------------------
// Size bombs.

#[test]
fn nested_repeats_stop_at_the_node_limit() {
    // 10^12 nodes if expanded.
    let y = "input: [8, 8, 3]\nblocks:\n  b0:\n    nodes:\n      - {op: relu}\n  b1:\n    nodes:\n      - {use: b0, repeat: 10000}\n  b2:\n    nodes:\n      - {use: b1, repeat: 10000}\n  b3:\n    nodes:\n      - {use: b2, repeat: 10000}\nlayers:\n  - {use: b3}\n";
    let e = assert_error(
        y,
        5,
        9,
        &[
            "the spec expands to more than 100,000 nodes (the limit; nodes in blocks count once per instance)",
            "RESNETC_MAX_NODES",
        ],
    );
    assert_eq!(e.notes[0], "in block `b0` used at t.yaml:8:15 (repetition 1 of 10000)");
    // A lower limit is honoured the same way.
    let opts = Options { limits: Some(Limits { max_nodes: 50, ..Limits::default() }), ..Default::default() };
    let (_, d) = diags_with(y, &opts);
    assert!(d.errors().next().unwrap().message.contains("more than 50 nodes"), "{d}");
}

#[test]
fn a_long_repeat_gets_short_names() {
    // Names used to grow along the chain (`input_relu_relu_...`): 1.1 GB for this spec.
    let y = "input: [8, 8, 3]\nblocks:\n  b:\n    nodes:\n      - {op: relu}\nlayers:\n  - {use: b, repeat: 10000}\n";
    let (ok, _) = check(FILE, y.as_bytes(), &Options::default());
    let (spec, g, _) = ok.expect("the spec is valid");
    assert_eq!(g.g.node_count(), 10_001);
    let longest = spec.nodes.iter().map(|n| n.name.len()).max().unwrap();
    assert_eq!(longest, "activation_9999".len());
    assert_eq!(spec.nodes[0].name, "activation");
    assert_eq!(spec.nodes[9999].name, "activation_9999");
}

#[test]
fn repeat_over_the_limit_names_the_limit_enforced() {
    for n in ["10001", "2000000", "99999999999999"] {
        let y = format!(
            "input: [8, 8, 3]\nblocks:\n  b:\n    nodes:\n      - {{op: relu}}\nlayers:\n  - {{use: b, repeat: {n}}}\n"
        );
        assert_error(&y, 7, 22, &[&format!("`repeat` is too large: {n} (the limit is 10000 instances per use)")]);
    }
}

#[test]
fn names_that_double_at_every_level_hit_the_template_limit() {
    let y = "input: [8, 8, 3]\nblocks:\n  a:\n    params: [p]\n    nodes:\n      - {op: relu, name: \"{p}x\"}\n  b:\n    params: [p]\n    nodes:\n      - {use: a, with: {p: \"{p}{p}\"}}\n      - {use: b, with: {p: \"{p}{p}\"}}\nlayers:\n  - {use: b, with: {p: ab}}\n";
    let d = diags(y);
    // Either the recursion or the doubling is refused first; neither expands.
    assert!(d.has_errors(), "{d}");
    // Doubling without recursion: 60 levels of blocks, each passing `{p}{p}` on.
    let mut y = String::from(
        "input: [8, 8, 3]\nblocks:\n  a0:\n    params: [p]\n    nodes:\n      - {op: relu, name: \"{p}\"}\n",
    );
    for i in 1..60 {
        y += &format!(
            "  a{i}:\n    params: [p]\n    nodes:\n      - {{use: a{}, with: {{p: \"{{p}}{{p}}\"}}}}\n",
            i - 1
        );
    }
    y += "layers:\n  - {use: a59, with: {p: ab}}\n";
    let (_, _, e) = one_error(&y);
    assert!(e.message.contains("expands to more than 4096 bytes of text (the limit for a template)"), "{e}");
}

#[test]
fn lists_that_quadruple_at_every_level_hit_the_expansion_budget() {
    let mut y = String::from("input: [8, 8, 3]\nblocks:\n  a0:\n    params: [p]\n    nodes:\n      - {op: relu}\n");
    for i in 1..60 {
        y += &format!("  a{i}:\n    params: [p]\n    nodes:\n      - {{use: a{}, with: {{p: [\"{{p}}\", \"{{p}}\", \"{{p}}\", \"{{p}}\"]}}}}\n", i - 1);
    }
    y += "layers:\n  - {use: a59, with: {p: [1]}}\n";
    // A small budget keeps the test fast; the default one is 2 KiB per node of the node limit (200 MB).
    let opts = Options { limits: Some(Limits { max_nodes: 1000, ..Limits::default() }), ..Default::default() };
    let (_, d) = diags_with(&y, &opts);
    assert_eq!(d.error_count(), 1, "{d}");
    let e = d.errors().next().unwrap();
    assert!(e.message.contains("the blocks expand to more than 2,048,000 bytes of node fields"), "{e}");
    assert!(e.message.contains("RESNETC_MAX_NODES"), "{e}");
}

#[test]
fn long_names_are_refused_and_long_typos_cost_nothing() {
    let long = "a".repeat(100_000);
    let y = format!("input: [8, 8, 3]\nlayers:\n  - {{op: relu, name: {long}b}}\n  - {{op: relu, inputs: {long}c}}\n");
    let d = diags(&y);
    assert_eq!(d.error_count(), 2, "{d}");
    for e in d.errors() {
        assert!(e.message.contains("is 100001 bytes long, more than the limit of 256 for a name"), "{e}");
        assert!(e.message.contains("RESNETC_MAX_NAME_LEN"), "{e}");
    }
    // Within the name limit, a long typo gets no edit-distance matrix (and no suggestion).
    let (a, b) = ("x".repeat(250), "y".repeat(250));
    let y = format!("input: [8, 8, 3]\nlayers:\n  - {{op: relu, name: {a}}}\n  - {{op: relu, inputs: {b}}}\n");
    let (_, _, e) = one_error(&y);
    assert!(e.message.contains("refers to an unknown node") && !e.message.contains("did you mean"), "{e}");
    // Raising the limit lets long names through.
    let opts = Options { limits: Some(Limits { max_name_len: 200_000, ..Limits::default() }), ..Default::default() };
    let y = format!("input: [8, 8, 3]\nlayers:\n  - {{op: relu, name: {long}}}\n");
    assert!(!diags_with(&y, &opts).1.has_errors());
}

#[test]
fn names_with_control_characters_are_refused() {
    for (c, shown) in [("\\0", "\\0"), ("\\x01", "\\u{1}"), ("\\t", "\\t"), ("\\x7f", "\\u{7f}"), ("\\n", "\\n")] {
        let y = format!("input: [8, 8, 3]\nlayers:\n  - {{op: relu, name: \"a{c}b\"}}\n");
        assert_error(
            &y,
            3,
            22,
            &[&format!("`name` `a{shown}b` contains the control character"), "DOT, JSON and file names"],
        );
    }
    // References, the model's name and the input's name too.
    let y = "input: [8, 8, 3]\nlayers:\n  - {op: relu, inputs: \"a\\x01\"}\n";
    assert_error(y, 3, 24, &["an input name `a\\u{1}` contains the control character"]);
    let y = "model: \"m\\x1b[31m\"\ninput: [8, 8, 3]\nlayers:\n  - {op: relu}\n";
    assert_error(y, 1, 8, &["`model` `m\\u{1b}[31m` contains the control character"]);
    let y = "input: {shape: [8, 8, 3], name: \"in\\0\"}\nlayers:\n  - {op: relu}\n";
    let d = diags(y);
    assert!(
        d.errors().next().unwrap().message.contains("the input's `name` `in\\0` contains the control character"),
        "{d}"
    );
}

// ---------------------------------------------------------------------------------------------------
// Quadratic time.

#[test]
fn thousands_of_misspelled_references_report_a_bounded_number_in_full() {
    let mut y = String::from("input: [8, 8, 3]\nlayers:\n");
    for i in 0..6000 {
        y += &format!("  - {{op: relu, name: node_number_{i}, inputs: nodx_number_{i}}}\n");
    }
    let d = diags(&y);
    assert_eq!(d.error_count(), 6000);
    assert_eq!(d.errors().count(), MAX_REPORTED);
    let last = d.0.last().unwrap().to_string();
    assert!(last.starts_with("note: 5900 more error(s) not shown: only the first 100 errors"), "{last}");
    // The first ones still get their suggestion (never the node itself).
    let first = d.errors().next().unwrap();
    assert!(
        first.message.contains("refers to an unknown node `nodx_number_0` (did you mean `node_number_1`?)"),
        "{first}"
    );
}

#[test]
fn thousands_of_errors_are_counted_not_kept() {
    let mut y = String::from("input: [8, 8, 3]\nlayers:\n");
    for _ in 0..30_000 {
        y += "  - {op: conv, filters: -1, kernel: 1}\n";
    }
    let d = diags(&y);
    assert_eq!(d.error_count(), 30_000);
    assert!(d.0.len() <= 2 * MAX_REPORTED + 1);
}

#[test]
fn one_mistake_in_a_block_used_many_times_is_reported_once() {
    // 30,000 instances of a block with two mistakes: two errors, each listing some instances.
    let y = "input: [8, 8, 3]\nblocks:\n  a:\n    nodes:\n      - {op: conv, filters: -1, kernel: 1}\n      - {op: relu, inputs: nothere}\n  b:\n    nodes:\n      - {use: a, repeat: 100}\nlayers:\n  - {use: b, repeat: 300}\n";
    let d = diags(y);
    assert_eq!(d.error_count(), 2, "{d}");
    let e: Vec<&Diagnostic> = d.errors().collect();
    assert_eq!(e[0].message, "node `conv2d`: `filters` must be a positive integer, found -1");
    assert_eq!(
        e[0].notes,
        [
            "in block `a` used at t.yaml:9:15 (repetition 1 of 100)",
            "in block `b` used at t.yaml:11:11 (repetition 1 of 300)",
            "the same error in 29999 more instance(s): `a` used at t.yaml:9:15 (repetition 2 of 100) in `b` \
             (repetition 1 of 300); `a` used at t.yaml:9:15 (repetition 3 of 100) in `b` (repetition 1 of 300); `a` \
             used at t.yaml:9:15 (repetition 4 of 100) in `b` (repetition 1 of 300); `a` used at t.yaml:9:15 \
             (repetition 5 of 100) in `b` (repetition 1 of 300); and 29995 more"
        ]
    );
    assert_eq!(e[1].message, "node `activation` refers to an unknown node `nothere`");
    assert!(e[1].notes[2].starts_with("the same error in 29999 more instance(s)"), "{}", e[1]);
    // Past the node limit, the expansion stops with that error instead.
    let y = y.replace("repeat: 100", "repeat: 300");
    let d = diags(&y);
    assert!(d.errors().next().unwrap().message.starts_with("the spec expands to more than 100,000 nodes"), "{d}");
}

// ---------------------------------------------------------------------------------------------------
// Reading the spec file.

fn load_error(path: &Path, opts: &Options) -> String {
    match Model::from_file(path, opts) {
        Err(e @ Error::Io { .. }) => e.to_string(),
        Err(e) => panic!("not an I/O error: {e}"),
        Ok(_) => panic!("{} loaded", path.display()),
    }
}

#[test]
fn spec_paths_that_are_not_regular_files_are_refused_before_reading() {
    let e = load_error(Path::new("/dev/zero"), &Options::default());
    assert_eq!(e, "/dev/zero: this is not a regular file (a device, fifo or socket), not a YAML spec file");
    let d = scratch("dir");
    let e = load_error(&d, &Options::default());
    assert!(e.ends_with(": this is a directory, not a YAML spec file"), "{e}");
    if Command::new("mkfifo").arg(d.join("fifo")).status().is_ok_and(|s| s.success()) {
        let e = load_error(&d.join("fifo"), &Options::default());
        assert!(e.ends_with("this is not a regular file (a device, fifo or socket), not a YAML spec file"), "{e}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn spec_files_larger_than_the_limit_are_refused_before_reading() {
    let d = scratch("large");
    let p = d.join("big.yaml");
    std::fs::write(&p, "# padding\n".repeat(200)).unwrap();
    let opts = Options { limits: Some(Limits { max_spec_bytes: 1000, ..Limits::default() }), ..Default::default() };
    let e = load_error(&p, &opts);
    assert!(e.ends_with("big.yaml: the spec is 2,000 bytes, more than the limit of 1,000 bytes for a spec file; if a real model needs more, raise it with the environment variable RESNETC_MAX_SPEC_BYTES (or `Options::limits`)"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

// ---------------------------------------------------------------------------------------------------
// The YAML itself.

#[test]
fn a_tab_in_the_indentation_is_reported_on_its_own_line() {
    // The parser reports these at the scalar before the tab (line 3); the tab is on line 4.
    for y in [
        "input: [8, 8, 3]\nlayers:\n  - op: relu\n\t name: x\n",
        "input: [8, 8, 3]\nlayers:\n- {op: relu}\n\t- {op: relu}\n",
        "input: [8, 8, 3]\nlayers:\n  - {op: relu}\n \t - {op: relu}\n",
    ] {
        let (l, c, e) = one_error(y);
        assert_eq!(e.message, "invalid YAML: a tab in the indentation (YAML indents with spaces only)");
        assert_eq!(l, 4, "{e}");
        assert_eq!(c, if y.contains(" \t") { 2 } else { 1 }, "{e}");
    }
}

#[test]
fn yaml_resource_limits_are_named() {
    // A billion laughs: aliases of aliases.
    let mut y = String::from("input: [8, 8, 3]\nx0: &a0 [1, 2]\n");
    for i in 1..30 {
        y += &format!("x{i}: &a{i} [*a{}, *a{}]\n", i - 1, i - 1);
    }
    y += "layers:\n  - {op: relu}\n";
    let (_, _, e) = one_error(&y);
    assert!(
        e.message.starts_with("invalid YAML: the spec has more than 250,000 YAML values (the YAML parser's limit"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------------
// The command line: the same limits, and the environment variables that raise them.

#[test]
fn cli_check_refuses_devices_and_directories() {
    for path in ["/dev/zero", "/dev/urandom", "specs"] {
        let o = resnetc_env(&["check", path], &[]);
        assert_eq!(o.status.code(), Some(1), "{path}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.starts_with(&format!("{path}: this is ")), "{err}");
    }
}

#[test]
fn cli_limits_are_raised_by_environment_variables() {
    let d = scratch("env");
    let spec = d.join("deep.yaml");
    std::fs::write(&spec, nested_blocks(100)).unwrap();
    let spec = spec.display().to_string();
    let o = resnetc_env(&["check", &spec], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("blocks nest more than 64 levels deep"));
    let o = resnetc_env(&["check", &spec], &[("RESNETC_MAX_BLOCK_DEPTH", "100")]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let o = resnetc_env(&["check", &spec], &[("RESNETC_MAX_NODES", "lots")]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the environment variable RESNETC_MAX_NODES must be a positive integer, found `lots`"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// A spec whose layers are each within the per-tensor limit but whose whole model would not fit in memory
/// (10 convs of 2^30 weights: 43 GB of float32, before packing) is refused by `check`, at the node where
/// the total passes the limit, before anything is allocated.
#[test]
fn a_model_too_large_for_memory_names_the_limit() {
    let mut y = String::from("input: [1, 1, 16384]\nlayers:\n");
    for _ in 0..10 {
        y.push_str("  - {op: conv, filters: 16384, kernel: 1}\n");
    }
    // 16384^2 + 16384 = 268,451,840 parameters per conv: the fourth passes 2^30.
    let e = assert_error(
        &y,
        6,
        5,
        &["the model has 2,684,518,400 parameters in all, more than the limit of 1,073,741,824", "`conv2d_3`"],
    );
    assert!(e.notes[0].starts_with("the largest: `conv2d` 268,451,840"), "{e}");
    assert!(e.notes[1].contains("RESNETC_MAX_PARAMS"), "{e}");
    let raised = Options { limits: Some(Limits { max_params: 3 << 30, ..Limits::default() }), ..Default::default() };
    assert!(diags_with(&y, &raised).0);
    // Activations: every node's output counts (per batch item), the input's too.
    let y = "input: [64, 64, 4]\nlayers:\n  - {op: relu}\n  - {op: relu}\n  - {op: relu}\n";
    let small =
        Options { limits: Some(Limits { max_activation_bytes: 200_000, ..Limits::default() }), ..Default::default() };
    let (ok, d) = diags_with(y, &small);
    assert!(!ok);
    let e = d.errors().next().unwrap();
    assert!(
        e.message.contains("the model has 262,144 bytes of activations per batch item in all, more than the limit of 200,000; it passes the limit at node `activation_2`"),
        "{e}"
    );
    assert_eq!(e.loc.as_ref().map(|l| l.line), Some(5));
    assert!(e.notes[1].contains("RESNETC_MAX_ACTIVATION_BYTES"), "{e}");
}

#[test]
fn model_size_limits_are_raised_by_environment_variables() {
    let d = scratch("size-env");
    let spec = d.join("big.yaml");
    std::fs::write(&spec, "input: [8, 8, 3]\nlayers:\n  - {op: conv, filters: 64, kernel: 3}\n").unwrap();
    let spec = spec.display().to_string();
    let o = resnetc_env(&["check", &spec], &[("RESNETC_MAX_PARAMS", "1000")]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("the model has 1,792 parameters in all, more than the limit of 1,000"),
        "{}",
        stderr(&o)
    );
    let o = resnetc_env(&["check", &spec], &[("RESNETC_MAX_PARAMS", "2000")]);
    assert_exit(&o, 0);
    let _ = std::fs::remove_dir_all(&d);
}
