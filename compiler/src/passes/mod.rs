//! The optimizer: a fixed sequence of named passes over the [`Graph`] and its [`Weights`].
//!
//! Each pass rewrites the graph and returns how many rewrites it made (0 = nothing changed). The
//! pipeline runs them in the order of [`PASSES`], repeating the fusion group until none of its passes
//! changes anything, and verifies the graph ([`Graph::verify`]) after every pass that changed it; a
//! failed verification names the pass. Data enters as the front end's graph and weights (the caller's
//! weights are never modified: folding writes new tensors into the optimizer's own copy) and leaves as
//! the optimized graph, where every conv, pool and dense node is one kernel of the back end.

mod rules;

use crate::graph::Graph;
use crate::weights::Weights;
use std::collections::BTreeMap;

/// One pass: a name (what `--dump-after` takes) and the rewrite.
pub struct Pass {
    pub name: &'static str,
    /// What the pass does, for `--help` and reports.
    pub about: &'static str,
    pub run: fn(&mut Graph, &mut Weights) -> usize,
}

/// The passes in pipeline order. `shortcut_projections` ran while the front end inferred shapes (an
/// add's shape depends on it); it is listed so that `--dump-after shortcut_projections` shows its result.
pub const PASSES: &[Pass] = &[
    Pass {
        name: "shortcut_projections",
        about: "1x1 strided convs on mismatched shortcuts (front end)",
        run: |_, _| 0,
    },
    Pass {
        name: "fold_padding",
        about: "ZeroPadding2D into the next conv (or max pool on non-negative input)",
        run: rules::fold_padding,
    },
    Pass {
        name: "fold_batch_norm",
        about: "BatchNorm into the preceding conv's weights and bias",
        run: rules::fold_batch_norm,
    },
    Pass {
        name: "fuse_residual_add",
        about: "add into the epilogue of a conv producing one operand",
        run: rules::fuse_residual_add,
    },
    Pass {
        name: "fuse_conv_relu",
        about: "relu into the conv epilogue (before or after its add)",
        run: rules::fuse_conv_relu,
    },
    Pass {
        name: "fuse_dense_activation",
        about: "relu/softmax into the preceding dense",
        run: rules::fuse_dense_activation,
    },
    Pass { name: "remove_dead_nodes", about: "nodes that do not reach the output", run: rules::remove_dead_nodes },
];

/// Passes after `fold_padding` are repeated together until none changes the graph.
const FIXED_POINT_FROM: usize = 2;

/// A pass broke a graph invariant: a compiler bug, reported with the pass's name.
#[derive(Debug, thiserror::Error)]
#[error("internal error: the graph is inconsistent after pass `{pass}`: {reason}")]
pub struct PassError {
    pub pass: &'static str,
    pub reason: String,
}

/// What the optimizer did.
#[derive(Clone, Debug, Default)]
pub struct OptReport {
    /// Rewrites per pass name, summed over fixed-point rounds.
    pub rewrites: BTreeMap<&'static str, usize>,
    pub nodes_before: usize,
    pub nodes_after: usize,
    /// The graph after the pass asked for with `dump_after`, and its text listing.
    pub dump: Option<String>,
    pub dump_graph: Option<Graph>,
}

/// Is `name` a pass?
pub fn is_pass(name: &str) -> bool {
    PASSES.iter().any(|p| p.name == name)
}

/// Runs the pipeline. `dump_after` names a pass whose resulting graph is captured in the report
/// (after its last run, for the fixed-point group).
pub fn optimize(
    graph: &Graph,
    weights: Weights,
    dump_after: Option<&str>,
) -> Result<(Graph, Weights, OptReport), PassError> {
    run_pipeline(PASSES, FIXED_POINT_FROM, graph, weights, dump_after)
}

/// Runs `passes[..fixed_from]` once each, then `passes[fixed_from..]` repeatedly until nothing changes.
pub fn run_pipeline(
    passes: &[Pass],
    fixed_from: usize,
    graph: &Graph,
    weights: Weights,
    dump_after: Option<&str>,
) -> Result<(Graph, Weights, OptReport), PassError> {
    let mut g = graph.clone();
    let mut w = weights;
    let mut rep = OptReport { nodes_before: g.g.node_count(), ..Default::default() };
    let run = |p: &Pass, g: &mut Graph, w: &mut Weights, rep: &mut OptReport| -> Result<usize, PassError> {
        let n = (p.run)(g, w);
        if n > 0 {
            g.verify().map_err(|reason| PassError { pass: p.name, reason })?;
        }
        *rep.rewrites.entry(p.name).or_default() += n;
        if dump_after == Some(p.name) {
            rep.dump = Some(g.dump());
            rep.dump_graph = Some(g.clone());
        }
        Ok(n)
    };
    for p in &passes[..fixed_from] {
        run(p, &mut g, &mut w, &mut rep)?;
    }
    loop {
        let mut changed = 0;
        for p in &passes[fixed_from..] {
            changed += run(p, &mut g, &mut w, &mut rep)?;
        }
        if changed == 0 {
            break;
        }
    }
    rep.nodes_after = g.g.node_count();
    Ok((g, w, rep))
}
