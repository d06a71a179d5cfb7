//! The graph stage: a [`Spec`] becomes a petgraph graph with every tensor shape inferred.
//!
//! References are resolved (unknown names get a "did you mean"), cycles are refused, shapes are inferred
//! in topological order, residual shortcuts are checked — inserting a 1x1 strided projection where the
//! two sides of an `add` differ and one can fix it — and nodes that do not reach the output are warned
//! about. Errors carry the spec location of the node concerned. Later passes rewrite this [`Graph`]; its
//! [`Graph::verify`] is what they check after every change.

use crate::diag::{did_you_mean, shown, Diagnostic, Diagnostics, Loc, Repeats};
use crate::ops::{fmt_shape, Conv, Op, Padding, Shape, MAX_TENSOR_ELEMS};
use crate::spec::{BlockInstance, NodeSpec, ProjectionPolicy, Spec};
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

/// A node of the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: Op,
    /// Output shape of one batch item.
    pub shape: Shape,
    /// Where the spec wrote it (`None` for nodes the compiler created).
    pub loc: Option<Loc>,
    /// The block instance that made it (`None` for a node written in `layers`, or one the compiler
    /// created): messages about the node name it, and `resnetc dot` draws it as a cluster.
    pub instance: Option<Arc<BlockInstance>>,
}

/// An edge from a producer to one input slot of a consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    /// Which input of the consumer (0-based).
    pub port: usize,
    /// A residual shortcut (drawn dashed).
    pub shortcut: bool,
}

/// A shortcut projection the compiler inserted.
#[derive(Clone, Debug, PartialEq)]
pub struct Projection {
    /// The inserted convolution's name (its weights key).
    pub name: String,
    /// The `add` it feeds.
    pub add: String,
    /// The shortcut's producer.
    pub from: String,
    pub from_shape: Shape,
    pub to_shape: Shape,
    pub strides: [usize; 2],
    /// Where the shortcut is written (the `shortcut:` value or the `inputs` item).
    pub loc: Option<Loc>,
}

impl std::fmt::Display for Projection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "inserted shortcut projection `{}`: 1x1 conv stride {}x{} from `{}` {} to {} for `{}`",
            self.name,
            self.strides[0],
            self.strides[1],
            self.from,
            fmt_shape(&self.from_shape),
            fmt_shape(&self.to_shape),
            self.add
        )
    }
}

/// The model graph.
#[derive(Clone, Debug)]
pub struct Graph {
    pub model: String,
    pub file: Arc<str>,
    pub g: StableDiGraph<Node, Edge>,
    pub input: NodeIndex,
    pub output: NodeIndex,
}

impl Graph {
    pub fn node(&self, n: NodeIndex) -> &Node {
        &self.g[n]
    }

    /// The producers of a node's inputs, in port order.
    pub fn inputs(&self, n: NodeIndex) -> Vec<NodeIndex> {
        let mut e: Vec<(usize, NodeIndex)> =
            self.g.edges_directed(n, Direction::Incoming).map(|e| (e.weight().port, e.source())).collect();
        e.sort();
        e.into_iter().map(|(_, s)| s).collect()
    }

    /// The consumers of a node (one entry per edge).
    pub fn consumers(&self, n: NodeIndex) -> Vec<NodeIndex> {
        self.g.edges_directed(n, Direction::Outgoing).map(|e| e.target()).collect()
    }

    /// Nodes in a topological order that follows spec order where it can (stable for dumps and plans).
    pub fn topo(&self) -> Vec<NodeIndex> {
        let mut indeg: HashMap<NodeIndex, usize> =
            self.g.node_indices().map(|n| (n, self.g.edges_directed(n, Direction::Incoming).count())).collect();
        let mut ready: std::collections::BTreeSet<NodeIndex> =
            indeg.iter().filter(|(_, &d)| d == 0).map(|(&n, _)| n).collect();
        let mut out = Vec::with_capacity(indeg.len());
        while let Some(&n) = ready.iter().next() {
            ready.remove(&n);
            out.push(n);
            for e in self.g.edges_directed(n, Direction::Outgoing) {
                let d = indeg.get_mut(&e.target()).expect("node in graph");
                *d -= 1;
                if *d == 0 {
                    ready.insert(e.target());
                }
            }
        }
        out
    }

