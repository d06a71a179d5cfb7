//! Human-facing views of a graph: the Keras-style summary table and Graphviz DOT (block instances drawn
//! as clusters, or collapsed to one box each).

use crate::graph::Graph;
use crate::ops::fmt_shape;
use crate::spec::BlockInstance;
use petgraph::stable_graph::NodeIndex;
use petgraph::visit::{EdgeRef, IntoEdgeReferences};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

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

/// Graphviz DOT: one box per node (name, op, shape); residual shortcut edges dashed and labelled,
/// compiler-inserted nodes shaded. The nodes of each block instance are drawn in a cluster labelled with
/// the block and its arguments (nested as the blocks are), so that the picture reads like the spec.
pub fn dot(g: &Graph) -> String {
    let mut tree = Cluster::default();
    for n in g.topo() {
        let chain = g.node(n).instance.as_ref().map(|i| i.chain()).unwrap_or_default();
        tree.insert(&chain, n);
    }
    let mut s = header(g);
    tree.write(g, &mut s, 1);
    write_edges(g, &mut s, |n| format!("n{}", n.index()));
    s.push_str("}\n");
    s
}

/// [`dot`] with one box per outermost block instance (its label, and the shape it ends with) and one
/// per node outside blocks: the model at the level of its blocks.
pub fn dot_collapsed(g: &Graph) -> String {
    let group = |n: NodeIndex| match &g.node(n).instance {
        Some(i) => format!("b{}", i.chain()[0].id),
        None => format!("n{}", n.index()),
    };
    let mut s = header(g);
    let mut drawn = HashSet::new();
    let order = g.topo();
    // A block's box shows the shape its last node (in order) produces.
    let mut last_of: HashMap<String, NodeIndex> = HashMap::new();
    for &n in &order {
        last_of.insert(group(n), n);
    }
    for &n in &order {
        let id = group(n);
        if !drawn.insert(id.clone()) {
            continue;
        }
        match &g.node(n).instance {
            Some(i) => {
                let outer = &i.chain()[0];
                let last = g.node(last_of[&id]);
                let _ = writeln!(
                    s,
                    "  {id} [label=\"{}\\n{}\", style=\"rounded,filled\", fillcolor=\"#e8f0fe\"];",
                    esc(&outer.label()),
                    fmt_shape(&last.shape)
                );
            }
            None => node_line(g, n, &mut s, 1),
        }
    }
    write_edges(g, &mut s, group);
    s.push_str("}\n");
    s
}

fn header(g: &Graph) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "digraph \"{}\" {{", esc(&g.model));
    let _ = writeln!(s, "  rankdir=TB;\n  node [shape=box, fontname=\"monospace\", fontsize=10];");
    s
}

fn node_line(g: &Graph, n: NodeIndex, s: &mut String, depth: usize) {
    let node = g.node(n);
    let style = if node.loc.is_none() { ", style=filled, fillcolor=\"#ffe9a8\"" } else { "" };
    let _ = writeln!(
        s,
        "{}n{} [label=\"{}\\n{}\\n{}\"{style}];",
        "  ".repeat(depth),
        n.index(),
        esc(&node.name),
        esc(&node.op.to_string()),
        fmt_shape(&node.shape)
    );
}

/// Edges between the boxes `id` gives (edges inside one box left out, parallel ones merged; dashed if
/// all of them are shortcuts).
fn write_edges(g: &Graph, s: &mut String, id: impl Fn(NodeIndex) -> String) {
    let mut edges: Vec<_> = (&g.g).edge_references().collect();
    edges.sort_by_key(|e| (e.target().index(), e.weight().port));
    let mut seen: HashMap<(String, String), bool> = HashMap::new();
    let mut order = vec![];
    for e in edges {
        let (a, b) = (id(e.source()), id(e.target()));
        if a == b {
            continue;
        }
        let key = (a, b);
        match seen.get_mut(&key) {
            Some(all_shortcuts) => *all_shortcuts &= e.weight().shortcut,
            None => {
                seen.insert(key.clone(), e.weight().shortcut);
                order.push(key);
            }
        }
    }
    for key in order {
        let attrs = if seen[&key] { " [style=dashed, color=\"#1f6fd0\", label=\"shortcut\"]" } else { "" };
        let _ = writeln!(s, "  {} -> {}{attrs};", key.0, key.1);
    }
}

/// Nodes grouped by block instance, nested as the instances are.
#[derive(Default)]
struct Cluster {
    instance: Option<Arc<BlockInstance>>,
    /// Nodes and sub-clusters in the order they first appear.
    items: Vec<Item>,
    children: HashMap<usize, usize>,
}

enum Item {
    Node(NodeIndex),
    Cluster(Cluster),
}

impl Cluster {
    fn insert(&mut self, chain: &[Arc<BlockInstance>], n: NodeIndex) {
        let Some((first, rest)) = chain.split_first() else {
            self.items.push(Item::Node(n));
            return;
        };
        let at = match self.children.get(&first.id) {
            Some(&i) => i,
            None => {
                let c = Cluster { instance: Some(first.clone()), ..Default::default() };
                self.items.push(Item::Cluster(c));
                self.children.insert(first.id, self.items.len() - 1);
                self.items.len() - 1
            }
        };
        if let Item::Cluster(c) = &mut self.items[at] {
            c.insert(rest, n);
        }
    }

    fn write(&self, g: &Graph, s: &mut String, depth: usize) {
        for item in &self.items {
            match item {
                Item::Node(n) => node_line(g, *n, s, depth),
                Item::Cluster(c) => {
                    let pad = "  ".repeat(depth);
                    let i = c.instance.as_ref().expect("a sub-cluster has its instance");
                    let _ = writeln!(s, "{pad}subgraph cluster_{} {{", i.id);
                    let _ = writeln!(
                        s,
                        "{pad}  label=\"{}\"; labeljust=l; style=\"rounded\"; color=\"#7a8ca8\"; fontname=\"monospace\"; \
                         fontsize=10;",
                        esc(&i.label())
                    );
                    c.write(g, s, depth + 1);
                    let _ = writeln!(s, "{pad}}}");
                }
            }
        }
    }
}
