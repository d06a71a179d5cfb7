//! The memory plan: kernels in order, each activation's lifetime, and arena offsets with reuse.
//!
//! Input is the optimized graph (one kernel per conv/pool/dense node; `flatten` is a free reshape that
//! aliases its input's buffer; the model input stays in the caller's memory) and each kernel's work-buffer
//! size. Output is a [`Plan`]: the kernel order, and for every buffer its byte size, the steps it is live
//! and its offset in one arena (64-byte aligned). Offsets are assigned greedily, largest buffer first, at
//! the lowest address free for its whole lifetime; the plan reports the arena size beside the lower bound
//! (the largest total of simultaneously live buffers) and the sum of all buffers. Sizes are per batch item.

use crate::graph::Graph;
use crate::ops::Op;
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;

pub const ALIGN: usize = 64;

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferKind {
    /// A node's output.
    Activation,
    /// Scratch a kernel needs while it runs (e.g. packed input tiles).
    Work,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Buffer {
    /// The node that writes it (or whose kernel uses it, for work buffers).
    pub node: NodeIndex,
    pub kind: BufferKind,
    pub bytes: usize,
    /// First and last step (inclusive) it is live.
    pub first: usize,
    pub last: usize,
    pub offset: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Nodes run as kernels, in order.
    pub steps: Vec<NodeIndex>,
    pub buffers: Vec<Buffer>,
    /// Buffer index of each node's output (aliases resolved; the model input has none).
    pub value: HashMap<NodeIndex, usize>,
    /// Buffer index of each step's work buffer, if it needs one.
    pub work: HashMap<NodeIndex, usize>,
    pub arena_bytes: usize,
    pub lower_bound_bytes: usize,
    pub total_bytes: usize,
}

/// Nodes that need no kernel: their output is their input's buffer.
pub fn is_alias(op: &Op) -> bool {
    matches!(op, Op::Flatten)
}

/// Plans the graph. `work_bytes(node)` is the scratch a node's kernel needs (0 for none).
pub fn plan(g: &Graph, work_bytes: &dyn Fn(NodeIndex) -> usize) -> Plan {
    let mut p = Plan::default();
    let order = g.topo();
    let mut step_of: HashMap<NodeIndex, usize> = HashMap::new();
    // Where each node's value lives: itself, or (for aliases) its input's owner. None = the model input.
    let mut owner: HashMap<NodeIndex, Option<NodeIndex>> = HashMap::new();
    for &n in &order {
        let op = &g.node(n).op;
        if matches!(op, Op::Input { .. }) {
            owner.insert(n, None);
        } else if is_alias(op) {
            let src = g.inputs(n)[0];
            owner.insert(n, owner[&src]);
        } else {
            owner.insert(n, Some(n));
            step_of.insert(n, p.steps.len());
            p.steps.push(n);
        }
    }
    let last_step = p.steps.len().saturating_sub(1);
    for &n in &p.steps {
        let bytes = g.node(n).shape.iter().product::<usize>() * 4;
        p.value.insert(n, p.buffers.len());
        p.buffers.push(Buffer {
            node: n,
            kind: BufferKind::Activation,
            bytes,
            first: step_of[&n],
            last: step_of[&n],
            offset: 0,
        });
    }
    // Extend lifetimes to the last reader (through aliases); the output lives to the end.
    for &n in &order {
        for i in g.inputs(n) {
            if let Some(Some(o)) = owner.get(&i) {
                let reader = match step_of.get(&n) {
                    Some(&s) => s,
                    // An alias reads nothing itself; its readers extend the owner below.
                    None => continue,
                };
                let b = p.value[o];
                p.buffers[b].last = p.buffers[b].last.max(reader);
            }
        }
    }
    // Readers of aliases.
    for &n in &order {
        if let (Some(&s), ins) = (step_of.get(&n), g.inputs(n)) {
            for i in ins {
                if is_alias(&g.node(i).op) {
                    if let Some(Some(o)) = owner.get(&i) {
                        let b = p.value[o];
                        p.buffers[b].last = p.buffers[b].last.max(s);
                    }
                }
            }
        }
    }
    if let Some(Some(o)) = owner.get(&g.output) {
        let b = p.value[o];
        p.buffers[b].last = last_step;
        p.value.insert(g.output, b);
    }
    for &n in &order {
        if let Some(Some(o)) = owner.get(&n) {
            let b = p.value[o];
            p.value.insert(n, b);
        }
    }
    for &n in &p.steps {
        let w = work_bytes(n);
        if w > 0 {
            p.work.insert(n, p.buffers.len());
            let s = step_of[&n];
            p.buffers.push(Buffer { node: n, kind: BufferKind::Work, bytes: w, first: s, last: s, offset: 0 });
        }
    }
    assign_offsets(&mut p);
    p
}

fn assign_offsets(p: &mut Plan) {
    let mut idx: Vec<usize> = (0..p.buffers.len()).collect();
    idx.sort_by_key(|&i| (std::cmp::Reverse(p.buffers[i].bytes), p.buffers[i].first));
    let mut placed: Vec<usize> = vec![];
    for i in idx {
        let b = &p.buffers[i];
        let size = align(b.bytes);
        // Intervals already taken by buffers alive at the same time, by address.
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .map(|&j| &p.buffers[j])
            .filter(|o| o.first <= b.last && b.first <= o.last)
            .map(|o| (o.offset, o.offset + align(o.bytes)))
            .collect();
        busy.sort();
        // Best fit: the smallest gap that holds it, else the end.
        let mut best: Option<(usize, usize)> = None;
        let mut cursor = 0;
        for &(s, e) in &busy {
            if s >= cursor + size {
                let gap = s - cursor;
                if best.is_none_or(|(_, g)| gap < g) {
                    best = Some((cursor, gap));
                }
            }
            cursor = cursor.max(e);
        }
        let offset = best.map(|(o, _)| o).unwrap_or(cursor);
        p.buffers[i].offset = offset;
        placed.push(i);
    }
    p.arena_bytes = p.buffers.iter().map(|b| b.offset + align(b.bytes)).max().unwrap_or(0);
    p.total_bytes = p.buffers.iter().map(|b| align(b.bytes)).sum();
    let steps = p.buffers.iter().map(|b| b.last + 1).max().unwrap_or(0);
    p.lower_bound_bytes = (0..steps)
        .map(|t| p.buffers.iter().filter(|b| b.first <= t && t <= b.last).map(|b| align(b.bytes)).sum::<usize>())
        .max()
        .unwrap_or(0);
}

impl Plan {
    /// Checks that no two buffers alive at the same step overlap in the arena.
    pub fn verify(&self) -> Result<(), String> {
        for (i, a) in self.buffers.iter().enumerate() {
            for b in &self.buffers[i + 1..] {
                let time = a.first <= b.last && b.first <= a.last;
                let space = a.offset < b.offset + b.bytes && b.offset < a.offset + a.bytes;
                if time && space && a.bytes > 0 && b.bytes > 0 {
                    return Err(format!("buffers of {:?} and {:?} overlap while both are live", a.node, b.node));
                }
            }
            if a.offset % ALIGN != 0 {
                return Err(format!("buffer of {:?} is not {ALIGN}-byte aligned", a.node));
            }
        }
        Ok(())
    }
}
