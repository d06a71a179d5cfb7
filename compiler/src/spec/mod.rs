//! The spec stage: YAML text → a flat, typed list of nodes, every one with its source location.
//!
//! Input is a [`YNode`] tree (see [`crate::yaml`]). Block uses are expanded here (parameters substituted,
//! repeats unrolled, names given to unnamed nodes), fields are type-checked against each op's table, and
//! every problem found is pushed into a [`Diagnostics`] list rather than stopping at the first. Output is
//! a [`Spec`]: the model input, the nodes in spec order with references still by name, and the chosen
//! output. The graph stage ([`crate::graph`]) resolves references, checks the topology and infers shapes.
//!
//! The expansion is bounded by [`Limits`] (nodes, block depth, name length, expanded size): past one,
//! it stops with an error naming the limit. The language is documented in the README ("The spec
//! language"), the limits in its "Limits" section.
//!
//! Code: this file has the types, the expander's core (entries, nodes, names, templates); `blocks.rs`
//! expands block uses; `fields.rs` type-checks a node's fields into an [`Op`].

mod blocks;
pub mod expr;
mod fields;
pub mod io;
pub mod limits;

pub use limits::{read_spec_file, Limit, Limits};

use crate::diag::{did_you_mean, shown, Diagnostic, Diagnostics, Loc, Repeats};
use crate::ops::Op;
use crate::report::thousands;
use crate::yaml::{YNode, YValue};
use blocks::Block;
use expr::{Env, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What to do when an `add`'s operands differ in shape but a 1x1 strided projection would reconcile them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectionPolicy {
    /// Insert the projection convolution (and report it).
    Insert,
    /// Refuse: the spec must write the projection itself.
    Error,
}

/// A reference from a node to one of its inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Ref {
    pub name: String,
    pub loc: Loc,
    /// A residual shortcut edge (the `shortcut:` operand of an `add`, or an `add` input that is not the
    /// node written just before it).
    pub shortcut: bool,
}

/// One node of the expanded spec.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpec {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<Ref>,
    /// Where the node's mapping starts.
    pub loc: Loc,
    /// For `add`: the name to give an inserted shortcut projection (so its weights can be loaded).
    pub projection: Option<String>,
    /// The block instance that produced the node; `None` for a node written in `layers`.
    pub instance: Option<Arc<BlockInstance>>,
}

/// One instantiation of a block: a use, or one iteration of a use's `for` or `repeat`.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockInstance {
    /// Distinct for every instance in the spec (0, 1, ... in expansion order).
    pub id: usize,
    pub block: String,
    /// Where the use is written.
    pub used_at: Loc,
    /// The arguments written in `with`, then the one `for` iterates, as `name=value` texts (long values
    /// cut).
    pub args: Vec<(String, String)>,
    /// Whether the last of `args` is the one `for` iterates.
    pub iterated: bool,
    /// Which iteration this is, 1-based (the value of the implicit parameter `rep`), of how many.
    pub rep: usize,
    pub reps: usize,
    /// The instance whose block used this one.
    pub parent: Option<Arc<BlockInstance>>,
}

impl BlockInstance {
    /// How messages name the iteration: ` with block=b`, ` (repetition 2 of 3)`, or nothing.
    pub fn iteration(&self) -> String {
        match self.args.last() {
            Some((k, v)) if self.iterated => format!(" with {k}={v}"),
            _ if self.reps > 1 => format!(" (repetition {} of {})", self.rep, self.reps),
            _ => String::new(),
        }
    }

    /// The note on messages about its nodes: "in block `x` used at FILE:L:C with k=v".
    pub fn note(&self) -> String {
        format!("in block `{}` used at {}{}", self.block, self.used_at, self.iteration())
    }

    /// The notes of this instance and of the instances containing it, innermost first (past 8 levels,
    /// the middle ones counted).
    pub fn notes(&self) -> Vec<String> {
        let mut all = vec![self];
        while let Some(p) = all.last().and_then(|i| i.parent.as_deref()) {
            all.push(p);
        }
        if all.len() <= 8 {
            return all.iter().map(|i| i.note()).collect();
        }
        let mut out: Vec<String> = all[..6].iter().map(|i| i.note()).collect();
        out.push(format!("... in {} more enclosing block uses", all.len() - 7));
        out.push(all[all.len() - 1].note());
        out
    }

