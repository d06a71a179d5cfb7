//! The graph stage: a [`Spec`] becomes a petgraph graph with every tensor shape inferred.
//!
//! References are resolved (unknown names get a "did you mean"), cycles are refused, shapes are inferred
//! in topological order, residual shortcuts are checked — inserting a 1x1 strided projection where the
//! two sides of an `add` differ and one can fix it — and nodes that do not reach the output are warned
//! about. Errors carry the spec location of the node concerned. Later passes rewrite this [`Graph`]; its
//! [`Graph::verify`] is what they check after every change.

use crate::diag::{did_you_mean, Diagnostic, Diagnostics, Loc};
use crate::ops::{fmt_shape, Conv, Op, Padding, Shape, MAX_TENSOR_ELEMS};
use crate::spec::{ProjectionPolicy, Spec};
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
    /// Block-expansion notes for messages about this node.
    pub context: Vec<String>,
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

fn node_err(node: &Node, msg: String) -> Diagnostic {
    let mut d = Diagnostic::error(node.loc.clone(), format!("node `{}`: {msg}", node.name));
    for c in node.context.iter().rev() {
        d = d.note(c.clone());
    }
    d
}

/// Builds the graph from a spec. `spec_diags` are the spec stage's diagnostics (so that nodes already
/// reported are not reported again); the graph is returned only if there are no errors at all.
pub fn build(spec: &Spec, policy: Option<ProjectionPolicy>) -> (Option<Graph>, BuildReport) {
    let mut rep = BuildReport::default();
    let policy = policy.unwrap_or(spec.projection);
    let mut g: StableDiGraph<Node, Edge> = StableDiGraph::new();
    let input = g.add_node(Node {
        name: spec.input.name.clone(),
        op: Op::Input { shape: spec.input.shape.clone() },
        shape: spec.input.shape.clone(),
        loc: Some(spec.input.loc.clone()),
        context: vec![],
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
            context: ns.context.clone(),
        });
        by_name.insert(ns.name.clone(), n);
        idx.push(n);
    }
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
                }
                None if spec.broken.contains(&r.name) => {
                    poisoned.insert(n);
                }
                None => {
                    // Any name the spec defines (nodes with errors of their own too), never the node itself.
                    let known = by_name.keys().chain(spec.broken.iter().filter(|b| !b.starts_with('<')));
                    let hint = did_you_mean(&r.name, known.map(|s| s.as_str()).filter(|s| *s != ns.name))
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                    let mut d = Diagnostic::error(
                        Some(r.loc.clone()),
                        format!("node `{}` refers to an unknown node `{}`{hint}", ns.name, r.name),
                    );
                    for c in ns.context.iter().rev() {
                        d = d.note(c.clone());
                    }
                    rep.diagnostics.push(d);
                    poisoned.insert(n);
                }
            }
        }
    }
    let output = match by_name.get(&spec.output.0) {
        Some(&o) => o,
        None => {
            if !spec.broken.contains(&spec.output.0) {
                let hint = did_you_mean(&spec.output.0, by_name.keys().map(|s| s.as_str()))
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                rep.diagnostics
                    .error(Some(&spec.output.1), format!("the output `{}` is not a node{hint}", spec.output.0));
            }
            // Keep checking the rest (shapes) with a stand-in output; the result is errors only, since the
            // output is broken (already reported) or unknown (an error above).
            input
        }
    };
    // Cycles: report each strongly connected component once, at its first node in spec order.
    for scc in petgraph::algo::tarjan_scc(&g) {
        let self_loop = scc.len() == 1 && g.find_edge(scc[0], scc[0]).is_some();
        if scc.len() > 1 || self_loop {
            let mut members = scc.clone();
            members.sort();
            let names: Vec<&str> = members.iter().map(|&n| g[n].name.as_str()).collect();
            let first = &g[members[0]];
            rep.diagnostics
                .push(node_err(first, format!("the graph has a cycle: {} → {}", names.join(" → "), names[0])));
            poisoned.extend(members);
        }
    }
    let mut graph = Graph { model: spec.model.clone(), file: spec.file.clone(), g, input, output };
    // With errors above, still infer what can be inferred to report more errors at once.
    let complete = poisoned.is_empty() && spec.broken.is_empty() && !rep.diagnostics.has_errors();
    infer_shapes(&mut graph, &mut poisoned, policy, spec, &mut rep);
    if !complete {
        // Edges to broken or unknown nodes are missing, so "unused" would be noise: errors only.
        rep.diagnostics.sort();
        return (None, rep);
    }
    // An explicit projection name on an `add` that needed none. Not for nodes a block made: a block may
    // name the projection that only some of its uses need.
    for ns in spec.nodes.iter().filter(|n| n.context.is_empty()) {
        if let Some(p) = &ns.projection {
            if !rep.projections.iter().any(|x| x.add == ns.name) && !rep.diagnostics.has_errors() {
                rep.diagnostics.push(Diagnostic::warning(
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
    for n in unused {
        let node = &graph.g[n];
        if node.loc.is_none() {
            // Inserted by the compiler for an `add` that is itself unused (and reported).
            continue;
        }
        rep.diagnostics.push(Diagnostic::warning(
            node.loc.clone(),
            format!("node `{}` is unused: it does not reach the output `{}`", node.name, graph.g[graph.output].name),
        ));
    }
    rep.diagnostics.sort();
    if rep.diagnostics.has_errors() || !poisoned.is_empty() {
        return (None, rep);
    }
    debug_assert_eq!(graph.verify(), Ok(()));
    (Some(graph), rep)
}

fn infer_shapes(
    graph: &mut Graph,
    poisoned: &mut HashSet<NodeIndex>,
    policy: ProjectionPolicy,
    spec: &Spec,
    rep: &mut BuildReport,
) {
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
        if matches!(graph.g[n].op, Op::Add) {
            if let Err(d) = reconcile_shortcut(graph, n, policy, spec, rep) {
                rep.diagnostics.push(d);
                poisoned.insert(n);
                continue;
            }
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
                        rep.diagnostics.push(node_err(
                            &graph.g[n],
                            format!(
                                "its `{wname}` weights would have shape {} ({} elements), more than the limit of \
                                 {MAX_TENSOR_ELEMS}",
                                fmt_shape(&ws),
                                ws.iter().map(|&d| d as u128).product::<u128>()
                            ),
                        ));
                        poisoned.insert(n);
                    }
                }
                graph.g[n].shape = s;
            }
            Err(e) => {
                let node = &graph.g[n];
                let mut d = node_err(node, e.0);
                if !shapes.is_empty() {
                    let desc: Vec<String> = ins
                        .iter()
                        .map(|&i| format!("`{}` {}", graph.g[i].name, fmt_shape(&graph.g[i].shape)))
                        .collect();
                    d = d.note(format!("input(s): {}", desc.join(", ")));
                }
                rep.diagnostics.push(d);
                poisoned.insert(n);
            }
        }
    }
}

