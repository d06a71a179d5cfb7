//! The spec stage: YAML text → a flat, typed list of nodes, every one with its source location.
//!
//! Input is a [`YNode`] tree (see [`crate::yaml`]). Block uses are expanded here (parameters substituted,
//! repeats unrolled, names derived), fields are type-checked against each op's table, and every problem
//! found is pushed into a [`Diagnostics`] list rather than stopping at the first. Output is a [`Spec`]:
//! the model input, the nodes in spec order with references still by name, and the chosen output. The
//! graph stage ([`crate::graph`]) resolves references, checks the topology and infers shapes.
//!
//! The language is documented in the README ("The spec language").

pub mod expr;

use crate::diag::{did_you_mean, Diagnostic, Diagnostics, Loc};
use crate::ops::{Activation, Conv, Op, Padding, Pads, Pool, MAX_DIM};
use crate::yaml::{YNode, YValue};
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
    /// Where the node came from when a block produced it ("in block `x` used at FILE:L:C").
    pub context: Vec<String>,
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
}

const TOP_KEYS: &[&str] = &["model", "input", "blocks", "layers", "output", "shortcut_projection"];
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

struct Block<'a> {
    loc: Loc,
    /// Parameters in declaration order, with their defaults.
    params: Vec<(String, Option<Value>)>,
    nodes: &'a [YNode],
}

struct Expander<'a> {
    blocks: HashMap<String, Block<'a>>,
    diags: Diagnostics,
    nodes: Vec<NodeSpec>,
    /// Every name defined so far, with where it was defined.
    names: HashMap<String, Loc>,
    /// Blocks being expanded, to refuse recursive use.
    stack: Vec<String>,
    context: Vec<String>,
    broken: HashSet<String>,
}

