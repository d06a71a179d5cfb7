//! Human-facing views of a graph: the Keras-style summary table and Graphviz DOT.

use crate::graph::Graph;
use crate::ops::fmt_shape;
use petgraph::visit::{EdgeRef, IntoEdgeReferences};
use std::fmt::Write as _;

/// Groups digits in threes (23,600,006), as Keras prints parameter counts.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A table like Keras's `model.summary()`: name, op, output shape, parameters, MACs, with totals.
pub fn summary(g: &Graph) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Model: \"{}\"", g.model);
    let line = "─".repeat(118);
    let _ = writeln!(s, "{line}");
    let _ = writeln!(s, "{:<32} {:<16} {:<22} {:>14} {:>16}   Inputs", "Layer", "Op", "Output shape", "Params", "MACs");
    let _ = writeln!(s, "{line}");
    for n in g.topo() {
        let node = g.node(n);
        let ins: Vec<String> = g.inputs(n).iter().map(|&i| g.node(i).name.clone()).collect();
        let _ = writeln!(
            s,
            "{:<32} {:<16} {:<22} {:>14} {:>16}   {}",
            node.name,
            node.op.kind(),
            format!("(None, {})", node.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
            thousands(g.node_params(n) as u64),
            thousands(g.node_macs(n)),
            ins.join(", ")
        );
    }
    let _ = writeln!(s, "{line}");
    let _ = writeln!(s, "Total params: {}", thousands(g.params() as u64));
    let _ = writeln!(s, "Total MACs per image: {}", thousands(g.macs()));
    let _ = writeln!(s, "Nodes: {}", g.g.node_count());
    s
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Graphviz DOT: one box per node (name, op, shape); residual shortcut edges dashed and labelled.
pub fn dot(g: &Graph) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "digraph \"{}\" {{", esc(&g.model));
    let _ = writeln!(s, "  rankdir=TB;\n  node [shape=box, fontname=\"monospace\", fontsize=10];");
    for n in g.topo() {
        let node = g.node(n);
        let style = if node.loc.is_none() { ", style=filled, fillcolor=\"#ffe9a8\"" } else { "" };
        let _ = writeln!(
            s,
            "  n{} [label=\"{}\\n{}\\n{}\"{style}];",
            n.index(),
            esc(&node.name),
            esc(&node.op.to_string()),
            fmt_shape(&node.shape)
        );
    }
    let mut edges: Vec<_> = (&g.g).edge_references().collect();
    edges.sort_by_key(|e| (e.target().index(), e.weight().port));
    for e in edges {
        let attrs = if e.weight().shortcut { " [style=dashed, color=\"#1f6fd0\", label=\"shortcut\"]" } else { "" };
        let _ = writeln!(s, "  n{} -> n{}{attrs};", e.source().index(), e.target().index());
    }
    s.push_str("}\n");
    s
}