    pub fn find(&self, name: &str) -> Option<NodeIndex> {
        self.g.node_indices().find(|&n| self.g[n].name == name)
    }

    /// Checks the invariants every pass must keep: acyclic, each node's arity, distinct names, ports
    /// 0..n, and every stored shape equal to the one recomputed from its inputs.
    pub fn verify(&self) -> Result<(), String> {
        let order = self.topo();
        if order.len() != self.g.node_count() {
            return Err("the graph has a cycle".into());
        }
        let mut names = HashSet::new();
        for &n in &order {
            let node = &self.g[n];
            if !names.insert(node.name.as_str()) {
                return Err(format!("two nodes are named `{}`", node.name));
            }
            let mut ports: Vec<usize> =
                self.g.edges_directed(n, Direction::Incoming).map(|e| e.weight().port).collect();
            ports.sort();
            if ports.iter().enumerate().any(|(i, &p)| i != p) {
                return Err(format!("node `{}` has input ports {:?}", node.name, ports));
            }
            let ins = self.inputs(n);
            let shapes: Vec<&[usize]> = ins.iter().map(|&i| self.g[i].shape.as_slice()).collect();
            match node.op.infer(&shapes) {
                Ok(s) if s == node.shape => {}
                Ok(s) => {
                    return Err(format!(
                        "node `{}` stores shape {} but its inputs give {}",
                        node.name,
                        fmt_shape(&node.shape),
                        fmt_shape(&s)
                    ))
                }
                Err(e) => return Err(format!("node `{}`: {e}", node.name)),
            }
        }
        if !self.g.contains_node(self.input) || !self.g.contains_node(self.output) {
            return Err("the input or the output node is gone".into());
        }
        Ok(())
    }

    /// Parameters as Keras counts them, over the whole graph.
    pub fn params(&self) -> usize {
        self.g.node_indices().map(|n| self.node_params(n)).sum()
    }

    pub fn node_params(&self, n: NodeIndex) -> usize {
        match self.inputs(n).first() {
            Some(&i) => self.g[n].op.params(&self.g[i].shape),
            None => 0,
        }
    }

    pub fn node_macs(&self, n: NodeIndex) -> u64 {
        match self.inputs(n).first() {
            Some(&i) => self.g[n].op.macs(&self.g[i].shape, &self.g[n].shape),
            None => 0,
        }
    }

    pub fn macs(&self) -> u64 {
        self.g.node_indices().map(|n| self.node_macs(n)).sum()
    }

    /// A readable listing: one line per node in topological order.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        for n in self.topo() {
            let node = &self.g[n];
            let ins: Vec<String> = self.inputs(n).iter().map(|&i| self.g[i].name.clone()).collect();
            let _ = writeln!(
                s,
                "{:<28} {:<44} {:<16} <- {}",
                node.name,
                node.op.to_string(),
                fmt_shape(&node.shape),
                if ins.is_empty() { "-".into() } else { ins.join(", ") }
            );
        }
        s
    }
}

/// What building a graph produced besides the graph.
#[derive(Debug, Default)]
pub struct BuildReport {
    pub diagnostics: Diagnostics,
    pub projections: Vec<Projection>,
}

/// The graph stage's reporting: diagnostics located at the spec, naming the block instance of the node
/// concerned, with one mistake made in many instances of a block merged into one message.
struct Reporter<'r> {
    rep: &'r mut BuildReport,
    repeats: Repeats,
}