/// Parses and expands a spec. `input_shape` overrides the spec's input shape (the CLI's `--input-shape`).
/// Returns the spec (possibly with `broken` nodes left out) and every diagnostic found; the spec is
/// `None` only when nothing sensible can follow (no input, no layers, YAML syntax errors).
pub fn parse_spec(file: &Arc<str>, bytes: &[u8], input_shape: Option<&[usize]>) -> (Option<Spec>, Diagnostics) {
    let doc = match crate::yaml::parse(file, bytes) {
        Ok(d) => d,
        Err(e) => return (None, Diagnostics(vec![e])),
    };
    let mut ex = Expander {
        blocks: HashMap::new(),
        diags: Diagnostics::default(),
        nodes: vec![],
        names: HashMap::new(),
        stack: vec![],
        context: vec![],
        broken: HashSet::new(),
    };
    let Some(top) = doc.as_map() else {
        ex.diags.error(
            Some(&doc.loc),
            format!("a spec is a mapping with `input` and `layers`; found {}", doc.value.kind()),
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
        Some(n) => ex.string(n, "`model`").unwrap_or_default(),
        None => file.rsplit('/').next().unwrap_or("model").trim_end_matches(".yaml").to_string(),
    };
    let projection = match doc.get("shortcut_projection") {
        None => ProjectionPolicy::Insert,
        Some(n) => match ex.choice(n, "`shortcut_projection`", &["insert", "error"]) {
            Some("error") => ProjectionPolicy::Error,
            _ => ProjectionPolicy::Insert,
        },
    };
    let input = ex.input(&doc, input_shape);
    if let Some(b) = doc.get("blocks") {
        ex.collect_blocks(b);
    }
    if let Some(inp) = &input {
        ex.names.insert(inp.name.clone(), inp.loc.clone());
    }
    let layers = match doc.get("layers") {
        Some(l) => match l.as_seq() {
            Some(s) if !s.is_empty() => Some(s),
            Some(_) => {
                ex.diags.error(Some(&l.loc), "`layers` is empty: expected a list of nodes");
                None
            }
            None => {
                ex.diags.error(Some(&l.loc), format!("`layers` must be a list of nodes, found {}", l.value.kind()));
                None
            }
        },
        None => {
            ex.diags.error(Some(&doc.loc), "missing field `layers` (the list of the model's nodes)");
            None
        }
    };
    let mut last = input.as_ref().map(|i| i.name.clone());
    if let Some(layers) = layers {
        last = ex.sequence(layers, &Env::new(), last);
    }
    let output = match doc.get("output") {
        Some(n) => ex.string(n, "`output`").map(|s| (s, n.loc.clone())),
        None => last.map(|l| (l, layers.and_then(|s| s.last()).map(|n| n.loc.clone()).unwrap_or(doc.loc.clone()))),
    };
    let diags = ex.diags;
    match (input, output) {
        (Some(input), Some(output)) => (
            Some(Spec { file: file.clone(), model, input, nodes: ex.nodes, output, projection, broken: ex.broken }),
            diags,
        ),
        _ => (None, diags),
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

impl<'a> Expander<'a> {
    fn err(&mut self, loc: &Loc, msg: impl Into<String>) {
        let mut d = Diagnostic::error(Some(loc.clone()), msg);
        for c in self.context.iter().rev() {
            d = d.note(c.clone());
        }
        self.diags.push(d);
    }

    fn unknown_field(&mut self, key: &YNode, what: &str, allowed: &[&str]) {
        let k = key.as_str().map(str::to_string).unwrap_or_else(|| key.value.to_string());
        let hint =
            did_you_mean(&k, allowed.iter().copied()).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
        self.err(&key.loc, format!("unknown field `{k}` in {what}{hint}; expected one of: {}", allowed.join(", ")));
    }

    fn string(&mut self, n: &YNode, what: &str) -> Option<String> {
        match &n.value {
            YValue::Str(s) if !s.is_empty() => Some(s.clone()),
            YValue::Str(_) => {
                self.err(&n.loc, format!("{what} must not be empty"));
                None
            }
            YValue::Int(i) => Some(i.to_string()),
            v => {
                self.err(&n.loc, format!("{what} must be a string, found {}", v.kind()));
                None
            }
        }
    }

    fn choice(&mut self, n: &YNode, what: &str, options: &[&'static str]) -> Option<&'static str> {
        match &n.value {
            YValue::Str(s) => {
                if let Some(o) = options.iter().find(|o| o.eq_ignore_ascii_case(s)) {
                    return Some(o);
                }
                let hint = did_you_mean(s, options.iter().copied())
                    .map(|x| format!(" (did you mean `{x}`?)"))
                    .unwrap_or_default();
                self.err(&n.loc, format!("{what} must be one of {}, found `{s}`{hint}", options.join(", ")));
                None
            }
            v => {
                self.err(&n.loc, format!("{what} must be one of {}, found {}", options.join(", "), v.kind()));
                None
            }
        }
    }

    /// A positive size, refused when absurd (before anything is allocated from it).
    fn size(&mut self, n: &YNode, what: &str) -> Option<usize> {
        match &n.value {
            YValue::Int(i) if *i >= 1 && (*i as u64) <= MAX_DIM as u64 => Some(*i as usize),
            YValue::Int(i) if *i < 1 => {
                self.err(&n.loc, format!("{what} must be a positive integer, found {i}"));
                None
            }
            YValue::Int(i) => {
                self.err(&n.loc, format!("{what} is absurdly large: {i} (the limit is {MAX_DIM})"));
                None
            }
            YValue::Float(x) => {
                let msg = if x.fract() == 0.0 && *x > MAX_DIM as f64 {
                    format!("{what} is absurdly large: {x} (the limit is {MAX_DIM})")
                } else {
                    format!("{what} must be a positive integer, found the number {x}")
                };
                self.err(&n.loc, msg);
                None
            }
            v => {
                self.err(&n.loc, format!("{what} must be a positive integer, found {}", v.kind()));
                None
            }
        }
    }

    fn nonneg(&mut self, n: &YNode, what: &str) -> Option<usize> {
        match &n.value {
            YValue::Int(0) => Some(0),
            _ => self.size(n, what),
        }
    }

    /// An integer or a `[h, w]` pair.
    fn pair(&mut self, n: &YNode, what: &str) -> Option<[usize; 2]> {
        match &n.value {
            YValue::Seq(s) if s.len() == 2 => {
                let a = self.size(&s[0], what);
                let b = self.size(&s[1], what);
                Some([a?, b?])
            }
            YValue::Seq(s) => {
                self.err(
                    &n.loc,
                    format!("{what} must be an integer or a list [height, width], found a list of {}", s.len()),
                );
                None
            }
            _ => self.size(n, what).map(|x| [x, x]),
        }
    }

    fn boolean(&mut self, n: &YNode, what: &str) -> Option<bool> {
        match &n.value {
            YValue::Bool(b) => Some(*b),
            v => {
                self.err(&n.loc, format!("{what} must be true or false, found {}", v.kind()));
                None
            }
        }
    }

    fn input(&mut self, doc: &YNode, over: Option<&[usize]>) -> Option<InputSpec> {
        let Some(n) = doc.get("input") else {
            self.err(&doc.loc, "missing field `input` (the input shape [height, width, channels])");
            return None;
        };
        let (shape_node, name) = match &n.value {
            YValue::Map(m) => {
                for (k, _) in m {
                    if !matches!(k.as_str(), Some("shape" | "name")) {
                        self.unknown_field(k, "`input`", &["shape", "name"]);
                    }
                }
                let name = match n.get("name") {
                    Some(x) => self.string(x, "the input's `name`")?,
                    None => "input".into(),
                };
                match n.get("shape") {
                    Some(s) => (s, name),
                    None => {
                        self.err(&n.loc, "missing field `shape` in `input` (expected [height, width, channels])");
                        return None;
                    }
                }
            }
            _ => (n, "input".to_string()),
        };
        let shape = match shape_node.as_seq() {
            Some(s) if s.len() == 3 => {
                let dims: Vec<Option<usize>> = s.iter().map(|d| self.size(d, "an input dimension")).collect();
                dims.into_iter().collect::<Option<Vec<_>>>()?
            }
            Some(s) => {
                self.err(
                    &shape_node.loc,
                    format!("the input shape must be [height, width, channels] (NHWC without the batch), found {} dimension(s)", s.len()),
                );
                return None;
            }
            None => {
                self.err(
                    &shape_node.loc,
                    format!(
                        "the input shape must be a list [height, width, channels], found {}",
                        shape_node.value.kind()
                    ),
                );
                return None;
            }
        };
        let shape = over.map(|o| o.to_vec()).unwrap_or(shape);
        Some(InputSpec { name, shape, loc: shape_node.loc.clone() })
    }

    fn collect_blocks(&mut self, b: &'a YNode) {
        let Some(m) = b.as_map() else {
            self.err(&b.loc, format!("`blocks` must be a mapping of block names to blocks, found {}", b.value.kind()));
            return;
        };
        for (k, v) in m {
            let Some(name) = self.string(k, "a block name") else { continue };
            let Some(fields) = v.as_map() else {
                self.err(
                    &v.loc,
                    format!("block `{name}` must be a mapping with `params` and `nodes`, found {}", v.value.kind()),
                );
                continue;
            };
            for (fk, _) in fields {
                if !BLOCK_KEYS.contains(&fk.as_str().unwrap_or("")) {
                    self.unknown_field(fk, &format!("block `{name}`"), BLOCK_KEYS);
                }
            }
            let mut params = vec![];
            match v.get("params") {
                None => {}
                Some(p) => match &p.value {
                    YValue::Seq(s) => {
                        for x in s {
                            if let Some(pn) = self.string(x, "a parameter name") {
                                params.push((pn, None));
                            }
                        }
                    }
                    YValue::Map(m) => {
                        for (pk, pv) in m {
                            if let Some(pn) = self.string(pk, "a parameter name") {
                                params.push((pn, to_value(pv)));
                            }
                        }
                    }
                    other => self.err(
                        &p.loc,
                        format!(
                            "`params` must be a list of names or a mapping of names to defaults, found {}",
                            other.kind()
                        ),
                    ),
                },
            }
            let nodes = match v.get("nodes") {
                Some(n) => match n.as_seq() {
                    Some(s) if !s.is_empty() => s,
                    _ => {
                        self.err(&n.loc, format!("block `{name}` needs a non-empty list of `nodes`"));
                        continue;
                    }
                },
                None => {
                    self.err(&v.loc, format!("block `{name}` has no `nodes`"));
                    continue;
                }
            };
            self.blocks.insert(name, Block { loc: k.loc.clone(), params, nodes });
        }
    }

    /// Substitutes template parameters everywhere in a node.
    fn substitute(&mut self, n: &YNode, env: &Env) -> YNode {
        let value = match &n.value {
            YValue::Str(s) if expr::is_template(s) => match expr::expand(s, env) {
                Ok(v) => to_yvalue(v, &n.loc),
                Err(e) => {
                    self.err(&n.loc, e);
                    YValue::Null
                }
            },
            YValue::Seq(s) => YValue::Seq(s.iter().map(|x| self.substitute(x, env)).collect()),
            YValue::Map(m) => YValue::Map(m.iter().map(|(k, v)| (k.clone(), self.substitute(v, env))).collect()),
            other => other.clone(),
        };
        YNode { loc: n.loc.clone(), value }
    }

    /// Expands a list of entries chained one after the other; returns the name of the last node.
    fn sequence(&mut self, entries: &[YNode], env: &Env, mut prev: Option<String>) -> Option<String> {
        for e in entries {
            if e.as_map().is_none() {
                self.err(
                    &e.loc,
                    format!("expected a node (a mapping with `op`) or a block use (`use:`), found {}", e.value.kind()),
                );
                continue;
            }
            prev = if e.get("use").is_some() { self.use_block(e, env, prev) } else { self.node(e, env, prev) };
        }
        prev
    }

    fn use_block(&mut self, e: &YNode, env: &Env, prev: Option<String>) -> Option<String> {
        let e = self.substitute(e, env);
        for (k, _) in e.as_map().unwrap_or(&[]) {
            if !USE_KEYS.contains(&k.as_str().unwrap_or("")) {
                self.unknown_field(k, "a block use", USE_KEYS);
            }
        }
        let use_node = e.get("use")?;
        let bname = self.string(use_node, "`use`")?;
        let Some(block) = self.blocks.get(&bname) else {
            let hint = did_you_mean(&bname, self.blocks.keys().map(|s| s.as_str()))
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            let mut known: Vec<&str> = self.blocks.keys().map(|s| s.as_str()).collect();
            known.sort();
            let list = if known.is_empty() {
                "none are defined".to_string()
            } else {
                format!("defined: {}", known.join(", "))
            };
            self.err(&use_node.loc, format!("unknown block `{bname}`{hint}; {list}"));
            return prev;
        };
        let (bparams, bnodes, bloc) = (block.params.clone(), block.nodes, block.loc.clone());
        if self.stack.contains(&bname) {
            self.err(
                &use_node.loc,
                format!("block `{bname}` uses itself (through {}): blocks cannot be recursive", self.stack.join(" → ")),
            );
            return prev;
        }
        // Arguments.
        let mut args: Env = Env::new();
        if let Some(w) = e.get("with") {
            match w.as_map() {
                Some(m) => {
                    for (k, v) in m {
                        let Some(key) = self.string(k, "a parameter name") else { continue };
                        if !bparams.iter().any(|(p, _)| *p == key) {
                            let names: Vec<&str> = bparams.iter().map(|(p, _)| p.as_str()).collect();
                            let hint = did_you_mean(&key, names.iter().copied())
                                .map(|s| format!(" (did you mean `{s}`?)"))
                                .unwrap_or_default();
                            self.err(
                                &k.loc,
                                format!(
                                    "block `{bname}` has no parameter `{key}`{hint}; its parameters are: {}",
                                    names.join(", ")
                                ),
                            );
                            continue;
                        }
                        match to_value(v) {
                            Some(val) => {
                                args.insert(key, val);
                            }
                            None => self.err(
                                &v.loc,
                                format!("parameter `{key}` must be a number, string or list, found {}", v.value.kind()),
                            ),
                        }
                    }
                }
                None => self.err(
                    &w.loc,
                    format!("`with` must be a mapping of parameter names to values, found {}", w.value.kind()),
                ),
            }
        }
        // Iterations: `for: {param: [values] | "a..c" | "2..5"}` or `repeat: N`.
        let mut iters: Vec<Option<(String, Value)>> = vec![None];
        if let Some(f) = e.get("for") {
            match f.as_map() {
                Some([(k, v)]) => {
                    if let Some(key) = self.string(k, "a parameter name") {
                        if !bparams.iter().any(|(p, _)| *p == key) {
                            self.err(&k.loc, format!("block `{bname}` has no parameter `{key}` to iterate over"));
                        } else if let Some(vals) = self.range(v) {
                            iters = vals.into_iter().map(|x| Some((key.clone(), x))).collect();
                        }
                    }
                }
                _ => self.err(&f.loc, "`for` must be a mapping of one parameter to its values, e.g. `for: {block: [b, c]}` or `for: {block: b..c}`"),
            }
        } else if let Some(r) = e.get("repeat") {
            if let Some(n) = self.size(r, "`repeat`") {
                if n > 10_000 {
                    self.err(&r.loc, format!("`repeat` is absurdly large: {n}"));
                } else {
                    iters = vec![None; n];
                }
            }
        }
        let mut missing = vec![];
        for (p, def) in &bparams {
            let iterated = iters.first().and_then(|i| i.as_ref()).is_some_and(|(k, _)| k == p);
            if !args.contains_key(p) && def.is_none() && !iterated && p != "input" {
                missing.push(p.as_str());
            }
        }
        if !missing.is_empty() {
            self.err(
                &use_node.loc,
                format!(
                    "block `{bname}` is missing parameter(s) {} (defined at {bloc})",
                    missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")
                ),
            );
            return prev;
        }
        self.stack.push(bname.clone());
        let mut prev = prev;
        for it in iters {
            let mut local = Env::new();
            for (p, def) in &bparams {
                if let Some(d) = def {
                    local.insert(p.clone(), d.clone());
                }
            }
            local.extend(args.clone());
            let mut desc = String::new();
            if let Some((k, v)) = it {
                desc = format!(" with {k}={v}");
                local.insert(k, v);
            }
            if let Some(p) = &prev {
                local.insert("input".into(), Value::Str(p.clone()));
            }
            self.context.push(format!("in block `{bname}` used at {}{desc}", use_node.loc));
            prev = self.sequence(bnodes, &local, prev);
            self.context.pop();
        }
        self.stack.pop();
        prev
    }

    /// Values of a `for`: a list, or an inclusive range `"2..5"` / `"b..f"`.
    fn range(&mut self, v: &YNode) -> Option<Vec<Value>> {
        match &v.value {
            YValue::Seq(s) => s.iter().map(to_value).collect(),
            YValue::Str(s) => {
                let bad = |me: &mut Self| {
                    me.err(&v.loc, format!("`{s}` is not a range: write `2..5` or `b..f` (inclusive), or a list"));
                    None
                };
                let Some((a, b)) = s.split_once("..") else { return bad(self) };
                if let (Ok(a), Ok(b)) = (a.trim().parse::<i64>(), b.trim().parse::<i64>()) {
                    if b < a || b - a > 10_000 {
                        return bad(self);
                    }
                    return Some((a..=b).map(Value::Int).collect());
                }
                let (a, b): (Vec<char>, Vec<char>) = (a.trim().chars().collect(), b.trim().chars().collect());
                match (a.as_slice(), b.as_slice()) {
                    ([a], [b]) if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() && a <= b => {
                        Some((*a..=*b).map(|c| Value::Str(c.to_string())).collect())
                    }
                    _ => bad(self),
                }
            }
            other => {
                self.err(&v.loc, format!("`for` values must be a list or a range like `b..f`, found {}", other.kind()));
                None
            }
        }
    }

    fn node(&mut self, raw: &YNode, env: &Env, prev: Option<String>) -> Option<String> {
        let n = self.substitute(raw, env);
        let Some(op_node) = n.get("op") else {
            self.err(&n.loc, "this node has no `op` (or `use` for a block)");
            return prev;
        };
        let Some(op_name) = self.string(op_node, "`op`") else { return prev };
        let Some((op_name, op_fields)) = OPS.iter().find(|(o, _)| *o == op_name).copied() else {
            let hint = KERAS_NAMES
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(&op_name))
                .map(|(_, o)| *o)
                .or_else(|| did_you_mean(&op_name, OPS.iter().map(|(o, _)| *o)))
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            let all: Vec<&str> = OPS.iter().map(|(o, _)| *o).collect();
            self.err(&op_node.loc, format!("unknown op `{op_name}`{hint}; ops: {}", all.join(", ")));
            return prev;
        };
        if op_name == "input" {
            self.err(&op_node.loc, "`input` is not a layer: the model input is the top-level `input` field");
            return prev;
        }
        let allowed: Vec<&str> = COMMON_KEYS.iter().chain(op_fields.iter()).copied().collect();
        for (k, _) in n.as_map().unwrap_or(&[]) {
            if !allowed.contains(&k.as_str().unwrap_or("")) {
                self.unknown_field(k, &format!("a `{op_name}` node"), &allowed);
            }
        }
        let errors_before = self.diags.errors().count();
        let op = self.op(op_name, &n);
        // Inputs: `inputs` (a name or a list), else the previous node; `add` may name a `shortcut`.
        let mut inputs: Vec<Ref> = vec![];
        match n.get("inputs") {
            Some(i) => {
                let items: Vec<&YNode> = match &i.value {
                    YValue::Seq(s) => s.iter().collect(),
                    _ => vec![i],
                };
                if items.is_empty() {
                    self.err(&i.loc, "`inputs` is empty");
                }
                for it in items {
                    if let Some(name) = self.string(it, "an input name") {
                        let shortcut = op_name == "add" && prev.as_deref() != Some(name.as_str());
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
            if let Some(name) = self.string(s, "`shortcut`") {
                inputs.push(Ref { name, loc: s.loc.clone(), shortcut: true });
            }
        }
        let projection = n.get("projection").and_then(|p| self.string(p, "`projection`"));
        let name = match n.get("name") {
            Some(x) => self.string(x, "`name`")?,
            None => {
                let base = format!("{}_{}", inputs.first().map(|r| r.name.as_str()).unwrap_or("node"), op_name);
                let mut cand = base.clone();
                let mut k = 2;
                while self.names.contains_key(&cand) {
                    cand = format!("{base}_{k}");
                    k += 1;
                }
                cand
            }
        };
        if let Some(first) = self.names.get(&name) {
            let at = n.get("name").map(|x| x.loc.clone()).unwrap_or(n.loc.clone());
            let msg = format!("duplicate node name `{name}`: already defined at {first}");
            self.err(&at, msg);
            return Some(name);
        }
        // Keep the name known even when the node had errors, so references to it do not cascade.
        self.names.insert(name.clone(), n.loc.clone());
        let op = op.filter(|_| self.diags.errors().count() == errors_before);
        let Some(op) = op else {
            self.broken.insert(name.clone());
            return Some(name);
        };
        self.nodes.push(NodeSpec {
            name: name.clone(),
            op,
            inputs,
            loc: n.loc.clone(),
            projection,
            context: self.context.clone(),
        });
        Some(name)
    }

    /// Builds the typed op from a node's fields.
    fn op(&mut self, op: &str, n: &YNode) -> Option<Op> {
        let before = self.diags.errors().count();
        let req = |me: &mut Self, key: &str, what: &str| -> Option<YNode> {
            let v = n.get(key).cloned();
            if v.is_none() {
                me.err(&n.loc, format!("`{op}` node is missing the field `{key}` ({what})"));
            }
            v
        };
        let padding = |me: &mut Self| -> Option<Padding> {
            match n.get("padding") {
                None => Some(Padding::Valid),
                Some(p) => match me.choice(p, "`padding`", &["valid", "same"])? {
                    "same" => Some(Padding::Same),
                    _ => Some(Padding::Valid),
                },
            }
        };
        let result = match op {
            "zero_padding" => {
                let p = req(self, "padding", "an integer, [height, width] or [[top, bottom], [left, right]]")?;
                let pads = match &p.value {
                    YValue::Seq(s) if s.len() == 2 && s.iter().all(|x| x.as_seq().is_some_and(|y| y.len() == 2)) => {
                        let hb = s[0].as_seq().unwrap_or(&[]);
                        let lr = s[1].as_seq().unwrap_or(&[]);
                        let v: Vec<Option<usize>> =
                            [&hb[0], &hb[1], &lr[0], &lr[1]].iter().map(|x| self.nonneg(x, "a padding")).collect();
                        let v: Vec<usize> = v.into_iter().collect::<Option<_>>()?;
                        Pads { top: v[0], bottom: v[1], left: v[2], right: v[3] }
                    }
                    YValue::Seq(s) if s.len() == 2 => {
                        let h = self.nonneg(&s[0], "a padding");
                        let w = self.nonneg(&s[1], "a padding");
                        let (h, w) = (h?, w?);
                        Pads { top: h, bottom: h, left: w, right: w }
                    }
                    _ => {
                        let x = self.nonneg(&p, "`padding`")?;
                        Pads { top: x, bottom: x, left: x, right: x }
                    }
                };
                Some(Op::ZeroPad(pads))
            }
            "conv" => {
                let f = req(self, "filters", "the number of output channels").and_then(|x| self.size(&x, "`filters`"));
                let k = req(self, "kernel", "an integer or [height, width]").and_then(|x| self.pair(&x, "`kernel`"));
                let s = n.get("strides").map(|x| self.pair(x, "`strides`")).unwrap_or(Some([1, 1]));
                let p = padding(self);
                let b = n.get("bias").map(|x| self.boolean(x, "`bias`")).unwrap_or(Some(true));
                Some(Op::Conv(Conv::new(f?, k?, s?, p?, b?)))
            }
            "batch_norm" => {
                let eps = match n.get("epsilon") {
                    None => Some(1e-3),
                    Some(e) => match e.value {
                        YValue::Float(x) if x > 0.0 && x < 1.0 => Some(x as f32),
                        YValue::Int(_) | YValue::Float(_) => {
                            self.err(
                                &e.loc,
                                format!(
                                    "`epsilon` must be a small positive number (0 < epsilon < 1), found {}",
                                    e.value
                                ),
                            );
                            None
                        }
                        ref v => {
                            self.err(&e.loc, format!("`epsilon` must be a number, found {}", v.kind()));
                            None
                        }
                    },
                };
                Some(Op::BatchNorm { epsilon: eps? })
            }
            "relu" => Some(Op::Relu),
            "softmax" => Some(Op::Softmax),
            "add" => Some(Op::Add),
            "max_pool" | "avg_pool" => {
                let size = req(self, "pool", "the window, an integer or [height, width]")
                    .and_then(|x| self.pair(&x, "`pool`"));
                let strides = n.get("strides").map(|x| self.pair(x, "`strides`"));
                let p = padding(self);
                let size = size?;
                let pool = Pool { size, strides: strides.unwrap_or(Some(size))?, padding: p? };
                Some(if op == "max_pool" { Op::MaxPool(pool) } else { Op::AvgPool(pool) })
            }
            "global_avg_pool" => Some(Op::GlobalAvgPool),
            "global_max_pool" => Some(Op::GlobalMaxPool),
            "flatten" => Some(Op::Flatten),
            "dense" => {
                let u = req(self, "units", "the number of outputs").and_then(|x| self.size(&x, "`units`"));
                let a = match n.get("activation") {
                    None => Some(Activation::Linear),
                    Some(a) => match self.choice(a, "`activation`", &["linear", "relu", "softmax"]) {
                        Some("relu") => Some(Activation::Relu),
                        Some("softmax") => Some(Activation::Softmax),
                        Some(_) => Some(Activation::Linear),
                        None => None,
                    },
                };
                let b = n.get("bias").map(|x| self.boolean(x, "`bias`")).unwrap_or(Some(true));
                Some(Op::Dense { units: u?, activation: a?, bias: b? })
            }
            _ => None,
        };
        if self.diags.errors().count() > before {
            None
        } else {
            result
        }
    }
}
