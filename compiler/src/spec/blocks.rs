//! Blocks: their definitions (`blocks:`), and a use (`{use: b, with: {...}, for: {...} | repeat: N}`)
//! expanded into the block's nodes, once per instance.
//!
//! A use is expanded in four steps, one method each: [`Expander::lookup_block`] finds the block and
//! refuses recursion and nesting past the depth limit; [`Expander::arguments`] checks `with` against the
//! block's parameters; [`Expander::iterations`] reads `for` or `repeat` (and
//! [`Expander::all_parameters_given`] checks that the required ones have values); [`Expander::instantiate`]
//! binds the parameters of each instance (defaults, arguments, the iterated value, `input` and `rep`) and
//! expands the block's nodes with them.

use super::{hint, to_value, BlockInstance, Expander, Limit, BLOCK_KEYS, OPS, REP, USE_KEYS};
use crate::diag::{did_you_mean, shown, Loc};
use crate::spec::expr::{Env, Value};
use crate::yaml::{YNode, YValue};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

/// A block definition.
pub(super) struct Block<'a> {
    loc: Loc,
    params: Params,
    nodes: &'a [YNode],
}

/// A block's parameters in declaration order, with their defaults.
type Params = Vec<(String, Option<Value>)>;

/// The most instances one use may make (`repeat: N`, or the values of a `for` range).
const MAX_ITERATIONS: usize = 10_000;

/// A use's checked arguments.
struct Arguments {
    /// The values given in `with`.
    values: Env,
    /// The same as texts for labels, in the order written.
    texts: Vec<(String, String)>,
    /// `with: {input: NAME}`: where the block starts instead of the node before the use.
    input: Option<String>,
}

/// A use's instances: the parameter `for` iterates (if any) and one value per instance (or `repeat: N`
/// instances without one).
struct Iterations {
    param: Option<String>,
    values: Vec<Option<Value>>,
}

/// A value as a short text (for labels and notes), without formatting a huge list in full.
fn short_text(v: &Value) -> String {
    struct Capped(String);
    impl std::fmt::Write for Capped {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            if self.0.len() + s.len() > 60 {
                return Err(std::fmt::Error);
            }
            self.0.push_str(s);
            Ok(())
        }
    }
    let mut c = Capped(String::new());
    if write!(c, "{v}").is_err() {
        c.0.push_str("...");
    }
    c.0
}