impl Reporter<'_> {
    /// Reports a problem about `node` at `loc` (its own place if None). `key` identifies the mistake
    /// without what differs per instance (names, shapes); `make` writes the message, only for the first
    /// instance, and gets whether the report is full (then it should skip costly hints).
    fn node(&mut self, node: &Node, loc: Option<&Loc>, key: &str, make: impl FnOnce(bool) -> Diagnostic) {
        let loc = loc.or(node.loc.as_ref());
        let describe = node.instance.as_ref().map(|i| move || i.note());
        let full = self.rep.diagnostics.is_full();
        let make = || {
            let mut d = make(full);
            if let Some(i) = &node.instance {
                // The block instance first, as for the spec stage's messages.
                let own = std::mem::replace(&mut d.notes, i.notes());
                d.notes.extend(own);
            }
            d
        };
        let describe = describe.as_ref().map(|f| f as &dyn Fn() -> String);
        self.repeats.report(&mut self.rep.diagnostics, loc, key, describe, make);
    }

    /// [`Reporter::node`] for an error whose message is `node `NAME`: msg` and whose key is `msg`.
    fn error(&mut self, node: &Node, msg: String) {
        let key = msg.clone();
        self.node(node, None, &key, |_| Diagnostic::error(node.loc.clone(), format!("node `{}`: {msg}", node.name)));
    }

    fn finish(self) {
        self.repeats.finish(&mut self.rep.diagnostics);
    }
}

/// Builds the graph from a spec; the graph is returned only if there are no errors at all.
pub fn build(spec: &Spec, policy: Option<ProjectionPolicy>) -> (Option<Graph>, BuildReport) {
    let mut rep = BuildReport::default();
    let mut out = Reporter { rep: &mut rep, repeats: Repeats::default() };
    let g = build_with(spec, policy.unwrap_or(spec.projection), &mut out);
    out.finish();
    rep.diagnostics.sort();
    let g = g.filter(|_| !rep.diagnostics.has_errors());
    if let Some(g) = &g {
        debug_assert_eq!(g.verify(), Ok(()));
    }
    (g, rep)
}

/// What shape inference needs to know of the spec besides the graph.
struct Context<'s> {
    policy: ProjectionPolicy,
    /// Every node's spec entry, by name.
    specs: HashMap<&'s str, &'s NodeSpec>,
    /// Where each edge (consumer, port) is written.
    edge_locs: HashMap<(NodeIndex, usize), Loc>,
    /// Every name in the graph (inserted projections included), and the names spec nodes chose for
    /// their projections.
    names: HashSet<String>,
    projection_names: HashSet<&'s str>,
}