    /// This instance and the instances containing it, outermost first.
    pub fn chain(self: &Arc<Self>) -> Vec<Arc<BlockInstance>> {
        let mut out = vec![self.clone()];
        while let Some(p) = out.last().and_then(|i| i.parent.clone()) {
            out.push(p);
        }
        out.reverse();
        out
    }

    /// How a picture labels it: `identity_block(stage=2, block=b)`, `unit() #2` for a repetition.
    pub fn label(&self) -> String {
        let mut args: Vec<String> = self.args.iter().take(8).map(|(k, v)| format!("{k}={v}")).collect();
        if self.args.len() > 8 {
            args.push("...".into());
        }
        let rep = if self.reps > 1 && !self.iterated { format!(" #{}", self.rep) } else { String::new() };
        format!("{}({}){rep}", self.block, args.join(", "))
    }

    /// How the list of instances in a merged error names it ("`unit` used at t.yaml:9:5 (repetition 2
    /// of 3)", with the instances containing it).
    fn describe(&self) -> String {
        let mut s = format!("`{}` used at {}{}", self.block, self.used_at, self.iteration());
        let mut p = self.parent.as_deref();
        while let Some(i) = p {
            s.push_str(&format!(" in `{}`{}", i.block, i.iteration()));
            p = i.parent.as_deref();
        }
        s
    }
}

/// The model input.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub loc: Loc,
}

/// A parsed, expanded, field-checked spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub file: Arc<str>,
    pub model: String,
    pub input: InputSpec,
    pub nodes: Vec<NodeSpec>,
    /// The output node and where it was chosen (the `output:` field, or the last layer).
    pub output: (String, Loc),
    pub projection: ProjectionPolicy,
    /// Names of nodes that had errors of their own (already reported): later stages skip them and
    /// whatever depends on them, so that one mistake is reported once.
    pub broken: HashSet<String>,
    /// How images are fed to the model and what its classes are called (`preprocess`, `resize`, `labels`).
    pub io: io::ImageIo,
}

const TOP_KEYS: &[&str] =
    &["model", "input", "blocks", "layers", "output", "shortcut_projection", "preprocess", "resize", "labels"];
const BLOCK_KEYS: &[&str] = &["params", "nodes"];
const USE_KEYS: &[&str] = &["use", "with", "for", "repeat"];
const COMMON_KEYS: &[&str] = &["op", "name", "inputs"];

/// Every op a spec may write, with its own fields.
pub const OPS: &[(&str, &[&str])] = &[
    ("zero_padding", &["padding"]),
    ("conv", &["filters", "kernel", "strides", "padding", "bias"]),
    ("batch_norm", &["epsilon"]),
    ("relu", &[]),
    ("softmax", &[]),
    ("add", &["shortcut", "projection"]),
    ("max_pool", &["pool", "strides", "padding"]),
    ("avg_pool", &["pool", "strides", "padding"]),
    ("global_avg_pool", &[]),
    ("global_max_pool", &[]),
    ("flatten", &[]),
    ("dense", &["units", "activation", "bias"]),
];

/// Keras layer names people may write, and our op for each.
const KERAS_NAMES: &[(&str, &str)] = &[
    ("Conv2D", "conv"),
    ("BatchNormalization", "batch_norm"),
    ("Activation", "relu"),
    ("ReLU", "relu"),
    ("Add", "add"),
    ("MaxPooling2D", "max_pool"),
    ("AveragePooling2D", "avg_pool"),
    ("GlobalAveragePooling2D", "global_avg_pool"),
    ("GlobalMaxPooling2D", "global_max_pool"),
    ("Flatten", "flatten"),
    ("Dense", "dense"),
    ("ZeroPadding2D", "zero_padding"),
    ("Softmax", "softmax"),
];

