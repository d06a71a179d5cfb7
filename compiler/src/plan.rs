//! The memory plan, made once on the lowered program: where every value lives, and how large the arena
//! and the per-thread work buffers are.
//!
//! What enters: a [`Lowered`] program (kernels in execution order over numbered values, each kernel's
//! per-thread work buffer from its plan). What leaves: a [`Plan`]: for every value its location — the
//! caller's input, the caller's output, or an offset in the activation arena — and the sizes the runtime
//! allocates, which are exactly [`Plan::arena_with_work_bytes`]: the activations of each batch item
//! (`arena_bytes`) times the items run together, plus one work buffer of `work_bytes` per thread (kernels
//! run one at a time, so one buffer of the largest kernel's size serves all of them).
//!
//! Each arena value is live from the kernel that writes it to the last kernel that reads it. Offsets are
//! assigned greedily, largest value first, at the lowest 64-byte-aligned address free for its whole
//! lifetime (best fit); the plan reports the arena beside its lower bound (the largest total of values
//! live at once) and the sum of all values. A kernel never shares memory with a value it reads, since both
//! are live at that kernel.

use crate::lower::{Lowered, ValueId};

pub const ALIGN: usize = 64;

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Where a value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The model input, in the caller's memory.
    Input,
    /// The model output, in the caller's memory.
    Output,
    /// The activation arena, at this byte offset per batch item.
    Arena(usize),
}

/// An arena value and its lifetime (kernel indices, inclusive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub value: ValueId,
    pub bytes: usize,
    pub first: usize,
    pub last: usize,
    pub offset: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// The place of every value, by value id.
    pub places: Vec<Place>,
    /// The arena values.
    pub buffers: Vec<Buffer>,
    /// Activation bytes per batch item: the arena's size.
    pub arena_bytes: usize,
    pub lower_bound_bytes: usize,
    pub total_bytes: usize,
    /// Bytes of one thread's work buffer (the largest kernel's, 64-byte aligned).
    pub work_bytes: usize,
    pub threads: usize,
}

/// Plans the memory of `l` for its rules' thread count.
pub fn plan(l: &Lowered) -> Plan {
    let mut p = Plan { places: vec![Place::Arena(0); l.values.len()], threads: l.rules.threads, ..Plan::default() };
    p.places[l.input] = Place::Input;
    p.places[l.output] = Place::Output;
    let mut buffer_of = vec![None; l.values.len()];
    for (i, k) in l.kernels.iter().enumerate() {
        if p.places[k.output] != Place::Output {
            buffer_of[k.output] = Some(p.buffers.len());
            let bytes = l.values[k.output].len() * 4;
            p.buffers.push(Buffer { value: k.output, bytes, first: i, last: i, offset: 0 });
        }
        for &v in &k.inputs {
            if let Some(b) = buffer_of[v] {
                p.buffers[b].last = p.buffers[b].last.max(i);
            }
        }
        p.work_bytes = p.work_bytes.max(align(k.work_bytes()));
    }
    assign_offsets(&mut p);
    for b in &p.buffers {
        p.places[b.value] = Place::Arena(b.offset);
    }
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
    /// Bytes the runtime allocates to run `items` batch items together on the plan's threads.
    pub fn arena_with_work_bytes(&self, items: usize) -> usize {
        self.arena_bytes * items + self.work_bytes * self.threads
    }

    /// Checks that no two buffers alive at the same kernel overlap, and alignment.
    pub fn verify(&self) -> Result<(), String> {
        for (i, a) in self.buffers.iter().enumerate() {
            for b in &self.buffers[i + 1..] {
                let time = a.first <= b.last && b.first <= a.last;
                let space = a.offset < b.offset + b.bytes && b.offset < a.offset + a.bytes;
                if time && space && a.bytes > 0 && b.bytes > 0 {
                    return Err(format!("values {} and {} overlap while both are live", a.value, b.value));
                }
            }
            if a.offset % ALIGN != 0 {
                return Err(format!("value {} is not {ALIGN}-byte aligned", a.value));
            }
            if a.offset + align(a.bytes) > self.arena_bytes {
                return Err(format!("value {} ends past the arena", a.value));
            }
        }
        Ok(())
    }
}