fn build_with(spec: &Spec, policy: ProjectionPolicy, out: &mut Reporter) -> Option<Graph> {
    let mut g: StableDiGraph<Node, Edge> = StableDiGraph::new();
    let input = g.add_node(Node {
        name: spec.input.name.clone(),
        op: Op::Input { shape: spec.input.shape.clone() },
        shape: spec.input.shape.clone(),
        loc: Some(spec.input.loc.clone()),
        instance: None,
    });
    let mut by_name: HashMap<String, NodeIndex> = HashMap::new();
    by_name.insert(spec.input.name.clone(), input);
    let mut idx = vec![];
    for ns in &spec.nodes {
        let n = g.add_node(Node {
            name: ns.name.clone(),
            op: ns.op.clone(),
            shape: vec![],
            loc: Some(ns.loc.clone()),
            instance: ns.instance.clone(),
        });
        by_name.insert(ns.name.clone(), n);
        idx.push(n);
    }
    let mut cx = Context {
        policy,
        specs: spec.nodes.iter().map(|n| (n.name.as_str(), n)).collect(),
        edge_locs: HashMap::new(),
        names: by_name.keys().cloned().collect(),
        projection_names: spec.nodes.iter().filter_map(|n| n.projection.as_deref()).collect(),
    };
    // What "did you mean" searches, in a fixed order (the first of equally close names wins): the input,
    // the nodes in spec order, then the names of nodes with errors of their own.
    let mut broken: Vec<&str> = spec.broken.iter().map(|s| s.as_str()).filter(|b| !b.starts_with('<')).collect();
    broken.sort();
    let known: Vec<&str> = std::iter::once(spec.input.name.as_str())
        .chain(spec.nodes.iter().map(|n| n.name.as_str()))
        .chain(broken)
        .collect();
    // Anything that depends on a node with errors is skipped, not reported again.
    let mut poisoned: HashSet<NodeIndex> = HashSet::new();
    if spec.broken.contains(&spec.input.name) {
        // The input's shape was wrong (reported): check references and cycles, but infer no shapes.
        poisoned.insert(input);
    }
    for (ns, &n) in spec.nodes.iter().zip(&idx) {
        for (port, r) in ns.inputs.iter().enumerate() {
            match by_name.get(&r.name) {
                Some(&src) => {
                    g.add_edge(src, n, Edge { port, shortcut: r.shortcut });
                    cx.edge_locs.insert((n, port), r.loc.clone());
                }
                None if spec.broken.contains(&r.name) => {
                    poisoned.insert(n);
                }
                None => {
                    let node = &g[n];
                    out.node(node, Some(&r.loc), "refers to an unknown node", |full| {
                        // Any name the spec defines (nodes with errors of their own too), never the node itself.
                        let hint = if full {
                            None
                        } else {
                            did_you_mean(&r.name, known.iter().copied().filter(|s| *s != ns.name))
                        };
                        let hint = hint.map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
                        Diagnostic::error(
                            Some(r.loc.clone()),
                            format!("node `{}` refers to an unknown node `{}`{hint}", ns.name, shown(&r.name)),
                        )
                    });
                    poisoned.insert(n);
                }
            }
        }
    }
    let output = match by_name.get(&spec.output.0) {
        Some(&o) => o,
        None => {
            if !spec.broken.contains(&spec.output.0) {
                let hint = did_you_mean(&spec.output.0, known.iter().copied())
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                out.rep
                    .diagnostics
                    .error(Some(&spec.output.1), format!("the output `{}` is not a node{hint}", shown(&spec.output.0)));
            }
            // Keep checking the rest (shapes) with a stand-in output; the result is errors only, since the
            // output is broken (already reported) or unknown (an error above).
            input
        }
    };
    // Cycles: report each strongly connected component once, at its first node in spec order (Kosaraju:
    // iterative, where petgraph's Tarjan recurses once per node of a long chain).
    for scc in petgraph::algo::kosaraju_scc(&g) {
        let self_loop = scc.len() == 1 && g.find_edge(scc[0], scc[0]).is_some();
        if scc.len() > 1 || self_loop {
            let mut members = scc.clone();
            members.sort();
            const LISTED: usize = 12;
            let mut names: Vec<String> = members.iter().take(LISTED).map(|&n| g[n].name.clone()).collect();
            if members.len() > LISTED {
                names.push(format!("... ({} nodes in all)", members.len()));
            }
            let first = &g[members[0]];
            out.error(first, format!("the graph has a cycle: {} → {}", names.join(" → "), names[0]));
            poisoned.extend(members);
        }
    }
    let mut graph = Graph { model: spec.model.clone(), file: spec.file.clone(), g, input, output };
    // With errors above, still infer what can be inferred to report more errors at once.
    let complete = poisoned.is_empty() && spec.broken.is_empty() && !out.rep.diagnostics.has_errors();
    infer_shapes(&mut graph, &mut poisoned, &mut cx, out);
    if !complete {
        // Edges to broken or unknown nodes are missing, so "unused" would be noise: errors only.
        return None;
    }
    // An explicit projection name on an `add` that needed none. Not for nodes a block made: a block may
    // name the projection that only some of its uses need.
    let projected: HashSet<&str> = out.rep.projections.iter().map(|x| x.add.as_str()).collect();
    if !out.rep.diagnostics.has_errors() {
        for ns in spec.nodes.iter().filter(|n| n.instance.is_none() && !projected.contains(n.name.as_str())) {
            if let Some(p) = &ns.projection {
                out.rep.diagnostics.push(Diagnostic::warning(
                    Some(ns.loc.clone()),
                    format!(
                        "node `{}`: `projection: {p}` is unused: the shortcut already has the main path's shape, \
                         so no projection is inserted",
                        ns.name
                    ),
                ));
            }
        }
    }
    // Unused nodes: not an ancestor of the output.
    let mut live = HashSet::new();
    let mut stack = vec![graph.output];
    while let Some(n) = stack.pop() {
        if live.insert(n) {
            stack.extend(graph.g.neighbors_directed(n, Direction::Incoming));
        }
    }
    let mut unused: Vec<NodeIndex> = graph.g.node_indices().filter(|n| !live.contains(n)).collect();
    unused.sort();
    let out_name = graph.g[graph.output].name.clone();
    for n in unused {
        let node = &graph.g[n];
        if node.loc.is_none() {
            // Inserted by the compiler for an `add` that is itself unused (and reported).
            continue;
        }
        out.node(node, None, "unused", |_| {
            Diagnostic::warning(
                node.loc.clone(),
                format!("node `{}` is unused: it does not reach the output `{out_name}`", node.name),
            )
        });
    }
    if out.rep.diagnostics.has_errors() || !poisoned.is_empty() {
        return None;
    }
    Some(graph)
}