/// The name Keras gives an unnamed layer of each op (`conv2d`, then `conv2d_1`, `conv2d_2`...): an
/// unnamed node is named the same way, so that weights exported from a Keras model whose layers were
/// not named load as they are.
fn keras_base_name(op: &str) -> &'static str {
    match op {
        "zero_padding" => "zero_padding2d",
        "conv" => "conv2d",
        "batch_norm" => "batch_normalization",
        "relu" | "softmax" => "activation",
        "add" => "add",
        "max_pool" => "max_pooling2d",
        "avg_pool" => "average_pooling2d",
        "global_avg_pool" => "global_average_pooling2d",
        "global_max_pool" => "global_max_pooling2d",
        "flatten" => "flatten",
        "dense" => "dense",
        _ => "node",
    }
}

/// The implicit block parameter that numbers a use's instances (1, 2, ... for `repeat` and `for`).
const REP: &str = "rep";

struct Expander<'a> {
    limits: Limits,
    blocks: HashMap<String, Block<'a>>,
    diags: Diagnostics,
    /// Merges one mistake made in many block instances into one message.
    repeats: Repeats,
    /// Every problem reported (merged and counted ones too): whether an entry had errors is a change
    /// of this count.
    problems: usize,
    nodes: Vec<NodeSpec>,
    /// Every name defined so far, with where it was defined.
    names: HashMap<String, Loc>,
    /// The names given to unnamed nodes (for the message when a written name repeats one).
    generated: HashSet<String>,
    /// The next number of each automatic name (`conv2d` → 3 gives `conv2d_3`).
    auto_names: HashMap<&'static str, usize>,
    /// Blocks being expanded, to refuse recursive use.
    stack: Vec<String>,
    /// The block instance being expanded, and how many there were.
    instance: Option<Arc<BlockInstance>>,
    instances: usize,
    broken: HashSet<String>,
    /// In the entry being expanded: values whose template substitution failed (reported), so that the
    /// placeholder left there draws no second error.
    failed: HashSet<Loc>,
    /// In the node being checked: fields that an unknown, misspelled key was taken for (so that the
    /// "missing field" error is not added to the "did you mean" one).
    misspelled: HashSet<String>,
    /// Nodes expanded so far (with errors or not), and bytes of node fields substituted.
    expanded_nodes: usize,
    expanded_bytes: usize,
    /// A size limit was reached (and reported): expansion stops.
    exhausted: bool,
}

