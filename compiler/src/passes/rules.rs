//! The rewrite rules. Each function applies its rule everywhere it matches and returns the count.

use crate::graph::{Edge, Graph};
use crate::ops::{Activation, Op, Padding, Pads};
use crate::weights::Weights;
use ndarray::{ArrayD, Axis};
use petgraph::stable_graph::NodeIndex;
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::HashSet;

/// Moves every consumer of `old` (and the output role) to `new`, keeping ports and shortcut flags.
fn redirect_uses(g: &mut Graph, old: NodeIndex, new: NodeIndex) {
    let outs: Vec<(petgraph::stable_graph::EdgeIndex, NodeIndex, Edge)> =
        g.g.edges_directed(old, Direction::Outgoing).map(|e| (e.id(), e.target(), *e.weight())).collect();
    for (id, target, w) in outs {
        g.g.remove_edge(id);
        g.g.add_edge(new, target, w);
    }
    if g.output == old {
        g.output = new;
    }
}

/// The only consumer of `n`, if it has exactly one and is not the model output.
fn sole_consumer(g: &Graph, n: NodeIndex) -> Option<NodeIndex> {
    let c = g.consumers(n);
    (c.len() == 1 && n != g.output).then(|| c[0])
}

/// Is every value `n` produces known to be >= 0?
fn non_negative(g: &Graph, n: NodeIndex) -> bool {
    match &g.node(n).op {
        Op::Relu => true,
        Op::Conv(c) => (c.relu && !c.residual) || c.relu_after_add,
        Op::Dense { activation, .. } => *activation != Activation::Linear,
        Op::Softmax => true,
        Op::MaxPool(_) | Op::ZeroPad(_) | Op::GlobalMaxPool | Op::Flatten => {
            g.inputs(n).first().is_some_and(|&i| non_negative(g, i))
        }
        _ => false,
    }
}

fn add_pads(a: Pads, b: Pads) -> Pads {
    Pads { top: a.top + b.top, bottom: a.bottom + b.bottom, left: a.left + b.left, right: a.right + b.right }
}

/// ZeroPadding2D followed by a conv becomes the conv's explicit padding. Before a max pool only where the
/// input is known non-negative: the pool ignores padded cells, which equals zeros only then.
pub fn fold_padding(g: &mut Graph, _: &mut Weights) -> usize {
    let mut n_done = 0;
    for pad in g.topo() {
        let Op::ZeroPad(zp) = g.node(pad).op.clone() else { continue };
        let Some(next) = sole_consumer(g, pad) else { continue };
        let src = g.inputs(pad)[0];
        let padded = g.node(pad).shape.clone();
        let new_op = match &g.node(next).op {
            Op::Conv(c) if !c.residual => {
                let own = c.padding.pads(padded[0], padded[1], c.kernel, c.strides);
                let mut c2 = c.clone();
                c2.padding = Padding::Explicit(add_pads(zp, own));
                Op::Conv(c2)
            }
            Op::MaxPool(p) if non_negative(g, src) && p.padding != Padding::Same => {
                let own = p.padding.pads(padded[0], padded[1], p.size, p.strides);
                let mut p2 = p.clone();
                p2.padding = Padding::Explicit(add_pads(zp, own));
                Op::MaxPool(p2)
            }
            _ => continue,
        };
        g.g[next].op = new_op;
        let e = g.g.find_edge(pad, next).expect("pad feeds next");
        let w = g.g[e];
        g.g.remove_node(pad);
        g.g.add_edge(src, next, w);
        n_done += 1;
    }
    n_done
}

/// Conv → BatchNorm becomes one conv with scaled weights: s = γ/√(var+ε), W' = W·s per output channel,
/// b' = (b − μ)·s + β. Only where the conv feeds nothing but the BN (and is not an output) and has no
/// epilogue yet. The new tensors are stored under the fused node's name `<conv>+<bn>`.
pub fn fold_batch_norm(g: &mut Graph, w: &mut Weights) -> usize {
    let mut n_done = 0;
    for bn in g.topo() {
        let Op::BatchNorm { epsilon } = g.node(bn).op else { continue };
        let conv = g.inputs(bn)[0];
        let Op::Conv(c) = &g.node(conv).op else { continue };
        if c.relu || c.residual || c.relu_after_add || sole_consumer(g, conv) != Some(bn) {
            continue;
        }
        let (cname, bname) = (g.node(conv).name.clone(), g.node(bn).name.clone());
        let (true, Some(gamma), Some(beta), Some(mean), Some(var)) = (
            w.get(&cname, "kernel").is_some(),
            w.get(&bname, "gamma"),
            w.get(&bname, "beta"),
            w.get(&bname, "moving_mean"),
            w.get(&bname, "moving_variance"),
        ) else {
            continue;
        };
        let cout = c.filters;
        let scale: Vec<f32> = (0..cout).map(|o| gamma[[o]] / (var[[o]] + epsilon).sqrt()).collect();
        let bias = w.get(&cname, "bias");
        let b2: ArrayD<f32> = ArrayD::from_shape_fn(ndarray::IxDyn(&[cout]), |i| {
            let o = i[0];
            let b = bias.map_or(0.0, |b| b[[o]]);
            (b - mean[[o]]) * scale[o] + beta[[o]]
        });
        // The kernel is scaled in place when no other `Weights` shares it (the CLI hands its weights to the
        // optimizer), else in a copy (a caller's model keeps its own): ResNet-50 folds ~100 MB of kernels
        // here, and fresh memory costs more than the multiplications.
        let kkey = format!("{cname}.kernel");
        let kernel = w.get_mut(&kkey).expect("checked above");
        // [kh, kw, cin, cout], cout fastest: scale each contiguous row of cout (a loop the compiler vectorizes).
        match kernel.as_slice_mut() {
            Some(k) => {
                for row in k.chunks_exact_mut(cout) {
                    for (x, s) in row.iter_mut().zip(&scale) {
                        *x *= s;
                    }
                }
            }
            None => {
                for mut lane in kernel.lanes_mut(Axis(3)) {
                    for (x, s) in lane.iter_mut().zip(&scale) {
                        *x *= s;
                    }
                }
            }
        }
        let k2 = w.tensors.remove(&kkey).expect("checked above");
        let fused = format!("{cname}+{bname}");
        w.tensors.remove(&format!("{cname}.bias"));
        for key in ["gamma", "beta", "moving_mean", "moving_variance"] {
            w.tensors.remove(&format!("{bname}.{key}"));
        }
        w.tensors.insert(format!("{fused}.kernel"), k2);
        w.insert(format!("{fused}.bias"), b2);
        let shape = g.g[bn].shape.clone();
        let node = &mut g.g[conv];
        node.name = fused;
        if let Op::Conv(c) = &mut node.op {
            c.bias = true;
        }
        node.shape = shape;
        redirect_uses(g, bn, conv);
        g.g.remove_node(bn);
        n_done += 1;
    }
    n_done
}