fn infer_shapes(graph: &mut Graph, poisoned: &mut HashSet<NodeIndex>, cx: &mut Context, out: &mut Reporter) {
    let order = graph.topo();
    for n in order {
        if n == graph.input {
            continue;
        }
        let ins = graph.inputs(n);
        if poisoned.contains(&n) || ins.iter().any(|i| poisoned.contains(i)) {
            poisoned.insert(n);
            continue;
        }
        if matches!(graph.g[n].op, Op::Add) && !reconcile_shortcut(graph, n, cx, out) {
            poisoned.insert(n);
            continue;
        }
        let ins = graph.inputs(n);
        let shapes: Vec<&[usize]> = ins.iter().map(|&i| graph.g[i].shape.as_slice()).collect();
        match graph.g[n].op.infer(&shapes) {
            Ok(s) => {
                // Refuse absurd weight tensors before anything would allocate them.
                let w = shapes.first().map(|i| graph.g[n].op.weights(i)).unwrap_or_default();
                for (wname, ws) in w {
                    let elems = ws.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
                    if elems.is_none_or(|e| e > MAX_TENSOR_ELEMS) {
                        out.error(
                            &graph.g[n],
                            format!(
                                "its `{wname}` weights would have shape {} ({} elements), more than the limit of \
                                 {MAX_TENSOR_ELEMS}",
                                fmt_shape(&ws),
                                ws.iter().map(|&d| d as u128).product::<u128>()
                            ),
                        );
                        poisoned.insert(n);
                    }
                }
                graph.g[n].shape = s;
            }
            Err(e) => {
                let node = &graph.g[n];
                let key = e.0.clone();
                out.node(node, None, &key, |_| {
                    let mut d = Diagnostic::error(node.loc.clone(), format!("node `{}`: {}", node.name, e.0));
                    if !shapes.is_empty() {
                        let mut desc: Vec<String> = ins
                            .iter()
                            .take(10)
                            .map(|&i| format!("`{}` {}", graph.g[i].name, fmt_shape(&graph.g[i].shape)))
                            .collect();
                        if ins.len() > 10 {
                            desc.push(format!("and {} more", ins.len() - 10));
                        }
                        d = d.note(format!("input(s): {}", desc.join(", ")));
                    }
                    d
                });
                poisoned.insert(n);
            }
        }
    }
}