/// Parses and expands a spec. `input_shape` overrides the spec's input shape (the CLI's `--input-shape`).
/// Returns the spec (possibly with `broken` nodes left out) and every diagnostic found; the spec is
/// `None` only when nothing sensible can follow (no layers, YAML syntax errors, a size limit reached).
/// When the input itself is wrong its name is in `broken`, so the graph stage still checks references
/// and cycles.
pub fn parse_spec(
    file: &Arc<str>,
    bytes: &[u8],
    input_shape: Option<&[usize]>,
    limits: &Limits,
) -> (Option<Spec>, Diagnostics) {
    let doc = match crate::yaml::parse(file, bytes) {
        Ok(d) => d,
        Err(e) => return (None, Diagnostics(vec![e])),
    };
    let mut ex = Expander {
        limits: *limits,
        blocks: HashMap::new(),
        diags: Diagnostics::default(),
        repeats: Repeats::default(),
        problems: 0,
        nodes: vec![],
        names: HashMap::new(),
        generated: HashSet::new(),
        auto_names: HashMap::new(),
        stack: vec![],
        instance: None,
        instances: 0,
        broken: HashSet::new(),
        failed: HashSet::new(),
        misspelled: HashSet::new(),
        expanded_nodes: 0,
        expanded_bytes: 0,
        exhausted: false,
    };
    let Some(top) = doc.as_map() else {
        ex.diags.error(
            Some(&doc.loc),
            format!("a spec is a mapping with `input` and `layers`; found {}", doc.value.describe()),
        );
        return (None, ex.diags);
    };
    for (k, _) in top {
        let key = k.as_str().unwrap_or("");
        if !TOP_KEYS.contains(&key) {
            ex.unknown_field(k, "the spec's top level", TOP_KEYS);
        }
    }
    let model = match doc.get("model") {
        Some(n) => ex.name(n, "`model`").unwrap_or_default(),
        None => file.rsplit('/').next().unwrap_or("model").trim_end_matches(".yaml").to_string(),
    };
    let projection = match doc.get("shortcut_projection") {
        None => ProjectionPolicy::Insert,
        Some(n) => match ex.choice(n, "`shortcut_projection`", &["insert", "error"]) {
            Some("error") => ProjectionPolicy::Error,
            _ => ProjectionPolicy::Insert,
        },
    };
    let io = io::parse(&doc, file, &mut ex.diags);
    let input = match ex.input(&doc, input_shape) {
        Some(i) => i,
        None => {
            // Reported already. Keep the input's name so the layers are still checked (references,
            // cycles, fields), but mark it broken: no shapes can be inferred from it.
            let name = doc.get("input").and_then(|i| i.get("name")).and_then(|n| n.as_str()).unwrap_or("input");
            let loc = doc.get("input").map(|i| i.loc.clone()).unwrap_or(doc.loc.clone());
            ex.broken.insert(name.to_string());
            InputSpec { name: name.to_string(), shape: vec![], loc }
        }
    };
    if let Some(b) = doc.get("blocks") {
        ex.collect_blocks(b);
    }
    ex.names.insert(input.name.clone(), input.loc.clone());
    let layers = match doc.get("layers") {
        Some(l) => match l.as_seq() {
            Some(s) if !s.is_empty() => Some(s),
            Some(_) => {
                ex.diags.error(Some(&l.loc), "`layers` is empty: expected a list of nodes");
                None
            }
            None => {
                ex.diags.error(Some(&l.loc), format!("`layers` must be a list of nodes, found {}", l.value.describe()));
                None
            }
        },
        None => {
            ex.diags.error(Some(&doc.loc), "missing field `layers` (the list of the model's nodes)");
            None
        }
    };
    let Some(layers) = layers else { return (None, ex.finish()) };
    let last = ex.sequence(layers, &Env::new(), Some(input.name.clone()));
    let last_loc = layers.last().map(|n| n.loc.clone()).unwrap_or(doc.loc.clone());
    let output = match doc.get("output") {
        Some(n) => ex.name(n, "`output`").map(|s| (s, n.loc.clone())),
        None => last.map(|l| (l, last_loc)),
    };
    if ex.exhausted {
        return (None, ex.finish());
    }
    let (nodes, broken) = (std::mem::take(&mut ex.nodes), std::mem::take(&mut ex.broken));
    let diags = ex.finish();
    match output {
        Some(output) => (Some(Spec { file: file.clone(), model, input, nodes, output, projection, broken, io }), diags),
        None => (None, diags),
    }
}

fn to_yvalue(v: Value, loc: &Loc) -> YValue {
    match v {
        Value::Int(i) => YValue::Int(i),
        Value::Float(x) => YValue::Float(x),
        Value::Bool(b) => YValue::Bool(b),
        Value::Str(s) => YValue::Str(s),
        Value::List(items) => {
            YValue::Seq(items.into_iter().map(|x| YNode { loc: loc.clone(), value: to_yvalue(x, loc) }).collect())
        }
    }
}

fn to_value(n: &YNode) -> Option<Value> {
    Some(match &n.value {
        YValue::Int(i) => Value::Int(*i),
        YValue::Float(x) => Value::Float(*x),
        YValue::Bool(b) => Value::Bool(*b),
        YValue::Str(s) => Value::Str(s.clone()),
        YValue::Seq(s) => Value::List(s.iter().map(to_value).collect::<Option<_>>()?),
        YValue::Null | YValue::Map(_) => return None,
    })
}

fn hint(s: Option<&str>) -> String {
    s.map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default()
}

impl<'a> Expander<'a> {
    /// The diagnostics, with merged repeats noted.
    fn finish(mut self) -> Diagnostics {
        let mut diags = std::mem::take(&mut self.diags);
        self.repeats.finish(&mut diags);
        diags
    }

    /// Reports an error at `loc`: inside a block instance, the same message at the same place from
    /// another instance is merged into the first report.
    fn err(&mut self, loc: &Loc, msg: impl Into<String>) {
        let msg = msg.into();
        self.report(loc, &msg.clone(), move || msg, vec![]);
    }