/// add(conv, other) becomes the conv with a residual epilogue reading `other`, where the conv feeds
/// nothing but the add. Prefers the operand on the main (non-shortcut) edge.
pub fn fuse_residual_add(g: &mut Graph, _: &mut Weights) -> usize {
    let mut n_done = 0;
    for add in g.topo() {
        if !matches!(g.node(add).op, Op::Add) {
            continue;
        }
        let mut edges: Vec<(NodeIndex, Edge)> =
            g.g.edges_directed(add, Direction::Incoming).map(|e| (e.source(), *e.weight())).collect();
        if edges.len() != 2 {
            continue;
        }
        edges.sort_by_key(|(_, e)| (e.shortcut, e.port));
        let pick = edges.iter().position(|(src, _)| {
            matches!(&g.node(*src).op, Op::Conv(c) if !c.residual && !c.relu_after_add)
                && sole_consumer(g, *src) == Some(add)
        });
        let Some(i) = pick else { continue };
        let (conv, _) = edges[i];
        let (other, other_edge) = edges[1 - i];
        if let Op::Conv(c) = &mut g.g[conv].op {
            c.residual = true;
        }
        let e = g.g.find_edge(other, add).expect("operand edge");
        g.g.remove_edge(e);
        g.g.add_edge(other, conv, Edge { port: 1, shortcut: other_edge.shortcut });
        redirect_uses(g, add, conv);
        g.g.remove_node(add);
        n_done += 1;
    }
    n_done
}

/// relu after a conv becomes part of its epilogue: before the residual add if it has none, after it if it
/// has one.
pub fn fuse_conv_relu(g: &mut Graph, _: &mut Weights) -> usize {
    let mut n_done = 0;
    for relu in g.topo() {
        if !matches!(g.node(relu).op, Op::Relu) {
            continue;
        }
        let conv = g.inputs(relu)[0];
        if sole_consumer(g, conv) != Some(relu) {
            continue;
        }
        let Op::Conv(c) = &mut g.g[conv].op else { continue };
        if c.residual {
            if c.relu_after_add {
                continue;
            }
            c.relu_after_add = true;
        } else {
            if c.relu {
                continue;
            }
            c.relu = true;
        }
        redirect_uses(g, relu, conv);
        g.g.remove_node(relu);
        n_done += 1;
    }
    n_done
}

/// Dense → relu / softmax becomes one dense with that activation.
pub fn fuse_dense_activation(g: &mut Graph, _: &mut Weights) -> usize {
    let mut n_done = 0;
    for act in g.topo() {
        let a = match g.node(act).op {
            Op::Relu => Activation::Relu,
            Op::Softmax => Activation::Softmax,
            _ => continue,
        };
        let dense = g.inputs(act)[0];
        if sole_consumer(g, dense) != Some(act) {
            continue;
        }
        let Op::Dense { activation, .. } = &mut g.g[dense].op else { continue };
        if *activation != Activation::Linear {
            continue;
        }
        *activation = a;
        redirect_uses(g, act, dense);
        g.g.remove_node(act);
        n_done += 1;
    }
    n_done
}

/// Removes nodes that do not reach the output (never the input), and their weights.
pub fn remove_dead_nodes(g: &mut Graph, w: &mut Weights) -> usize {
    let mut live = HashSet::new();
    let mut stack = vec![g.output];
    while let Some(n) = stack.pop() {
        if live.insert(n) {
            stack.extend(g.g.neighbors_directed(n, Direction::Incoming));
        }
    }
    let dead: Vec<NodeIndex> = g.g.node_indices().filter(|n| !live.contains(n) && *n != g.input).collect();
    for &n in &dead {
        let name = g.node(n).name.clone();
        w.tensors.retain(|k, _| k.rsplit_once('.').map(|(node, _)| node) != Some(name.as_str()));
        g.g.remove_node(n);
    }
    dead.len()
}