/// Makes an `add`'s operands agree: where a shortcut operand differs from the main path by a channel
/// count and/or an integral spatial factor, inserts a 1x1 convolution with that stride on the shortcut
/// (and warns when its stride exceeds 2 or it reads the model input: a shortcut linked to the wrong
/// node). Returns false when the operands cannot agree (reported).
fn reconcile_shortcut(graph: &mut Graph, add: NodeIndex, cx: &mut Context, out: &mut Reporter) -> bool {
    let edges: Vec<(petgraph::stable_graph::EdgeIndex, NodeIndex, Edge)> = {
        let mut v: Vec<_> =
            graph.g.edges_directed(add, Direction::Incoming).map(|e| (e.id(), e.source(), *e.weight())).collect();
        v.sort_by_key(|x| x.2.port);
        v
    };
    if edges.len() < 2 {
        // Nothing to reconcile; shape inference reports the arity.
        return true;
    }
    // The main path: the first operand that is not a shortcut (or the first one).
    let main = edges.iter().position(|e| !e.2.shortcut).unwrap_or(0);
    let target = graph.g[edges[main].1].shape.clone();
    let add_node = graph.g[add].clone();
    for (i, &(eid, src, edge)) in edges.iter().enumerate() {
        let have = graph.g[src].shape.clone();
        if i == main || have == target {
            continue;
        }
        let sides = format!(
            "the main path `{}` is {} and the shortcut `{}` is {}",
            graph.g[edges[main].1].name,
            fmt_shape(&target),
            graph.g[src].name,
            fmt_shape(&have)
        );
        let (&[hs, ws, _], &[hm, wm, cm]) = (have.as_slice(), target.as_slice()) else {
            out.node(&add_node, None, "different shapes", |_| {
                node_error(&add_node, format!("cannot add tensors of different shapes: {sides}"))
            });
            return false;
        };
        if hs < hm || ws < wm {
            out.node(&add_node, None, "shortcut smaller", |_| {
                node_error(
                    &add_node,
                    format!("the shortcut is smaller than the main path, which no projection can fix: {sides}"),
                )
            });
            return false;
        }
        // The stride of a 1x1 `valid` conv maps n to (n - 1) / s + 1: find the one that lands on the main
        // path's size (e.g. 5 → 3 with stride 2, as a stride-2 `same` conv on the main path gives).
        // The smallest such stride is (from - 1) / to + 1, if any is.
        let stride = |from: usize, to: usize| {
            let s = (from.max(1) - 1) / to.max(1) + 1;
            ((from.max(1) - 1) / s + 1 == to).then_some(s)
        };
        let (Some(sh), Some(sw)) = (stride(hs, hm), stride(ws, wm)) else {
            out.node(&add_node, None, "no integral stride", |_| {
                node_error(
                    &add_node,
                    format!(
                        "no 1x1 projection can match the shortcut to the main path: no integral stride maps \
                         {hs}x{ws} to {hm}x{wm}; {sides}"
                    ),
                )
            });
            return false;
        };
        let strides = [sh, sw];
        if cx.policy == ProjectionPolicy::Error {
            out.node(&add_node, None, "needs a projection", |_| {
                node_error(
                    &add_node,
                    format!(
                        "the shortcut needs a projection (1x1 conv, stride {sh}x{sw}, {cm} filters): {sides}; \
                         automatic projections are off (`shortcut_projection: error` or --no-auto-projection)"
                    ),
                )
                .note("write the projection in the spec, or allow automatic projections")
            });
            return false;
        }
        let spec_name = cx.specs.get(add_node.name.as_str()).and_then(|n| n.projection.clone());
        let mut name = spec_name.unwrap_or_else(|| format!("{}_shortcut_proj", add_node.name));
        if cx.names.contains(&name) {
            if cx.projection_names.contains(name.as_str()) {
                out.node(&add_node, None, "projection name taken", |_| {
                    node_error(&add_node, format!("the projection name `{name}` is already a node's name"))
                });
                return false;
            }
            name = format!("{name}_{i}");
        }
        let conv = Op::Conv(Conv::new(cm, [1, 1], strides, Padding::Valid, true));
        let shape = match conv.infer(&[&have]) {
            Ok(s) => s,
            Err(e) => {
                out.error(&add_node, e.0);
                return false;
            }
        };
        debug_assert_eq!(shape, target);
        let loc = cx.edge_locs.get(&(add, edge.port)).cloned().or(add_node.loc.clone());
        let from_input = src == graph.input;
        if from_input || sh > 2 || sw > 2 {
            let from = &graph.g[src];
            let key = if from_input { "projection from the input" } else { "projection stride" };
            let written = cx.specs.get(add_node.name.as_str()).and_then(|n| n.inputs.get(edge.port));
            out.node(&add_node, loc.as_ref(), key, |_| {
                let msg = if from_input {
                    format!(
                        "node `{0}`: its shortcut is the model input `{1}` {2}: a 1x1 projection with stride \
                         {sh}x{sw} is inserted from the raw input to `{0}` {3}; is the shortcut linked to the right \
                         node?",
                        add_node.name,
                        from.name,
                        fmt_shape(&have),
                        fmt_shape(&target)
                    )
                } else {
                    format!(
                        "node `{0}`: the shortcut from `{1}` {2} to `{0}` {3} gets an inserted 1x1 projection with \
                         stride {sh}x{sw} (more than 2): is the shortcut linked to the right node?",
                        add_node.name,
                        from.name,
                        fmt_shape(&have),
                        fmt_shape(&target)
                    )
                };
                let mut d = Diagnostic::warning(loc.clone(), msg);
                if from_input && add_node.instance.is_some() && written.is_some_and(|r| r.name == from.name) {
                    d = d.note(format!(
                        "`{}` names the model input; the node that feeds the block is the template `\"{{input}}\"`",
                        from.name
                    ));
                }
                d
            });
        }
        // The projection belongs to the add's block instance (a picture draws it in that block).
        let instance = add_node.instance.clone();
        let p = graph.g.add_node(Node { name: name.clone(), op: conv, shape, loc: None, instance });
        cx.names.insert(name.clone());
        graph.g.remove_edge(eid);
        graph.g.add_edge(src, p, Edge { port: 0, shortcut: true });
        graph.g.add_edge(p, add, edge);
        out.rep.projections.push(Projection {
            name,
            add: add_node.name.clone(),
            from: graph.g[src].name.clone(),
            from_shape: have,
            to_shape: target.clone(),
            strides,
            loc,
        });
    }
    true
}