/// Makes an `add`'s operands agree: where a shortcut operand differs from the main path by a channel
/// count and/or an integral spatial factor, inserts a 1x1 convolution with that stride on the shortcut.
fn reconcile_shortcut(
    graph: &mut Graph,
    add: NodeIndex,
    policy: ProjectionPolicy,
    spec: &Spec,
    rep: &mut BuildReport,
) -> Result<(), Diagnostic> {
    let edges: Vec<(petgraph::stable_graph::EdgeIndex, NodeIndex, Edge)> = {
        let mut v: Vec<_> =
            graph.g.edges_directed(add, Direction::Incoming).map(|e| (e.id(), e.source(), *e.weight())).collect();
        v.sort_by_key(|x| x.2.port);
        v
    };
    if edges.len() < 2 {
        // Nothing to reconcile; shape inference reports the arity.
        return Ok(());
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
            return Err(node_err(&add_node, format!("cannot add tensors of different shapes: {sides}")));
        };
        if hs < hm || ws < wm {
            return Err(node_err(
                &add_node,
                format!("the shortcut is smaller than the main path, which no projection can fix: {sides}"),
            ));
        }
        // The stride of a 1x1 `valid` conv maps n to (n - 1) / s + 1: find the one that lands on the main
        // path's size (e.g. 5 → 3 with stride 2, as a stride-2 `same` conv on the main path gives).
        let stride = |from: usize, to: usize| (1..=from).find(|&s| (from - 1) / s + 1 == to);
        let (Some(sh), Some(sw)) = (stride(hs, hm), stride(ws, wm)) else {
            return Err(node_err(
                &add_node,
                format!(
                    "no 1x1 projection can match the shortcut to the main path: no integral stride maps {hs}x{ws} to {hm}x{wm}; {sides}"
                ),
            ));
        };
        let strides = [sh, sw];
        if policy == ProjectionPolicy::Error {
            return Err(node_err(
                &add_node,
                format!(
                    "the shortcut needs a projection (1x1 conv, stride {}x{}, {cm} filters): {sides}; \
                     automatic projections are off (`shortcut_projection: error` or --no-auto-projection)",
                    strides[0], strides[1]
                ),
            )
            .note("write the projection in the spec, or allow automatic projections"));
        }
        let spec_name = spec.nodes.iter().find(|n| n.name == add_node.name).and_then(|n| n.projection.clone());
        let mut name = spec_name.unwrap_or_else(|| format!("{}_shortcut_proj", add_node.name));
        if graph.find(&name).is_some() {
            if spec.nodes.iter().any(|n| n.projection.as_deref() == Some(name.as_str())) {
                return Err(node_err(&add_node, format!("the projection name `{name}` is already a node's name")));
            }
            name = format!("{name}_{i}");
        }
        let conv = Op::Conv(Conv::new(cm, [1, 1], strides, Padding::Valid, true));
        let shape = conv.infer(&[&have]).map_err(|e| node_err(&add_node, e.0))?;
        debug_assert_eq!(shape, target);
        let p = graph.g.add_node(Node {
            name: name.clone(),
            op: conv,
            shape,
            loc: None,
            context: vec![format!("inserted for `{}`", add_node.name)],
        });
        graph.g.remove_edge(eid);
        graph.g.add_edge(src, p, Edge { port: 0, shortcut: true });
        graph.g.add_edge(p, add, edge);
        rep.projections.push(Projection {
            name,
            add: add_node.name.clone(),
            from: graph.g[src].name.clone(),
            from_shape: have,
            to_shape: target.clone(),
            strides,
            loc: add_node.loc.clone(),
        });
    }
    Ok(())
}
