//! The reference interpreter: runs a [`Graph`] node by node with the plain ndarray ops of
//! [`crate::reference`]. It is the oracle every optimization and every generated kernel is checked
//! against, so it does nothing clever beyond freeing each activation after its last use.

use crate::graph::Graph;
use crate::ops::Op;
use crate::weights::Weights;
use ndarray::{ArrayD, ArrayViewD};
use std::collections::HashMap;

/// Runs the graph on a batch (`x` is `[N, H, W, C]`); returns the output node's value.
/// The caller checks `x`'s shape and that `weights` hold every tensor the graph needs.
pub fn run(graph: &Graph, weights: &Weights, x: ArrayViewD<f32>) -> ArrayD<f32> {
    let order = graph.topo();
    let mut uses: HashMap<_, usize> = order.iter().map(|&n| (n, graph.consumers(n).len())).collect();
    *uses.entry(graph.output).or_default() += 1;
    let mut values: HashMap<_, ArrayD<f32>> = HashMap::new();
    for n in order {
        let node = graph.node(n);
        let ins = graph.inputs(n);
        let out = if let Op::Input { .. } = node.op {
            x.to_owned()
        } else {
            let in_shape = &graph.node(ins[0]).shape;
            let ws: Vec<ArrayViewD<f32>> = node
                .op
                .weights(in_shape)
                .iter()
                .map(|(w, _)| {
                    weights
                        .get(&node.name, w)
                        .unwrap_or_else(|| panic!("weights were checked: {}.{w}", node.name))
                        .view()
                })
                .collect();
            let vs: Vec<ArrayViewD<f32>> = ins.iter().map(|i| values[i].view()).collect();
            crate::reference::eval(&node.op, &vs, &ws)
        };
        for i in ins {
            let u = uses.get_mut(&i).expect("every node counted");
            *u -= 1;
            if *u == 0 {
                values.remove(&i);
            }
        }
        values.insert(n, out);
    }
    values.remove(&graph.output).expect("the output was computed")
}