/// An error about `node`, at its place: `node `NAME`: msg`.
fn node_error(node: &Node, msg: String) -> Diagnostic {
    Diagnostic::error(node.loc.clone(), format!("node `{}`: {msg}", node.name))
}

/// Checks the whole model's size against `limits` (`max_params`, `max_activation_bytes`), before anything
/// would allocate weights or activations: each total over the limit is an error (see [`over_limit`]).
pub fn check_model_size(g: &Graph, limits: &crate::spec::Limits) -> Vec<Diagnostic> {
    use crate::spec::Limit;
    let order = g.topo();
    let params = |n: NodeIndex| g.node_params(n) as u64;
    let activation_bytes = |n: NodeIndex| g.g[n].shape.iter().fold(4u64, |a, &d| a.saturating_mul(d as u64));
    [
        over_limit(g, &order, params, limits, Limit::Params, limits.max_params, "parameters"),
        over_limit(
            g,
            &order,
            activation_bytes,
            limits,
            Limit::ActivationBytes,
            limits.max_activation_bytes,
            "bytes of activations per batch item",
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The error for a total of `size` over the nodes above `limit`: at the node where the running total (in
/// `order`) first passes it, with the largest contributors and how to raise the limit in notes.
fn over_limit(
    g: &Graph,
    order: &[NodeIndex],
    size: impl Fn(NodeIndex) -> u64,
    limits: &crate::spec::Limits,
    which: crate::spec::Limit,
    limit: u64,
    what: &str,
) -> Option<Diagnostic> {
    use crate::report::thousands;
    let sizes: Vec<(NodeIndex, u64)> = order.iter().map(|&n| (n, size(n))).collect();
    let total = sizes.iter().fold(0u64, |a, &(_, s)| a.saturating_add(s));
    if total <= limit {
        return None;
    }
    let mut running = 0u64;
    let &(at, _) = sizes.iter().find(|&&(_, s)| {
        running = running.saturating_add(s);
        running > limit
    })?;
    let mut largest: Vec<&(NodeIndex, u64)> = sizes.iter().filter(|(_, s)| *s > 0).collect();
    largest.sort_by_key(|&&(_, s)| std::cmp::Reverse(s));
    let top: Vec<String> =
        largest.iter().take(3).map(|(n, s)| format!("`{}` {}", g.g[*n].name, thousands(*s))).collect();
    let node = &g.g[at];
    // A compiler-inserted node (a shortcut projection) has no place in the spec: the first node it
    // feeds that has one stands for it.
    let mut loc = node.loc.clone();
    let mut next = vec![at];
    let mut seen = HashSet::new();
    while loc.is_none() {
        let Some(n) = next.pop() else { break };
        for m in g.consumers(n) {
            if seen.insert(m) {
                loc = loc.or_else(|| g.g[m].loc.clone());
                next.push(m);
            }
        }
    }
    Some(
        Diagnostic::error(
            loc.or_else(|| g.g[g.input].loc.clone()),
            format!(
                "the model has {} {what} in all, more than the limit of {}; it passes the limit at node `{}`",
                thousands(total),
                thousands(limit),
                node.name
            ),
        )
        .note(format!("the largest: {}", top.join(", ")))
        .note(limits.how_to_raise(which)),
    )
}