    /// [`Expander::err`] for a message that costs work to write (a "did you mean"): `key` identifies
    /// the mistake, and `message` is written only for its first report. `notes` follow the notes naming
    /// the block instance.
    fn report(&mut self, loc: &Loc, key: &str, message: impl FnOnce() -> String, notes: Vec<String>) {
        if self.failed.contains(loc) {
            // A template here failed to expand and was reported; its placeholder value is not the user's.
            return;
        }
        self.problems += 1;
        let instance = self.instance.clone();
        let describe = instance.as_ref().map(|i| move || i.describe());
        let full = self.diags.is_full();
        let make = || {
            // Past the report's limit the error is only counted: skip the work on its message.
            let mut d = Diagnostic::error(Some(loc.clone()), if full { String::new() } else { message() });
            if let Some(i) = &instance {
                d.notes = i.notes();
            }
            d.notes.extend(notes);
            d
        };
        self.repeats.report(&mut self.diags, Some(loc), key, describe.as_ref().map(|f| f as &dyn Fn() -> String), make);
    }

    /// Reports a size limit reached, once, and stops the expansion.
    fn exhausted(&mut self, loc: &Loc, msg: String) {
        if !self.exhausted {
            self.exhausted = true;
            self.problems += 1;
            let mut d = Diagnostic::error(Some(loc.clone()), msg);
            if let Some(i) = &self.instance {
                d.notes = i.notes();
            }
            self.diags.push(d);
        }
    }

    /// Reports an unknown key; returns the allowed key it is probably a misspelling of. `note` is added
    /// when there is no such key.
    fn unknown_field(&mut self, key: &YNode, what: &str, allowed: &[&str]) -> Option<String> {
        self.unknown_field_note(key, what, allowed, None)
    }

    fn unknown_field_note(
        &mut self,
        key: &YNode,
        what: &str,
        allowed: &[&str],
        note: Option<String>,
    ) -> Option<String> {
        let k = key.as_str().map(str::to_string).unwrap_or_else(|| key.value.to_string());
        let guess = did_you_mean(&k, allowed.iter().copied()).map(str::to_string);
        let msg = format!(
            "unknown field `{}` in {what}{}; expected one of: {}",
            shown(&k),
            hint(guess.as_deref()),
            allowed.join(", ")
        );
        let notes = if guess.is_none() { note.into_iter().collect() } else { vec![] };
        self.report(&key.loc, &msg.clone(), move || msg, notes);
        guess
    }

