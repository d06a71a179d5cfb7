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
pub mod io;

use crate::diag::{did_you_mean, Diagnostic, Diagnostics, Loc};
use crate::ops::{fmt_shape, Activation, Conv, Op, Padding, Pads, Pool, MAX_DIM, MAX_TENSOR_ELEMS};
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
    /// In the entry being expanded: values whose template substitution failed (reported), so that the
    /// placeholder left there draws no second error.
    failed: HashSet<Loc>,
    /// Template errors reported so far: a block used many times reports a bad template once.
    template_errors: HashSet<(Loc, String)>,
    /// In the node being checked: fields that an unknown, misspelled key was taken for (so that the
    /// "missing field" error is not added to the "did you mean" one).
    misspelled: HashSet<String>,
}

/// Parses and expands a spec. `input_shape` overrides the spec's input shape (the CLI's `--input-shape`).
/// Returns the spec (possibly with `broken` nodes left out) and every diagnostic found; the spec is
/// `None` only when nothing sensible can follow (no layers, YAML syntax errors). When the input itself
/// is wrong its name is in `broken`, so the graph stage still checks references and cycles.
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
        failed: HashSet::new(),
        template_errors: HashSet::new(),
        misspelled: HashSet::new(),
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
    let Some(layers) = layers else { return (None, ex.diags) };
    let last = ex.sequence(layers, &Env::new(), Some(input.name.clone()));
    let last_loc = layers.last().map(|n| n.loc.clone()).unwrap_or(doc.loc.clone());
    let output = match doc.get("output") {
        Some(n) => ex.string(n, "`output`").map(|s| (s, n.loc.clone())),
        None => last.map(|l| (l, last_loc)),
    };
    let diags = ex.diags;
    match output {
        Some(output) => (
            Some(Spec { file: file.clone(), model, input, nodes: ex.nodes, output, projection, broken: ex.broken, io }),
            diags,
        ),
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
    fn err(&mut self, loc: &Loc, msg: impl Into<String>) {
        if self.failed.contains(loc) {
            // A template here failed to expand and was reported; its placeholder value is not the user's.
            return;
        }
        let mut d = Diagnostic::error(Some(loc.clone()), msg);
        for c in self.context.iter().rev() {
            d = d.note(c.clone());
        }
        self.diags.push(d);
    }

    /// Reports an unknown key; returns the allowed key it is probably a misspelling of.
    fn unknown_field(&mut self, key: &YNode, what: &str, allowed: &[&str]) -> Option<String> {
        let k = key.as_str().map(str::to_string).unwrap_or_else(|| key.value.to_string());
        let guess = did_you_mean(&k, allowed.iter().copied()).map(str::to_string);
        self.err(
            &key.loc,
            format!("unknown field `{k}` in {what}{}; expected one of: {}", hint(guess.as_deref()), allowed.join(", ")),
        );
        guess
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
                self.err(&n.loc, format!("{what} must be a string, found {}", v.describe()));
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
                let h = hint(did_you_mean(s, options.iter().copied()));
                self.err(&n.loc, format!("{what} must be one of {}, found `{s}`{h}", options.join(", ")));
                None
            }
            v => {
                self.err(&n.loc, format!("{what} must be one of {}, found {}", options.join(", "), v.describe()));
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
                self.err(&n.loc, format!("{what} must be a positive integer, found {}", v.describe()));
                None
            }
        }
    }

    fn nonneg(&mut self, n: &YNode, what: &str) -> Option<usize> {
        match &n.value {
            YValue::Int(0) => Some(0),
            YValue::Int(i) if *i < 0 => {
                self.err(&n.loc, format!("{what} must be zero or a positive integer, found {i}"));
                None
            }
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
            YValue::Seq(_) => {
                self.err(
                    &n.loc,
                    format!("{what} must be an integer or a list [height, width], found {}", n.value.describe()),
                );
                None
            }
            YValue::Int(_) | YValue::Float(_) => self.size(n, what).map(|x| [x, x]),
            v => {
                self.err(
                    &n.loc,
                    format!("{what} must be an integer or a list [height, width], found {}", v.describe()),
                );
                None
            }
        }
    }

    fn boolean(&mut self, n: &YNode, what: &str) -> Option<bool> {
        match &n.value {
            YValue::Bool(b) => Some(*b),
            v => {
                self.err(&n.loc, format!("{what} must be true or false, found {}", v.describe()));
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
                let mut misspelled_shape = false;
                for (k, _) in m {
                    if !matches!(k.as_str(), Some("shape" | "name")) {
                        let guess = self.unknown_field(k, "`input`", &["shape", "name"]);
                        misspelled_shape |= guess.as_deref() == Some("shape");
                    }
                }
                let name = match n.get("name") {
                    Some(x) => self.string(x, "the input's `name`")?,
                    None => "input".into(),
                };
                match n.get("shape") {
                    Some(s) => (s, name),
                    None => {
                        if !misspelled_shape {
                            self.err(&n.loc, "missing field `shape` in `input` (expected [height, width, channels])");
                        }
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
                    format!(
                        "the input shape must be [height, width, channels] (NHWC without the batch), found {} \
                         dimension(s): {}",
                        s.len(),
                        shape_node.value
                    ),
                );
                return None;
            }
            None => {
                self.err(
                    &shape_node.loc,
                    format!(
                        "the input shape must be a list [height, width, channels], found {}",
                        shape_node.value.describe()
                    ),
                );
                return None;
            }
        };
        let overridden = over.is_some();
        let shape = over.map(|o| o.to_vec()).unwrap_or(shape);
        // Refuse a tensor too large to hold before anything is allocated for it.
        let elems = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if elems.is_none_or(|e| e > MAX_TENSOR_ELEMS) {
            self.err(
                &shape_node.loc,
                format!(
                    "the input shape {}{} has {} elements per batch item, more than the limit of {MAX_TENSOR_ELEMS}",
                    fmt_shape(&shape),
                    if overridden { " (from the input shape override)" } else { "" },
                    shape.iter().map(|&d| d as u128).product::<u128>()
                ),
            );
            return None;
        }
        Some(InputSpec { name, shape, loc: shape_node.loc.clone() })
    }

    fn collect_blocks(&mut self, b: &'a YNode) {
        let Some(m) = b.as_map() else {
            self.err(
                &b.loc,
                format!("`blocks` must be a mapping of block names to blocks, found {}", b.value.describe()),
            );
            return;
        };
        for (k, v) in m {
            let Some(name) = self.string(k, "a block name") else { continue };
            let Some(fields) = v.as_map() else {
                self.err(
                    &v.loc,
                    format!("block `{name}` must be a mapping with `params` and `nodes`, found {}", v.value.describe()),
                );
                continue;
            };
            for (fk, _) in fields {
                if !BLOCK_KEYS.contains(&fk.as_str().unwrap_or("")) {
                    self.unknown_field(fk, &format!("block `{name}`"), BLOCK_KEYS);
                }
            }
            let mut params: Vec<(String, Option<Value>)> = vec![];
            let mut declare = |me: &mut Self, pk: &YNode, default: Option<Value>| {
                let Some(pn) = me.string(pk, "a parameter name") else { return };
                if params.iter().any(|(p, _)| *p == pn) {
                    me.err(&pk.loc, format!("block `{name}` declares the parameter `{pn}` twice"));
                } else {
                    params.push((pn, default));
                }
            };
            match v.get("params") {
                None => {}
                Some(p) => match &p.value {
                    YValue::Seq(s) => {
                        for x in s {
                            declare(self, x, None);
                        }
                    }
                    YValue::Map(m) => {
                        for (pk, pv) in m {
                            // `~` (null) marks a required parameter; anything else is its default.
                            let default = match &pv.value {
                                YValue::Null => None,
                                _ => match to_value(pv) {
                                    Some(d) => Some(d),
                                    None => {
                                        self.err(
                                            &pv.loc,
                                            format!(
                                                "the default of parameter `{}` must be a number, string or list (or \
                                                 `~` for a required parameter), found {}",
                                                pk.as_str().map(str::to_string).unwrap_or_else(|| pk.value.to_string()),
                                                pv.value.describe()
                                            ),
                                        );
                                        continue;
                                    }
                                },
                            };
                            declare(self, pk, default);
                        }
                    }
                    YValue::Null => {}
                    other => self.err(
                        &p.loc,
                        format!(
                            "`params` must be a list of names or a mapping of names to defaults, found {}",
                            other.describe()
                        ),
                    ),
                },
            }
            let nodes = match v.get("nodes") {
                Some(n) => match n.as_seq() {
                    Some(s) if !s.is_empty() => s,
                    _ => {
                        self.err(
                            &n.loc,
                            format!("block `{name}` needs a non-empty list of `nodes`, found {}", n.value.describe()),
                        );
                        continue;
                    }
                },
                None => {
                    self.err(&v.loc, format!("block `{name}` has no `nodes` (the list of its nodes)"));
                    continue;
                }
            };
            self.blocks.insert(name, Block { loc: k.loc.clone(), params, nodes });
        }
    }

    /// Substitutes template parameters everywhere in a node. A template that fails is reported, and
    /// its value's location remembered so that the placeholder left there draws no second error.
    fn substitute(&mut self, n: &YNode, env: &Env) -> YNode {
        let value = match &n.value {
            YValue::Str(s) if expr::is_template(s) => match expr::expand(s, env) {
                Ok(v) => to_yvalue(v, &n.loc),
                Err(e) => {
                    if self.template_errors.insert((n.loc.clone(), e.clone())) {
                        self.err(&n.loc, e);
                    }
                    self.failed.insert(n.loc.clone());
                    YValue::Null
                }
            },
            YValue::Seq(s) => YValue::Seq(s.iter().map(|x| self.substitute(x, env)).collect()),
            YValue::Map(m) => YValue::Map(m.iter().map(|(k, v)| (k.clone(), self.substitute(v, env))).collect()),
            other => other.clone(),
        };
        YNode { loc: n.loc.clone(), value }
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

    fn use_block(&mut self, e: &YNode, env: &Env, prev: Option<String>) -> Option<String> {
        self.failed.clear();
        let e = self.substitute(e, env);
        if !self.failed.is_empty() {
            // A template in the use itself failed (reported): expanding with a hole would mislead.
            return self.placeholder("block use", &e.loc);
        }
        let failed = |me: &mut Self| me.placeholder("block use", &e.loc);
        for (k, _) in e.as_map().unwrap_or(&[]) {
            if !USE_KEYS.contains(&k.as_str().unwrap_or("")) {
                self.unknown_field(k, "a block use", USE_KEYS);
            }
        }
        let Some(use_node) = e.get("use") else { return failed(self) };
        let Some(bname) = self.string(use_node, "`use`") else { return failed(self) };
        let Some(block) = self.blocks.get(&bname) else {
            let h = hint(did_you_mean(&bname, self.blocks.keys().map(|s| s.as_str())));
            let mut known: Vec<&str> = self.blocks.keys().map(|s| s.as_str()).collect();
            known.sort();
            let list = if known.is_empty() {
                "no blocks are defined (under the top-level `blocks`)".to_string()
            } else {
                format!("defined: {}", known.join(", "))
            };
            let h = if h.is_empty() && OPS.iter().any(|(o, _)| *o == bname) {
                format!(" (`{bname}` is an op: write `op: {bname}`)")
            } else {
                h
            };
            self.err(&use_node.loc, format!("unknown block `{bname}`{h}; {list}"));
            return failed(self);
        };
        let (bparams, bnodes, bloc) = (block.params.clone(), block.nodes, block.loc.clone());
        if self.stack.contains(&bname) {
            let from = self.stack.iter().position(|b| *b == bname).unwrap_or(0);
            let chain: Vec<&str> = self.stack[from..].iter().map(|s| s.as_str()).chain([bname.as_str()]).collect();
            self.err(
                &use_node.loc,
                format!("block `{bname}` uses itself ({}): blocks cannot be recursive", chain.join(" → ")),
            );
            return failed(self);
        }
        let names: Vec<&str> = bparams.iter().map(|(p, _)| p.as_str()).collect();
        let param_list = if names.is_empty() { "it has none".to_string() } else { names.join(", ") };
        // Arguments. `input` (the implicit parameter) may be given to start the block elsewhere.
        let mut args: Env = Env::new();
        let mut block_input: Option<String> = None;
        if let Some(w) = e.get("with") {
            match w.as_map() {
                Some(m) => {
                    for (k, v) in m {
                        let Some(key) = self.string(k, "a parameter name") else { continue };
                        if key == "input" && !names.contains(&"input") {
                            block_input = self.string(v, "the block's `input`");
                            continue;
                        }
                        if !names.contains(&key.as_str()) {
                            let h = hint(did_you_mean(&key, names.iter().copied()));
                            self.err(
                                &k.loc,
                                format!("block `{bname}` has no parameter `{key}`{h}; its parameters: {param_list}"),
                            );
                            continue;
                        }
                        match to_value(v) {
                            Some(val) => {
                                args.insert(key, val);
                            }
                            None => self.err(
                                &v.loc,
                                format!(
                                    "parameter `{key}` must be a number, string or list, found {}",
                                    v.value.describe()
                                ),
                            ),
                        }
                    }
                }
                None => self.err(
                    &w.loc,
                    format!("`with` must be a mapping of parameter names to values, found {}", w.value.describe()),
                ),
            }
        }
        // Iterations: `for: {param: [values] | "a..c" | "2..5"}` or `repeat: N`.
        let mut iters: Vec<Option<(String, Value)>> = vec![None];
        let mut iterated: Option<String> = None;
        match (e.get("for"), e.get("repeat")) {
            (Some(_), Some(r)) => {
                self.err(&r.loc, "a block use takes `for` or `repeat`, not both");
                return failed(self);
            }
            (Some(f), None) => match f.as_map() {
                Some([(k, v)]) => {
                    let Some(key) = self.string(k, "a parameter name") else { return failed(self) };
                    if !names.contains(&key.as_str()) {
                        let h = hint(did_you_mean(&key, names.iter().copied()));
                        self.err(
                            &k.loc,
                            format!(
                                "block `{bname}` has no parameter `{key}` to iterate over{h}; its parameters: \
                                 {param_list}"
                            ),
                        );
                        return failed(self);
                    }
                    match self.range(v) {
                        Some(vals) if vals.is_empty() => {
                            self.err(&v.loc, format!("`for` gives `{key}` no values: the block would be left out"));
                            return failed(self);
                        }
                        Some(vals) => iters = vals.into_iter().map(|x| Some((key.clone(), x))).collect(),
                        None => return failed(self),
                    }
                    iterated = Some(key);
                }
                _ => {
                    self.err(
                        &f.loc,
                        format!(
                            "`for` must be a mapping of one parameter to its values, e.g. `for: {{block: [b, c]}}` or \
                             `for: {{block: b..c}}`; found {}",
                            f.value.describe()
                        ),
                    );
                    return failed(self);
                }
            },
            (None, Some(r)) => match self.size(r, "`repeat`") {
                Some(n) if n > 10_000 => {
                    self.err(&r.loc, format!("`repeat` is absurdly large: {n} (the limit is 10000)"));
                    return failed(self);
                }
                Some(n) => iters = vec![None; n],
                None => return failed(self),
            },
            (None, None) => {}
        }
        let mut missing = vec![];
        for (p, def) in &bparams {
            if !args.contains_key(p) && def.is_none() && iterated.as_ref() != Some(p) && p != "input" {
                missing.push(format!("`{p}`"));
            }
        }
        if !missing.is_empty() {
            self.err(
                &use_node.loc,
                format!(
                    "block `{bname}` is missing parameter(s) {} (give them in `with:`; the block is defined at {bloc})",
                    missing.join(", ")
                ),
            );
            return failed(self);
        }
        self.stack.push(bname.clone());
        let mut prev = block_input.or(prev);
        let total = iters.len();
        for (idx, it) in iters.into_iter().enumerate() {
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
            } else if total > 1 {
                desc = format!(" (repetition {} of {total})", idx + 1);
            }
            if let Some(p) = &prev {
                if !args.contains_key("input") {
                    local.insert("input".into(), Value::Str(p.clone()));
                }
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
            YValue::Seq(s) => {
                let mut out = vec![];
                for x in s {
                    match to_value(x) {
                        Some(val) => out.push(val),
                        None => {
                            self.err(
                                &x.loc,
                                format!("`for` values must be numbers, strings or lists, found {}", x.value.describe()),
                            );
                            return None;
                        }
                    }
                }
                Some(out)
            }
            YValue::Str(s) => {
                let bad = |me: &mut Self, why: &str| {
                    me.err(
                        &v.loc,
                        format!(
                            "`{s}` is not a range{why}: write `2..5` or `b..f` (inclusive, first <= last), or a list"
                        ),
                    );
                    None
                };
                let Some((a, b)) = s.split_once("..") else { return bad(self, "") };
                if let (Ok(a), Ok(b)) = (a.trim().parse::<i64>(), b.trim().parse::<i64>()) {
                    if b < a {
                        return bad(self, &format!(" ({b} is before {a})"));
                    }
                    if b - a >= 10_000 {
                        return bad(self, " (more than 10000 values)");
                    }
                    return Some((a..=b).map(Value::Int).collect());
                }
                let (a, b): (Vec<char>, Vec<char>) = (a.trim().chars().collect(), b.trim().chars().collect());
                match (a.as_slice(), b.as_slice()) {
                    ([a], [b]) if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() && a > b => {
                        bad(self, &format!(" (`{b}` is before `{a}`)"))
                    }
                    ([a], [b])
                        if a.is_ascii_alphabetic()
                            && b.is_ascii_alphabetic()
                            && a.is_ascii_lowercase() == b.is_ascii_lowercase() =>
                    {
                        Some((*a..=*b).map(|c| Value::Str(c.to_string())).collect())
                    }
                    _ => bad(self, ""),
                }
            }
            other => {
                self.err(
                    &v.loc,
                    format!("`for` values must be a list or a range like `b..f`, found {}", other.describe()),
                );
                None
            }
        }
    }

    fn node(&mut self, raw: &YNode, env: &Env, prev: Option<String>) -> Option<String> {
        let start = self.diags.0.len();
        let (name, label) = self.node_inner(raw, env, prev);
        // Every message about this node names it.
        if let Some(l) = label {
            let tag = format!("`{l}`");
            for d in &mut self.diags.0[start..] {
                if !d.message.starts_with("node `") && !d.message.contains(&tag) {
                    d.message = format!("node {tag}: {}", d.message);
                }
            }
        }
        name
    }

    /// Checks one node; returns its name (for chaining) and the name to put in messages about it.
    fn node_inner(&mut self, raw: &YNode, env: &Env, prev: Option<String>) -> (Option<String>, Option<String>) {
        let errors_before = self.diags.errors().count();
        self.misspelled.clear();
        self.failed.clear();
        let n = self.substitute(raw, env);
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
                    if let Some(name) = self.string(it, "an input name") {
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
            if let Some(name) = self.string(s, "`shortcut`") {
                inputs.push(Ref { name, loc: s.loc.clone(), shortcut: true });
            }
        }
        let projection = n.get("projection").and_then(|p| self.string(p, "`projection`"));
        let explicit = n.get("name").is_some();
        let name = match n.get("name") {
            Some(x) => match self.string(x, "`name`") {
                Some(s) => s,
                None => return (self.placeholder("node", &n.loc), None),
            },
            None => {
                let kind = if op_text.is_empty() { "node" } else { op_text.as_str() };
                let base = format!("{}_{kind}", inputs.first().map(|r| r.name.as_str()).unwrap_or("node"));
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
            return (Some(name.clone()), Some(name));
        }
        // Keep the name known even when the node has errors, so references to it do not cascade.
        self.names.insert(name.clone(), n.loc.clone());
        // Messages name the node; a derived name only when it means something (a known op, after a
        // real node), since the user never wrote it.
        let known_op = OPS.iter().any(|(o, _)| *o == op_text);
        let label = (explicit || (known_op && !name.starts_with('<'))).then(|| name.clone());
        let op = self.node_op(&n);
        match op {
            Some(op) if templates_ok && self.diags.errors().count() == errors_before => {
                self.nodes.push(NodeSpec {
                    name: name.clone(),
                    op,
                    inputs,
                    loc: n.loc.clone(),
                    projection,
                    context: self.context.clone(),
                });
            }
            _ => {
                self.broken.insert(name.clone());
            }
        }
        (Some(name), label)
    }

    /// The node's op, from its `op` and fields (every problem reported).
    fn node_op(&mut self, n: &YNode) -> Option<Op> {
        let Some(op_node) = n.get("op") else {
            // A misspelled `op`, or the op written under another key (`type: conv`).
            let mut h = String::new();
            for (k, v) in n.as_map().unwrap_or(&[]) {
                let key = k.as_str().unwrap_or("");
                if COMMON_KEYS.contains(&key) {
                    continue;
                }
                if let Some(s) = did_you_mean(key, ["op", "use"]) {
                    h = format!(" (did you mean `{s}` instead of `{key}`?)");
                    break;
                }
                if let Some(val) = v.as_str() {
                    if OPS.iter().any(|(o, _)| *o == val) || KERAS_NAMES.iter().any(|(kn, _)| *kn == val) {
                        h = format!(" (did you mean `op: {val}` instead of `{key}: {val}`?)");
                        break;
                    }
                }
            }
            self.err(&n.loc, format!("this node has no `op` (or `use` for a block){h}"));
            return None;
        };
        let op_name = self.string(op_node, "`op`")?;
        let Some((op_name, op_fields)) = OPS.iter().find(|(o, _)| *o == op_name).copied() else {
            let h = hint(
                KERAS_NAMES
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(&op_name))
                    .map(|(_, o)| *o)
                    .or_else(|| did_you_mean(&op_name, OPS.iter().map(|(o, _)| *o))),
            );
            let all: Vec<&str> = OPS.iter().map(|(o, _)| *o).collect();
            let msg = if op_name == "input" {
                "`input` is not a layer: the model input is the top-level `input` field".to_string()
            } else {
                format!("unknown op `{op_name}`{h}; ops: {}", all.join(", "))
            };
            self.err(&op_node.loc, msg);
            return None;
        };
        let allowed: Vec<&str> = COMMON_KEYS.iter().chain(op_fields.iter()).copied().collect();
        for (k, _) in n.as_map().unwrap_or(&[]) {
            if !allowed.contains(&k.as_str().unwrap_or("")) {
                let all: Vec<&str> = OPS.iter().flat_map(|(_, f)| f.iter().copied()).collect();
                let guess = self.unknown_field(k, &format!("a `{op_name}` node"), &allowed);
                if let Some(g) = guess {
                    self.misspelled.insert(g);
                } else if let Some(key) = k.as_str().filter(|key| all.contains(key)) {
                    // A field of another op: say which op it belongs to.
                    let owners: Vec<&str> = OPS.iter().filter(|(_, f)| f.contains(&key)).map(|(o, _)| *o).collect();
                    if let Some(d) = self.diags.0.last_mut() {
                        d.notes.push(format!("`{key}` is a field of {}", owners.join(", ")));
                    }
                }
            }
        }
        self.op(op_name, n)
    }

    /// Builds the typed op from a node's fields.
    fn op(&mut self, op: &str, n: &YNode) -> Option<Op> {
        let before = self.diags.errors().count();
        let req = |me: &mut Self, key: &str, what: &str| -> Option<YNode> {
            let v = n.get(key).cloned();
            // A misspelled key was reported with a "did you mean" already.
            if v.is_none() && !me.misspelled.contains(key) {
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
                    YValue::Int(_) | YValue::Float(_) => {
                        let x = self.nonneg(&p, "`padding`")?;
                        Pads { top: x, bottom: x, left: x, right: x }
                    }
                    v => {
                        self.err(
                            &p.loc,
                            format!(
                                "`padding` must be an integer, [height, width] or [[top, bottom], [left, right]], \
                                 found {}",
                                v.describe()
                            ),
                        );
                        return None;
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
                            self.err(&e.loc, format!("`epsilon` must be a number, found {}", v.describe()));
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
