//! A mutation fuzzer for the spec front end: proptest mutates the shipped specs (specs/*.yaml and
//! tests/fixtures/*.yaml) — bytes flipped, lines dropped, swapped and repeated, numbers replaced by
//! extremes, hostile snippets inserted — and checks every mutant:
//! - `check` does not panic (proptest catches the panic and shrinks the mutant to a small one), with the
//!   default limits and with tiny ones that the mutants reach;
//! - it answers in bounded time (a case over [`CASE_LIMIT`] fails: a hang, not a slow machine);
//! - every error and warning is located in the spec, with a message free of Rust debug output;
//! - a spec that passes gives a graph that verifies, a summary and both DOT pictures;
//! - and, at the end, the process never held more than [`MEMORY_LIMIT`] (Linux: VmHWM).
//!
//! CI runs it for `FUZZ_SECS` seconds (default 30) from a fixed seed, so a run is reproducible; run it
//! longer, from another seed, with
//!
//! ```sh
//! FUZZ_SECS=600 FUZZ_SEED=$RANDOM cargo test --release --test spec_fuzz -- --nocapture
//! ```
//!
//! It prints how many mutants it checked. Every failure it ever found is a named case in
//! [`regressions`] below.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use resnetc_compiler::spec::Limits;
use resnetc_compiler::{check, report, Options};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Outcomes, to see where the mutants go: valid specs, YAML errors, and errors past the YAML.
static VALID: AtomicU64 = AtomicU64::new(0);
static YAML_ERRORS: AtomicU64 = AtomicU64::new(0);
static SPEC_ERRORS: AtomicU64 = AtomicU64::new(0);

const FILE: &str = "fuzz.yaml";
/// A case slower than this fails (the largest legal expansion takes ~2 s on a loaded 2-core machine).
const CASE_LIMIT: Duration = Duration::from_secs(20);
/// The process's peak memory after the run, at most.
const MEMORY_LIMIT: u64 = 1 << 30;

/// The seed specs: every shipped spec and fixture.
fn seeds() -> Vec<(String, String)> {
    let mut out = vec![];
    for dir in ["specs", "tests/fixtures"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut paths: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        paths.sort();
        for p in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")) {
            out.push((p.display().to_string(), std::fs::read_to_string(&p).unwrap()));
        }
    }
    assert!(out.len() >= 9, "the seed specs are missing: {out:?}");
    out
}

/// Text inserted anywhere: YAML structure, control characters, whole hostile entries.
const STRUCTURE: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ", ",
    "- ",
    "\n",
    "\t",
    "\0",
    "\x01",
    "\"",
    "'",
    "&a ",
    "*a",
    "{{",
    "}}",
    "{use: ",
    "{op: ",
    "op: add, shortcut: ",
    "inputs: [",
    "name: ",
    "blocks:\n  b:\n    nodes:\n      - {use: b}\n",
    "  - {use: identity_block, repeat: 9999}\n",
    "  - {op: add, inputs: [input, input]}\n",
    "  - {op: conv, filters: 3, kernel: 1}\n",
];

/// Values that replace a number or a word: templates, extremes, names, other types.
const VALUES: &[&str] = &[
    "~",
    "\"{input}\"",
    "input",
    "\"{rep}\"",
    "\"{x % -1}\"",
    "\"{-x}\"",
    "\"{(((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((x)))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))}\"",
    "\"{filters[99]}\"",
    "\"{filters[0] * 4}\"",
    "\"{stage}{block}\"",
    "-9223372036854775808",
    "9223372036854775807",
    "99999999999999999999",
    "1e308",
    ".nan",
    "-1",
    "0",
    "1",
    "2",
    "7",
    "64.0",
    "1048577",
    "[1, 2]",
    "[[1, 2], [3, 4]]",
    "\"a..z\"",
    "\"-9223372036854775808..9223372036854775807\"",
    "same",
    "valid",
    "true",
    "relu",
    "conv",
    "add",
    "dense",
    "flatten",
    "global_avg_pool",
    "max_pool",
    "softmax",
    "repeat",
    "for",
    "with",
    "use",
    "shortcut",
    "projection",
    "strides",
    "filters",
    "kernel",
    "units",
    "output",
];