impl<'a> Expander<'a> {
    /// Reads the `blocks:` mapping.
    pub(super) fn collect_blocks(&mut self, b: &'a YNode) {
        let Some(m) = b.as_map() else {
            self.err(
                &b.loc,
                format!("`blocks` must be a mapping of block names to blocks, found {}", b.value.describe()),
            );
            return;
        };
        for (k, v) in m {
            let Some(name) = self.name(k, "a block name") else { continue };
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
            let params = match v.get("params") {
                None => vec![],
                Some(p) => self.params(&name, p),
            };
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

    /// A block's `params`: a list of names, or a mapping of names to defaults (`~` = required).
    fn params(&mut self, block: &str, p: &YNode) -> Params {
        let mut params: Params = vec![];
        let mut declared = HashSet::new();
        let mut declare = |me: &mut Self, pk: &YNode, default: Option<Value>| {
            let Some(pn) = me.name(pk, "a parameter name") else { return };
            if !declared.insert(pn.clone()) {
                me.err(&pk.loc, format!("block `{block}` declares the parameter `{pn}` twice"));
            } else {
                params.push((pn, default));
            }
        };
        match &p.value {
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
                                        "the default of parameter `{}` must be a number, string or list (or `~` for \
                                         a required parameter), found {}",
                                        shown(&pk.as_str().map(str::to_string).unwrap_or_else(|| pk.value.to_string())),
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
        }
        params
    }

    /// Expands a block use; returns the name of the last node of its last instance.
    pub(super) fn use_block(&mut self, e: &YNode, env: &Env, prev: Option<String>) -> Option<String> {
        self.failed.clear();
        let e = self.substitute(e, env);
        if self.exhausted {
            return prev;
        }
        if !self.failed.is_empty() {
            // A template in the use itself failed (reported): expanding with a hole would mislead.
            return self.placeholder("block use", &e.loc);
        }
        for (k, _) in e.as_map().unwrap_or(&[]) {
            if !USE_KEYS.contains(&k.as_str().unwrap_or("")) {
                self.unknown_field(k, "a block use", USE_KEYS);
            }
        }
        let Some((bname, block_params, nodes)) = self.lookup_block(&e) else {
            return self.placeholder("block use", &e.loc);
        };
        let params: HashMap<&str, &Option<Value>> = block_params.iter().map(|(p, d)| (p.as_str(), d)).collect();
        let (Some(args), Some(iterations)) =
            (self.arguments(&e, &bname, &block_params, &params), self.iterations(&e, &bname, &block_params, &params))
        else {
            return self.placeholder("block use", &e.loc);
        };
        if !self.all_parameters_given(&e, &bname, &block_params, &args, &iterations) {
            return self.placeholder("block use", &e.loc);
        }
        let start = args.input.clone().or(prev);
        self.stack.push(bname.clone());
        let last = self.instantiate(&e, &bname, &block_params, nodes, args, iterations, start);
        self.stack.pop();
        last
    }

    /// The block a use names, with its parameters and nodes; refuses an unknown block, a block that
    /// would use itself, and nesting deeper than the limit (all reported).
    fn lookup_block(&mut self, e: &YNode) -> Option<(String, Params, &'a [YNode])> {
        let use_node = e.get("use")?;
        let bname = self.name(use_node, "`use`")?;
        let Some(block) = self.blocks.get(&bname) else {
            let mut known: Vec<&str> = self.blocks.keys().map(|s| s.as_str()).collect();
            known.sort();
            let h = hint(did_you_mean(&bname, known.iter().copied()));
            let list = match known.len() {
                0 => "no blocks are defined (under the top-level `blocks`)".to_string(),
                n if n > 20 => format!("defined: {}, and {} more", known[..20].join(", "), n - 20),
                _ => format!("defined: {}", known.join(", ")),
            };
            let h = if h.is_empty() && OPS.iter().any(|(o, _)| *o == bname) {
                format!(" (`{bname}` is an op: write `op: {bname}`)")
            } else {
                h
            };
            self.err(&use_node.loc, format!("unknown block `{}`{h}; {list}", shown(&bname)));
            return None;
        };
        let (params, nodes) = (block.params.clone(), block.nodes);
        if let Some(from) = self.stack.iter().position(|b| *b == bname) {
            let chain: Vec<&str> = self.stack[from..].iter().map(|s| s.as_str()).chain([bname.as_str()]).collect();
            self.err(
                &use_node.loc,
                format!("block `{bname}` uses itself ({}): blocks cannot be recursive", chain.join(" → ")),
            );
            return None;
        }
        let max = self.limits.max_block_depth;
        if self.stack.len() >= max {
            let s: Vec<&str> = self.stack.iter().map(|b| b.as_str()).collect();
            let chain = if s.len() <= 4 {
                format!("{} → {bname}", s.join(" → "))
            } else {
                format!("{} → {} → ... → {} → {bname}", s[0], s[1], s[s.len() - 1])
            };
            self.err(
                &use_node.loc,
                format!(
                    "blocks nest more than {max} levels deep here ({chain}): the limit; {}",
                    self.limits.how_to_raise(Limit::BlockDepth)
                ),
            );
            return None;
        }
        Some((bname, params, nodes))
    }

    /// The arguments in `with`, checked against the block's parameters (errors reported; None if `with`
    /// is not a mapping).
    fn arguments(
        &mut self,
        e: &YNode,
        bname: &str,
        block_params: &[(String, Option<Value>)],
        params: &HashMap<&str, &Option<Value>>,
    ) -> Option<Arguments> {
        let mut args = Arguments { values: Env::new(), texts: vec![], input: None };
        let Some(w) = e.get("with") else { return Some(args) };
        let Some(m) = w.as_map() else {
            self.err(
                &w.loc,
                format!("`with` must be a mapping of parameter names to values, found {}", w.value.describe()),
            );
            return None;
        };
        for (k, v) in m {
            let Some(key) = self.name(k, "a parameter name") else { continue };
            if !params.contains_key(key.as_str()) {
                match key.as_str() {
                    // `input` (the implicit parameter) may be given to start the block elsewhere.
                    "input" => args.input = self.name(v, "the block's `input`"),
                    REP => self.err(
                        &k.loc,
                        format!(
                            "`{REP}` cannot be given: it numbers the instances of a use (1, 2, ...; 1 without `for` \
                             or `repeat`)"
                        ),
                    ),
                    _ => {
                        let h = hint(did_you_mean(&key, block_params.iter().map(|(p, _)| p.as_str())));
                        self.err(
                            &k.loc,
                            format!("block `{bname}` has no parameter `{key}`{h}; {}", param_list(block_params)),
                        );
                    }
                }
                continue;
            }
            match to_value(v) {
                Some(val) => {
                    args.texts.push((key.clone(), short_text(&val)));
                    args.values.insert(key, val);
                }
                None => self.err(
                    &v.loc,
                    format!("parameter `{key}` must be a number, string or list, found {}", v.value.describe()),
                ),
            }
        }
        Some(args)
    }

    /// Whether every required parameter has a value (from `with`, or `for`); reports those that do not.
    fn all_parameters_given(
        &mut self,
        e: &YNode,
        bname: &str,
        block_params: &[(String, Option<Value>)],
        args: &Arguments,
        iterations: &Iterations,
    ) -> bool {
        let mut missing: Vec<String> = block_params
            .iter()
            .filter(|(p, default)| {
                default.is_none()
                    && !args.values.contains_key(p)
                    && iterations.param.as_ref() != Some(p)
                    && p != "input"
                    && p != REP
            })
            .map(|(p, _)| format!("`{p}`"))
            .collect();
        if missing.is_empty() {
            return true;
        }
        if missing.len() > 20 {
            let more = missing.len() - 20;
            missing.truncate(20);
            missing.push(format!("and {more} more"));
        }
        let bloc = self.blocks.get(bname).map(|b| b.loc.to_string()).unwrap_or_default();
        let use_loc = e.get("use").map_or(&e.loc, |u| &u.loc).clone();
        self.err(
            &use_loc,
            format!(
                "block `{bname}` is missing parameter(s) {} (give them in `with:`; the block is defined at {bloc})",
                missing.join(", ")
            ),
        );
        false
    }

    /// A use's instances, from `for: {param: [values] | "a..c" | "2..5"}` or `repeat: N` (one instance
    /// without either); None when they are wrong (reported).
    fn iterations(
        &mut self,
        e: &YNode,
        bname: &str,
        block_params: &[(String, Option<Value>)],
        params: &HashMap<&str, &Option<Value>>,
    ) -> Option<Iterations> {
        match (e.get("for"), e.get("repeat")) {
            (Some(_), Some(r)) => {
                self.err(&r.loc, "a block use takes `for` or `repeat`, not both");
                None
            }
            (Some(f), None) => {
                let Some([(k, v)]) = f.as_map() else {
                    self.err(
                        &f.loc,
                        format!(
                            "`for` must be a mapping of one parameter to its values, e.g. `for: {{block: [b, c]}}` or \
                             `for: {{block: b..c}}`; found {}",
                            f.value.describe()
                        ),
                    );
                    return None;
                };
                let key = self.name(k, "a parameter name")?;
                if !params.contains_key(key.as_str()) {
                    let h = hint(did_you_mean(&key, block_params.iter().map(|(p, _)| p.as_str())));
                    self.err(
                        &k.loc,
                        format!(
                            "block `{bname}` has no parameter `{key}` to iterate over{h}; {}",
                            param_list(block_params)
                        ),
                    );
                    return None;
                }
                let values = self.range(v)?;
                if values.is_empty() {
                    self.err(&v.loc, format!("`for` gives `{key}` no values: the block would be left out"));
                    return None;
                }
                if values.len() > MAX_ITERATIONS {
                    self.err(
                        &v.loc,
                        format!(
                            "`for` gives `{key}` {} values, more than the limit of {MAX_ITERATIONS} per use",
                            values.len()
                        ),
                    );
                    return None;
                }
                Some(Iterations { param: Some(key), values: values.into_iter().map(Some).collect() })
            }
            (None, Some(r)) => {
                let n = match &r.value {
                    YValue::Int(i) if *i > MAX_ITERATIONS as i64 => None,
                    YValue::Float(x) if *x > MAX_ITERATIONS as f64 => None,
                    _ => Some(self.size(r, "`repeat`")?),
                };
                let Some(n) = n else {
                    self.err(
                        &r.loc,
                        format!("`repeat` is too large: {} (the limit is {MAX_ITERATIONS} instances per use)", r.value),
                    );
                    return None;
                };
                Some(Iterations { param: None, values: vec![None; n] })
            }
            (None, None) => Some(Iterations { param: None, values: vec![None] }),
        }
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
                            "`{}` is not a range{why}: write `2..5` or `b..f` (inclusive, first <= last), or a list",
                            shown(s)
                        ),
                    );
                    None
                };
                let Some((a, b)) = s.split_once("..") else { return bad(self, "") };
                if let (Ok(a), Ok(b)) = (a.trim().parse::<i64>(), b.trim().parse::<i64>()) {
                    if b < a {
                        return bad(self, &format!(" ({b} is before {a})"));
                    }
                    if i128::from(b) - i128::from(a) >= MAX_ITERATIONS as i128 {
                        return bad(self, &format!(" (more than {MAX_ITERATIONS} values, the limit per use)"));
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

    /// Expands the block's nodes once per iteration, each instance feeding the next; returns the last
    /// node's name.
    #[allow(clippy::too_many_arguments)]
    fn instantiate(
        &mut self,
        e: &YNode,
        bname: &str,
        block_params: &[(String, Option<Value>)],
        nodes: &'a [YNode],
        args: Arguments,
        iterations: Iterations,
        mut prev: Option<String>,
    ) -> Option<String> {
        let used_at = e.get("use").map_or(&e.loc, |u| &u.loc).clone();
        let declares = |p: &str| block_params.iter().any(|(q, _)| q == p);
        let declares_rep = declares(REP);
        // Every instance holds its own copy of the defaults and arguments: that counts against the
        // expansion budget.
        let defaults = block_params.iter().filter_map(|(_, d)| d.as_ref());
        let env_bytes: usize = defaults.chain(args.values.values()).map(Value::size).sum();
        let reps = iterations.values.len();
        for (i, value) in iterations.values.into_iter().enumerate() {
            if self.exhausted {
                break;
            }
            let mut local = Env::new();
            for (p, default) in block_params {
                if let Some(d) = default {
                    local.insert(p.clone(), d.clone());
                }
            }
            local.extend(args.values.clone());
            self.charge(env_bytes, &used_at);
            let mut texts = args.texts.clone();
            if let (Some(k), Some(v)) = (&iterations.param, value) {
                texts.push((k.clone(), short_text(&v)));
                local.insert(k.clone(), v);
            }
            if let Some(p) = &prev {
                if !args.values.contains_key("input") {
                    local.insert("input".into(), Value::Str(p.clone()));
                }
            }
            if !declares_rep {
                local.insert(REP.into(), Value::Int(i as i64 + 1));
            }
            let instance = BlockInstance {
                id: self.instances,
                block: bname.to_string(),
                used_at: used_at.clone(),
                args: texts,
                iterated: iterations.param.is_some(),
                rep: i + 1,
                reps,
                parent: self.instance.clone(),
            };
            self.instances += 1;
            let outer = self.instance.replace(Arc::new(instance));
            prev = self.sequence(nodes, &local, prev);
            self.instance = outer;
        }
        prev
    }
}

/// "its parameters: a, b" for messages.
fn param_list(params: &[(String, Option<Value>)]) -> String {
    match params.len() {
        0 => "it has none".to_string(),
        n if n > 20 => {
            let names: Vec<&str> = params[..20].iter().map(|(p, _)| p.as_str()).collect();
            format!("its parameters: {}, and {} more", names.join(", "), n - 20)
        }
        _ => format!("its parameters: {}", params.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>().join(", ")),
    }
}
