//! Field checking: a node's substituted YAML mapping → its typed [`Op`], every problem reported with the
//! place of the offending value; also the model input and the small typed readers (sizes, pairs,
//! choices) the ops and block uses share.

use super::{hint, Expander, InputSpec, COMMON_KEYS, KERAS_NAMES, OPS};
use crate::diag::{did_you_mean, shown};
use crate::ops::{fmt_shape, Activation, Conv, Op, Padding, Pads, Pool, MAX_DIM, MAX_TENSOR_ELEMS};
use crate::yaml::{YNode, YValue};

impl Expander<'_> {
    pub(super) fn string(&mut self, n: &YNode, what: &str) -> Option<String> {
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

    pub(super) fn choice(&mut self, n: &YNode, what: &str, options: &[&'static str]) -> Option<&'static str> {
        match &n.value {
            YValue::Str(s) => {
                if let Some(o) = options.iter().find(|o| o.eq_ignore_ascii_case(s)) {
                    return Some(o);
                }
                let h = hint(did_you_mean(s, options.iter().copied()));
                self.err(&n.loc, format!("{what} must be one of {}, found `{}`{h}", options.join(", "), shown(s)));
                None
            }
            v => {
                self.err(&n.loc, format!("{what} must be one of {}, found {}", options.join(", "), v.describe()));
                None
            }
        }
    }

    /// A positive size, refused when absurd (before anything is allocated from it).
    pub(super) fn size(&mut self, n: &YNode, what: &str) -> Option<usize> {
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
                let msg = if x.fract() == 0.0 && x.abs() > MAX_DIM as f64 {
                    format!("{what} is absurdly large: {x} (the limit is {MAX_DIM})")
                } else if x.fract() == 0.0 {
                    // YAML reads `64.0` as a float; sizes are integers.
                    format!("{what} must be an integer, found the float {x:?}: write {x}")
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

    pub(super) fn nonneg(&mut self, n: &YNode, what: &str) -> Option<usize> {
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
    pub(super) fn pair(&mut self, n: &YNode, what: &str) -> Option<[usize; 2]> {
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

    pub(super) fn boolean(&mut self, n: &YNode, what: &str) -> Option<bool> {
        match &n.value {
            YValue::Bool(b) => Some(*b),
            v => {
                self.err(&n.loc, format!("{what} must be true or false, found {}", v.describe()));
                None
            }
        }
    }

    pub(super) fn input(&mut self, doc: &YNode, over: Option<&[usize]>) -> Option<InputSpec> {
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
                    Some(x) => self.name(x, "the input's `name`")?,
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

    /// The node's op, from its `op` and fields (every problem reported).
    pub(super) fn node_op(&mut self, n: &YNode) -> Option<Op> {
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
                format!("unknown op `{}`{h}; ops: {}", shown(&op_name), all.join(", "))
            };
            self.err(&op_node.loc, msg);
            return None;
        };
        let allowed: Vec<&str> = COMMON_KEYS.iter().chain(op_fields.iter()).copied().collect();
        for (k, _) in n.as_map().unwrap_or(&[]) {
            if !allowed.contains(&k.as_str().unwrap_or("")) {
                let all: Vec<&str> = OPS.iter().flat_map(|(_, f)| f.iter().copied()).collect();
                // A field of another op: say which op it belongs to.
                let note = k.as_str().filter(|key| all.contains(key)).map(|key| {
                    let owners: Vec<&str> = OPS.iter().filter(|(_, f)| f.contains(&key)).map(|(o, _)| *o).collect();
                    format!("`{key}` is a field of {}", owners.join(", "))
                });
                if let Some(g) = self.unknown_field_note(k, &format!("a `{op_name}` node"), &allowed, note) {
                    self.misspelled.insert(g);
                }
            }
        }
        self.op(op_name, n)
    }

    /// Builds the typed op from a node's fields.
    pub(super) fn op(&mut self, op: &str, n: &YNode) -> Option<Op> {
        let before = self.problems;
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
        if self.problems > before {
            None
        } else {
            result
        }
    }
}