/// One edit of a spec's text. Positions are fractions of the text (or line count), so that a mutant
/// shrinks towards the start.
#[derive(Clone, Debug)]
enum Mutation {
    /// Replace one byte.
    Byte(f64, u8),
    /// Insert a piece of [`STRUCTURE`].
    Insert(f64, usize),
    /// Delete a run of bytes.
    Delete(f64, usize),
    /// Drop, repeat or move a line.
    DropLine(f64),
    RepeatLine(f64, usize),
    SwapLines(f64, f64),
    /// Replace the k-th number with one of [`VALUES`] (an extreme, a float, a template).
    Number(usize, usize),
    /// Replace the k-th word with one of [`VALUES`].
    Word(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let pos = 0.0..1.0f64;
    // Mostly edits that keep the YAML valid, so that the mutants reach the expansion and the graph.
    prop_oneof![
        1 => (pos.clone(), any::<u8>()).prop_map(|(p, b)| Mutation::Byte(p, b)),
        2 => (pos.clone(), 0..STRUCTURE.len()).prop_map(|(p, s)| Mutation::Insert(p, s)),
        1 => (pos.clone(), 1..64usize).prop_map(|(p, n)| Mutation::Delete(p, n)),
        2 => pos.clone().prop_map(Mutation::DropLine),
        2 => (pos.clone(), 1..5usize).prop_map(|(p, n)| Mutation::RepeatLine(p, n)),
        2 => (pos.clone(), pos).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        5 => (0..200usize, 0..VALUES.len()).prop_map(|(k, s)| Mutation::Number(k, s)),
        5 => (0..400usize, 0..VALUES.len()).prop_map(|(k, s)| Mutation::Word(k, s)),
    ]
}

fn at(f: f64, len: usize) -> usize {
    ((f * len as f64) as usize).min(len)
}

/// Applies the mutations to `text` (as bytes: a mutant need not be UTF-8).
fn mutate(text: &str, ms: &[Mutation]) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    for m in ms {
        match *m {
            Mutation::Byte(p, x) if !b.is_empty() => {
                let i = at(p, b.len() - 1);
                b[i] = x;
            }
            Mutation::Insert(p, s) => {
                let i = at(p, b.len());
                b.splice(i..i, STRUCTURE[s].bytes());
            }
            Mutation::Delete(p, n) => {
                let i = at(p, b.len());
                b.drain(i..(i + n).min(b.len()));
            }
            Mutation::DropLine(_) | Mutation::RepeatLine(..) | Mutation::SwapLines(..) => {
                let mut lines: Vec<Vec<u8>> = b.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect();
                let n = lines.len();
                match *m {
                    Mutation::DropLine(p) if n > 1 => {
                        lines.remove(at(p, n - 1));
                    }
                    Mutation::RepeatLine(p, k) => {
                        let i = at(p, n - 1);
                        let l = lines[i].clone();
                        for _ in 0..k {
                            lines.insert(i, l.clone());
                        }
                    }
                    Mutation::SwapLines(p, q) => lines.swap(at(p, n - 1), at(q, n - 1)),
                    _ => {}
                }
                b = lines.join(&b'\n');
            }
            Mutation::Number(k, s) | Mutation::Word(k, s) => {
                let is_number = matches!(m, Mutation::Number(..));
                let want = |c: u8| if is_number { c.is_ascii_digit() } else { c.is_ascii_alphanumeric() || c == b'_' };
                // The k-th run of digits (or word characters), wrapping around.
                let runs: Vec<(usize, usize)> = {
                    let mut v = vec![];
                    let mut i = 0;
                    while i < b.len() {
                        if want(b[i]) {
                            let st = i;
                            while i < b.len() && want(b[i]) {
                                i += 1;
                            }
                            v.push((st, i));
                        } else {
                            i += 1;
                        }
                    }
                    v
                };
                if !runs.is_empty() {
                    let (st, en) = runs[k % runs.len()];
                    b.splice(st..en, VALUES[s].bytes());
                }
            }
            _ => {}
        }
    }
    b
}

/// Debug output that must never reach a user.
const NOISE: &[&str] = &["Some(", "None", "YValue", "Value::", "Ident(", "Op('", "BudgetBreach", "{ nodes:"];

/// Limits small enough that mutants of the shipped specs reach them (node count, block depth, names).
fn tiny_limits() -> Options {
    let limits =
        Limits { max_spec_bytes: 1 << 20, max_nodes: 150, max_block_depth: 2, max_name_len: 14, ..Limits::default() };
    Options { limits: Some(limits), ..Default::default() }
}

/// Checks one mutant, with the default limits and with tiny ones; Err says what is wrong with how it
/// was handled.
fn check_mutant(bytes: &[u8]) -> Result<(), TestCaseError> {
    check_with(bytes, &Options::default())?;
    check_with(bytes, &tiny_limits())
}

fn check_with(bytes: &[u8], opts: &Options) -> Result<(), TestCaseError> {
    let t = Instant::now();
    let (ok, diags) = check(FILE, bytes, opts);
    let lines = bytes.split(|&c| c == b'\n').count() as u32;
    for d in &diags.0 {
        if !(d.is_error() || d.is_warning()) {
            continue;
        }
        let text = d.to_string();
        let Some(loc) = &d.loc else { return Err(TestCaseError::fail(format!("not located: {text}"))) };
        prop_assert_eq!(&*loc.file, FILE, "{}", text);
        prop_assert!(loc.line >= 1 && loc.line <= lines + 1, "line {} of {}: {}", loc.line, lines, text);
        prop_assert!(!d.message.is_empty(), "an empty message at {}", loc);
        prop_assert!(text.len() < 4000, "a message of {} bytes: {}...", text.len(), &text[..200]);
        for n in NOISE {
            prop_assert!(!text.contains(n), "debug output `{}` in: {}", n, text);
        }
    }
    let yaml_error =
        diags.errors().any(|d| d.message.starts_with("invalid YAML") || d.message.contains("is not UTF-8"));
    let outcome = if ok.is_some() {
        &VALID
    } else if yaml_error {
        &YAML_ERRORS
    } else {
        &SPEC_ERRORS
    };
    outcome.fetch_add(1, Relaxed);
    match ok {
        Some((_, g, _)) => {
            prop_assert!(!diags.has_errors(), "a graph and errors:\n{}", diags);
            prop_assert_eq!(g.verify(), Ok(()));
            let _ = (report::summary(&g), report::dot(&g), report::dot_collapsed(&g));
        }
        None => prop_assert!(diags.has_errors(), "no graph and no error"),
    }
    prop_assert!(t.elapsed() < CASE_LIMIT, "took {:?}", t.elapsed());
    Ok(())
}