    /// A name (of a node, a reference, the model): a non-empty string of at most the name limit, without
    /// control characters (names end up in DOT, JSON, file names and terminals).
    fn name(&mut self, n: &YNode, what: &str) -> Option<String> {
        let s = self.string(n, what)?;
        if s.len() > self.limits.max_name_len {
            self.err(
                &n.loc,
                format!(
                    "{what} is {} bytes long, more than the limit of {} for a name: `{}`; {}",
                    s.len(),
                    self.limits.max_name_len,
                    shown(&s),
                    self.limits.how_to_raise(Limit::NameLen)
                ),
            );
            return None;
        }
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            self.err(
                &n.loc,
                format!(
                    "{what} `{}` contains the control character {c:?}: names may not (they end up in DOT, JSON and \
                     file names)",
                    shown(&s)
                ),
            );
            return None;
        }
        Some(s)
    }

    /// Substitutes template parameters everywhere in an entry. A template that fails is reported, and
    /// its value's location remembered so that the placeholder left there draws no second error. What
    /// is substituted counts against the expansion budget.
    fn substitute(&mut self, n: &YNode, env: &Env) -> YNode {
        if self.exhausted {
            return YNode { loc: n.loc.clone(), value: YValue::Null };
        }
        // What the substituted value costs, about: 64 bytes per value plus the text of strings.
        let (value, bytes) = match &n.value {
            YValue::Str(s) if expr::is_template(s) => match expr::expand(s, env) {
                Ok(v) => {
                    let size = v.size();
                    (to_yvalue(v, &n.loc), size)
                }
                Err(e) => {
                    self.report(&n.loc, &e.to_string(), || e.message(env), vec![]);
                    self.failed.insert(n.loc.clone());
                    (YValue::Null, 64)
                }
            },
            YValue::Str(s) => (YValue::Str(s.clone()), 64 + s.len()),
            YValue::Seq(s) => (YValue::Seq(s.iter().map(|x| self.substitute(x, env)).collect()), 64),
            YValue::Map(m) => {
                let m = m.iter().map(|(k, v)| (k.clone(), self.substitute(v, env))).collect::<Vec<_>>();
                let keys: usize = m.iter().map(|(k, _)| 64 + k.as_str().map_or(0, str::len)).sum();
                (YValue::Map(m), 64 + keys)
            }
            other => (other.clone(), 64),
        };
        self.charge(bytes, &n.loc);
        YNode { loc: n.loc.clone(), value }
    }

    /// Counts `bytes` of expanded node fields against the budget; past it, the expansion stops.
    fn charge(&mut self, bytes: usize, loc: &Loc) {
        self.expanded_bytes = self.expanded_bytes.saturating_add(bytes);
        if self.expanded_bytes > self.limits.max_expanded_bytes() {
            let msg = format!(
                "the blocks expand to more than {} bytes of node fields (the limit: 2 KiB per node of the node \
                 limit of {}); {}",
                thousands(self.limits.max_expanded_bytes() as u64),
                thousands(self.limits.max_nodes as u64),
                self.limits.how_to_raise(Limit::Nodes)
            );
            self.exhausted(loc, msg);
        }
    }

    /// A stand-in name for something that went wrong and has no name of its own (a block use that could
    /// not be expanded, a node whose name is invalid): it is `broken`, so whatever follows it is not
    /// checked against a wrong input.
    fn placeholder(&mut self, what: &str, loc: &Loc) -> Option<String> {
        let name = format!("<{what} at {}:{}>", loc.line, loc.col);
        self.broken.insert(name.clone());
        self.names.insert(name.clone(), loc.clone());
        Some(name)
    }

    /// Expands a list of entries chained one after the other; returns the name of the last node.
    fn sequence(&mut self, entries: &[YNode], env: &Env, mut prev: Option<String>) -> Option<String> {
        for e in entries {
            if self.exhausted {
                return prev;
            }
            if e.as_map().is_none() {
                let h = match e.as_str() {
                    Some(s) if OPS.iter().any(|(o, _)| *o == s) => format!(" (write `{{op: {s}}}`)"),
                    Some(s) if self.blocks.contains_key(s) => format!(" (write `{{use: {s}}}`)"),
                    _ => String::new(),
                };
                self.err(
                    &e.loc,
                    format!(
                        "expected a node (a mapping with `op`) or a block use (`use:`), found {}{h}",
                        e.value.describe()
                    ),
                );
                prev = self.placeholder("invalid entry", &e.loc);
                continue;
            }
            prev = if e.get("use").is_some() { self.use_block(e, env, prev) } else { self.node(e, env, prev) };
        }
        prev
    }

    fn node(&mut self, raw: &YNode, env: &Env, prev: Option<String>) -> Option<String> {
        self.expanded_nodes += 1;
        if self.expanded_nodes > self.limits.max_nodes {
            let msg = format!(
                "the spec expands to more than {} nodes (the limit; nodes in blocks count once per instance); {}",
                thousands(self.limits.max_nodes as u64),
                self.limits.how_to_raise(Limit::Nodes)
            );
            self.exhausted(&raw.loc, msg);
            return prev;
        }
        let start = self.diags.0.len();
        let (name, label) = self.node_inner(raw, env, prev);
        // Every message about this node names it.
        if let Some(l) = label {
            let tag = format!("`{l}`");
            for d in self.diags.0[start..].iter_mut().filter(|d| d.is_error() || d.is_warning()) {
                let named =
                    d.message.starts_with("node `") || d.message.starts_with(&format!("duplicate node name {tag}"));
                if !named && !d.message.is_empty() {
                    d.message = format!("node {tag}: {}", d.message);
                }
            }
        }
        name
    }

    /// Checks one node; returns its name (for chaining) and the name to put in messages about it.
    fn node_inner(&mut self, raw: &YNode, env: &Env, prev: Option<String>) -> (Option<String>, Option<String>) {
        let problems_before = self.problems;
        self.misspelled.clear();
        self.failed.clear();
        let n = self.substitute(raw, env);
        if self.exhausted {
            return (prev, None);
        }
        // A failed template makes the node broken even when its error was reported for an earlier use.
        let templates_ok = self.failed.is_empty();
        let op_text = n.get("op").and_then(|o| o.as_str()).unwrap_or("").to_string();
        // Inputs: `inputs` (a name or a list), else the previous node; `add` may name a `shortcut`.
        let mut inputs: Vec<Ref> = vec![];
        match n.get("inputs") {
            Some(i) => {
                let items: Vec<&YNode> = match &i.value {
                    YValue::Seq(s) => s.iter().collect(),
                    _ => vec![i],
                };
                if items.is_empty() {
                    self.err(&i.loc, "`inputs` is empty: expected a node name or a list of node names");
                }
                for it in items {
                    if let Some(name) = self.name(it, "an input name") {
                        let shortcut = op_text == "add" && prev.as_deref() != Some(name.as_str());
                        inputs.push(Ref { name, loc: it.loc.clone(), shortcut });
                    }
                }
            }
            None => match &prev {
                Some(p) => inputs.push(Ref { name: p.clone(), loc: n.loc.clone(), shortcut: false }),
                None => {
                    self.err(&n.loc, "this node has no input: there is no node before it and no `inputs`");
                }
            },
        }
        if let Some(s) = n.get("shortcut") {
            if let Some(name) = self.name(s, "`shortcut`") {
                inputs.push(Ref { name, loc: s.loc.clone(), shortcut: true });
            }
        }
        let projection = n.get("projection").and_then(|p| self.name(p, "`projection`"));
        let explicit = n.get("name").is_some();
        let name = match n.get("name") {
            Some(x) => match self.name(x, "`name`") {
                Some(s) => s,
                None => return (self.placeholder("node", &n.loc), None),
            },
            None => {
                let name = self.auto_name(&op_text);
                self.generated.insert(name.clone());
                name
            }
        };
        if let Some(first) = self.names.get(&name) {
            let at = n.get("name").map(|x| x.loc.clone()).unwrap_or(n.loc.clone());
            let mut msg = if self.generated.contains(&name) {
                format!(
                    "duplicate node name `{name}`: already defined at {first}, where `{name}` is the name given to an \
                     unnamed node (as Keras names them); name that node, or choose another name here"
                )
            } else {
                format!("duplicate node name `{name}`: already defined at {first}")
            };
            let repeated = self.instance.as_ref().is_some_and(|i| i.rep > 1);
            let templated = raw.get("name").and_then(|x| x.as_str()).is_some_and(expr::is_template);
            if repeated && !templated {
                msg.push_str(&format!(
                    "; the block is used several times, so its node names must differ per instance: put a parameter \
                     into them, e.g. `{name}_{{{REP}}}` (`{REP}` numbers the instances of a use: 1, 2, ...)"
                ));
            }
            self.err(&at, msg);
            return (Some(name.clone()), Some(name));
        }
        // Keep the name known even when the node has errors, so references to it do not cascade.
        self.names.insert(name.clone(), n.loc.clone());
        // Messages name the node; a generated name only when it means something (a known op), since the
        // user never wrote it.
        let known_op = OPS.iter().any(|(o, _)| *o == op_text);
        let label = (explicit || known_op).then(|| name.clone());
        let op = self.node_op(&n);
        match op {
            Some(op) if templates_ok && self.problems == problems_before => {
                self.nodes.push(NodeSpec {
                    name: name.clone(),
                    op,
                    inputs,
                    loc: n.loc.clone(),
                    projection,
                    instance: self.instance.clone(),
                });
            }
            _ => {
                self.broken.insert(name.clone());
            }
        }
        (Some(name), label)
    }

    /// The name of an unnamed node: Keras's for its op (`conv2d`, `conv2d_1`, ...), skipping names taken.
    fn auto_name(&mut self, op: &str) -> String {
        let base = keras_base_name(op);
        let k = self.auto_names.entry(base).or_insert(0);
        loop {
            let cand = if *k == 0 { base.to_string() } else { format!("{base}_{k}") };
            *k += 1;
            if !self.names.contains_key(&cand) {
                return cand;
            }
        }
    }
}