/// The process's peak resident memory (Linux), in bytes.
fn peak_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    Some(kb * 1024)
}

#[test]
fn mutated_specs_get_located_errors_in_bounded_time() {
    let secs: u64 = std::env::var("FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let seed: u64 = std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let seeds = seeds();
    let strategy = (0..seeds.len(), prop::collection::vec(mutation(), 1..6));
    let start = Instant::now();
    let (mut cases, mut batch) = (0u64, 0u64);
    // Batches of proptest runs, each from its own seed, until the time is up.
    while start.elapsed() < Duration::from_secs(secs) {
        let config = Config {
            cases: 64,
            rng_seed: RngSeed::Fixed(seed.wrapping_mul(1_000_003).wrapping_add(batch)),
            failure_persistence: None,
            max_shrink_time: 60_000,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        let result = runner.run(&strategy, |(i, ms)| check_mutant(&mutate(&seeds[i].1, &ms)));
        if let Err(e) = result {
            panic!(
                "seed {seed}, batch {batch}: {e}\n(the mutations apply to the seed spec with that index: {:?})",
                seeds.iter().map(|s| &s.0).collect::<Vec<_>>()
            );
        }
        cases += 64;
        batch += 1;
    }
    eprintln!(
        "spec_fuzz: {cases} mutants checked in {:.0?} (FUZZ_SEED={seed}, FUZZ_SECS={secs}); {} valid, {} YAML errors, {} \
         errors past the YAML (counts include shrinking)",
        start.elapsed(),
        VALID.load(Relaxed),
        YAML_ERRORS.load(Relaxed),
        SPEC_ERRORS.load(Relaxed)
    );
    if let Some(peak) = peak_memory() {
        eprintln!("spec_fuzz: peak memory {} MB", peak >> 20);
        assert!(peak < MEMORY_LIMIT, "the process held {} MB", peak >> 20);
    }
}

/// Mutants that failed, minimized: the crashes issue 14's mutation fuzzer found, and any this one finds.
#[test]
fn regressions() {
    let block = |node: &str, x: &str| {
        format!("input: [8, 8, 3]\nblocks:\n  b:\n    params: [x]\n    nodes:\n      - {node}\nlayers:\n  - {{use: b, with: {{x: {x}}}}}\n")
    };
    let min = "-9223372036854775808";
    let cases: Vec<(&str, String)> = vec![
        // Panicked: "attempt to calculate the remainder with overflow".
        ("i64_min_rem_minus_one", block("{op: conv, filters: \"{x % -1}\", kernel: 1}", min)),
        // Panicked: "attempt to divide with overflow".
        ("i64_min_div_minus_one", block("{op: conv, filters: \"{x / -1}\", kernel: 1}", min)),
        // Wrapped silently into the name `n-9223372036854775808`.
        ("i64_min_negated_in_a_name", block("{op: relu, name: \"n{-x}\"}", min)),
        // Aborted: "capacity overflow".
        (
            "for_range_from_i64_min",
            "input: [8, 8, 3]\nblocks:\n  b:\n    params: [x]\n    nodes:\n      - {op: relu}\nlayers:\n  - {use: b, for: {x: \"-9223372036854775808..9223372036854775807\"}}\n".into(),
        ),
        // Stack overflows (SIGABRT).
        ("ten_thousand_parentheses", block(&format!("{{op: relu, name: \"{{{}x{}}}\"}}", "(".repeat(10_000), ")".repeat(10_000)), "1")),
        ("twenty_thousand_minus_signs", block(&format!("{{op: relu, name: \"{{{}x}}\"}}", "-".repeat(20_000)), "1")),
        // Accepted: a NUL in a node name.
        ("nul_in_a_name", "input: [8, 8, 3]\nlayers:\n  - {op: relu, name: \"a\\0b\"}\n".into()),
    ];
    for (name, text) in cases {
        let (_, d) = check(FILE, text.as_bytes(), &Options::default());
        assert!(d.has_errors(), "{name}: accepted");
        if let Err(e) = check_mutant(text.as_bytes()) {
            panic!("{name}: {e}");
        }
    }
}
