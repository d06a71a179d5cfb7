//! Programs: a list of kernel calls over an activation arena, and the object that runs them.
//!
//! A [`ProgramBuilder`] collects packed constants ([`ProgramBuilder::add_consts`] copies them,
//! [`ProgramBuilder::add_consts_buf`] takes over a whole [`AlignedBuf`]), steps ([`Step`]: one kernel
//! call with its input/output [`Buf`]s located in the model input, the model output or the arena) and the object
//! that owns the JIT code memory. [`ProgramBuilder::build`] checks every buffer against its region and returns a
//! [`Program`].
//!
//! Data enters through [`Program::run`] (an `ndarray` with a leading batch dimension) or [`Program::run_slice`];
//! the batch runs in chunks of up to [`Program::max_chunk`] items, and within a chunk the steps run in order,
//! each step once for all the chunk's items, its `items x ntasks` tasks split over the thread pool. Results
//! leave as a new array (or in the caller's slice). Kernels read the input in place and write the output in
//! place: only the steps' intermediate results live in the arena.
//!
//! Memory: [`Buf`] offsets are per batch item, as the memory planner computed them. In the arena, a buffer
//! at offset `o` of `len` floats holds item `i` of a chunk of `n` at `o * n + i * align_floats(len)` (64-byte
//! aligned items; scaling the planned offsets by `n` keeps buffers that never overlap apart); the per-thread
//! work buffers follow the activations. So a chunk of `n` items allocates exactly
//! [`Program::arena_bytes`]`(n)`: `n` times the planned activation bytes plus `threads` work buffers.
//!
//! A `Program` is `Send + Sync`; `run` may be called from several threads at once. Each call takes an
//! [`Arena`] from a free list behind a mutex, allocating a new one only when none is free and large enough,
//! so a steady stream of calls allocates nothing but its output array.

use crate::abi::{align_floats, KernelArgs, KernelFn, ALIGN, ALIGN_FLOATS};
use crate::pool::ThreadPool;
use crate::RuntimeError;
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::any::Any;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// A zero-initialized, 64-byte-aligned buffer of `f32`.
pub struct AlignedBuf {
    ptr: NonNull<f32>,
    len: usize,
    /// Bytes between the allocation's start and `ptr`.
    pad: usize,
    /// Whether the allocation is an anonymous mapping of `Self::map_len(len)` bytes (large buffers).
    mapped: bool,
}

/// Buffers from this size up are mapped directly, in transparent huge pages where the kernel allows.
const MAP_THRESHOLD: usize = 2 << 20;
const HUGE: usize = 2 << 20;

// SAFETY: AlignedBuf uniquely owns its allocation, like a Vec<f32>.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    pub fn zeroed(len: usize) -> AlignedBuf {
        if len == 0 {
            return AlignedBuf { ptr: NonNull::<[f32; 16]>::dangling().cast(), len, pad: 0, mapped: false };
        }
        #[cfg(target_os = "linux")]
        if len * 4 >= MAP_THRESHOLD {
            if let Some(b) = Self::mapped(len) {
                return b;
            }
        }
        // Allocated with the allocator's natural alignment and aligned by hand: the system allocator zeroes
        // over-aligned requests with a memset, but natural-alignment ones with calloc, which hands out fresh
        // pages already zero (the ~100 MB of ResNet-50's packed weights took 75 ms to memset).
        let layout = Self::layout(len);
        // SAFETY: non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        if base.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        let pad = base.align_offset(ALIGN);
        // SAFETY: `pad < ALIGN` and the allocation has `ALIGN` spare bytes.
        let ptr = unsafe { NonNull::new_unchecked(base.add(pad) as *mut f32) };
        AlignedBuf { ptr, len, pad, mapped: false }
    }

    fn map_len(len: usize) -> usize {
        (len * 4).next_multiple_of(HUGE) + HUGE
    }

    /// An anonymous mapping (zero pages, faulted in on first touch), 2 MB-aligned and advised to use huge
    /// pages: ResNet-50's ~100 MB of packed weights are faulted in as ~50 pages instead of ~25,000 (faults
    /// cost microseconds each on this VM: the copy into the program took 120 ms), and streaming them at run
    /// time misses the TLB less. `None` if the mapping fails (the caller falls back to the heap).
    #[cfg(target_os = "linux")]
    fn mapped(len: usize) -> Option<AlignedBuf> {
        let size = Self::map_len(len);
        // SAFETY: a fresh private anonymous mapping; checked for failure.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let base = base as *mut u8;
        let pad = base.align_offset(HUGE);
        // SAFETY: `pad < HUGE` and the mapping has `HUGE` spare bytes; madvise is only advice.
        unsafe {
            let p = base.add(pad) as *mut libc::c_void;
            let used = (len * 4).next_multiple_of(4096);
            libc::madvise(p, used.next_multiple_of(HUGE), libc::MADV_HUGEPAGE);
            // Fault everything in with one call (Linux >= 5.14; harmless where unknown): the buffer is
            // about to be written in full, and one call is much cheaper than ~50-25,000 page faults.
            libc::madvise(p, used, libc::MADV_POPULATE_WRITE);
            Some(AlignedBuf { ptr: NonNull::new_unchecked(base.add(pad) as *mut f32), len, pad, mapped: true })
        }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len * 4 + ALIGN, 16).expect("buffer too large")
    }

    pub fn from_slice(s: &[f32]) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(s.len());
        b.as_mut_slice().copy_from_slice(s);
        b
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_ptr(&self) -> *const f32 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut f32 {
        self.ptr.as_ptr()
    }

    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: owned, initialized allocation of `len` floats.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if self.mapped {
            // SAFETY: mapped in `mapped` with this length, `pad` bytes before `ptr`.
            unsafe {
                libc::munmap(
                    (self.ptr.as_ptr() as *mut u8).sub(self.pad) as *mut libc::c_void,
                    Self::map_len(self.len),
                );
            }
            return;
        }
        if self.len != 0 {
            // SAFETY: allocated in `zeroed` with this layout, `pad` bytes before `ptr`.
            unsafe { dealloc((self.ptr.as_ptr() as *mut u8).sub(self.pad), Self::layout(self.len)) }
        }
    }
}

impl Default for AlignedBuf {
    fn default() -> Self {
        AlignedBuf::zeroed(0)
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        self.as_mut_slice()
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> Self {
        AlignedBuf::from_slice(self.as_slice())
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} floats)", self.len)
    }
}

/// Where a step's buffer lives, per batch item (see the module docs for the layout of a batch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    /// The model input of the current batch item, at this float offset.
    Input(usize),
    /// The model output of the current batch item, at this float offset.
    Output(usize),
    /// The activation arena, at this float offset (keep it a multiple of 16 for aligned rows).
    Arena(usize),
}

/// A buffer a step reads or writes: a location and a length in floats (checked at build time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    pub loc: Loc,
    pub len: usize,
}

impl Buf {
    pub fn input(len: usize) -> Buf {
        Buf { loc: Loc::Input(0), len }
    }
    pub fn output(len: usize) -> Buf {
        Buf { loc: Loc::Output(0), len }
    }
    pub fn arena(offset: usize, len: usize) -> Buf {
        Buf { loc: Loc::Arena(offset), len }
    }
}

/// A range of the program's packed constants, returned by [`ProgramBuilder::add_consts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConstRef {
    /// 0: the shared buffer of [`ProgramBuilder::add_consts`]; n > 0: the n-th buffer handed over with
    /// [`ProgramBuilder::add_consts_buf`].
    pub block: usize,
    pub offset: usize,
    pub len: usize,
}

/// One kernel call.
#[derive(Clone, Debug)]
pub struct Step {
    /// For profiles and error messages.
    pub name: String,
    pub kernel: KernelFn,
    pub input: Option<Buf>,
    pub input2: Option<Buf>,
    pub output: Buf,
    pub consts: Option<ConstRef>,
    /// The kernel's task count: it is called with ranges covering `0..ntasks`.
    pub ntasks: usize,
    /// Floats of per-thread scratch the kernel needs.
    pub work_floats: usize,
}

/// Collects constants and steps; see the module docs.
pub struct ProgramBuilder {
    /// Packed constants, already in their final 64-byte-aligned home (filled up to `consts_len`), so that
    /// building the program copies no weights.
    consts: AlignedBuf,
    consts_len: usize,
    /// Constants handed over whole (no copy).
    blocks: Vec<AlignedBuf>,
    steps: Vec<Step>,
    input_shape: Vec<usize>,
    output_shape: Vec<usize>,
    arena_floats: usize,
    code: Option<Box<dyn Any + Send + Sync>>,
}

impl ProgramBuilder {
    /// A program mapping batch items of `input_shape` to batch items of `output_shape` (batch dim excluded).
    pub fn new(input_shape: &[usize], output_shape: &[usize]) -> ProgramBuilder {
        ProgramBuilder {
            consts: AlignedBuf::zeroed(0),
            consts_len: 0,
            blocks: Vec::new(),
            steps: Vec::new(),
            input_shape: input_shape.to_vec(),
            output_shape: output_shape.to_vec(),
            arena_floats: 0,
            code: None,
        }
    }

    /// Appends packed constants (64-byte aligned in the final program) and returns where they are.
    pub fn add_consts(&mut self, data: &[f32]) -> ConstRef {
        let offset = align_floats(self.consts_len);
        let end = offset + data.len();
        if end > self.consts.len() {
            self.grow_consts((end - self.consts_len).max(self.consts.len()));
        }
        self.consts.as_mut_slice()[offset..end].copy_from_slice(data);
        self.consts_len = end;
        ConstRef { block: 0, offset, len: data.len() }
    }

    /// Takes over a buffer of packed constants as it is (no copy: the code generator packs ~100 MB of
    /// ResNet-50 weights straight into their final home) and returns where they are.
    pub fn add_consts_buf(&mut self, buf: AlignedBuf) -> ConstRef {
        let len = buf.len();
        self.blocks.push(buf);
        ConstRef { block: self.blocks.len(), offset: 0, len }
    }

    /// Makes room for `more` floats (plus alignment) after the constants added so far.
    fn grow_consts(&mut self, more: usize) {
        let mut bigger = AlignedBuf::zeroed(align_floats(self.consts_len) + align_floats(more) + ALIGN_FLOATS);
        bigger.as_mut_slice()[..self.consts_len].copy_from_slice(&self.consts.as_slice()[..self.consts_len]);
        self.consts = bigger;
    }

    /// Reserves room for `floats` more constants, so adding ~100 MB of weights does not reallocate.
    pub fn reserve_consts(&mut self, floats: usize) -> &mut Self {
        if self.consts_len + floats > self.consts.len() {
            self.grow_consts(floats);
        }
        self
    }

    /// Sets the arena size in floats (what the memory planner computed).
    pub fn arena_floats(&mut self, n: usize) -> &mut Self {
        self.arena_floats = n;
        self
    }

    /// Keeps `code` (e.g. the JIT module owning the kernels' machine code) alive as long as the program.
    pub fn keep_alive(&mut self, code: Box<dyn Any + Send + Sync>) -> &mut Self {
        self.code = Some(code);
        self
    }

    /// Steps pushed so far.
    pub fn steps_len(&self) -> usize {
        self.steps.len()
    }

    pub fn push(&mut self, step: Step) -> &mut Self {
        self.steps.push(step);
        self
    }

    /// Checks every buffer and builds the program, running on `pool`.
    pub fn build(self, pool: Arc<ThreadPool>) -> Result<Program, RuntimeError> {
        let in_len: usize = self.input_shape.iter().product();
        let out_len: usize = self.output_shape.iter().product();
        let mut work_floats = 0;
        for s in &self.steps {
            let check = |b: &Buf, what: &str| -> Result<(), RuntimeError> {
                // Arena items are 64-byte aligned: a buffer takes `align_floats(len)` per item there.
                let (off, len, cap) = match b.loc {
                    Loc::Input(o) => (o, b.len, in_len),
                    Loc::Output(o) => (o, b.len, out_len),
                    Loc::Arena(o) => (o, align_floats(b.len), self.arena_floats),
                };
                match off.checked_add(len) {
                    Some(end) if end <= cap => Ok(()),
                    _ => Err(RuntimeError::BadStep(format!(
                        "step `{}`: {what} {:?} of {} floats does not fit in its region of {cap} floats",
                        s.name, b.loc, b.len
                    ))),
                }
            };
            if let Some(b) = &s.input {
                check(b, "input")?;
            }
            if let Some(b) = &s.input2 {
                check(b, "input2")?;
            }
            check(&s.output, "output")?;
            if matches!(s.output.loc, Loc::Input(_)) {
                return Err(RuntimeError::BadStep(format!("step `{}` writes the model input", s.name)));
            }
            for b in [s.input, s.input2].into_iter().flatten() {
                if overlaps(b, s.output) {
                    return Err(RuntimeError::BadStep(format!("step `{}`: output overlaps an input", s.name)));
                }
            }
            if let Some(c) = s.consts {
                let cap = match c.block {
                    0 => self.consts_len,
                    n => self.blocks.get(n - 1).map_or(0, |b| b.len()),
                };
                if c.offset + c.len > cap {
                    return Err(RuntimeError::BadStep(format!("step `{}`: constants out of range", s.name)));
                }
            }
            work_floats = work_floats.max(align_floats(s.work_floats));
        }
        let threads = pool.threads();
        Ok(Program {
            consts: self.consts,
            blocks: self.blocks,
            steps: self.steps,
            input_shape: self.input_shape,
            output_shape: self.output_shape,
            arena_floats: align_floats(self.arena_floats),
            work_floats,
            threads,
            arenas: Mutex::new(Vec::new()),
            allocated: Default::default(),
            pool,
            _code: self.code,
        })
    }
}

/// Whether two buffers overlap in a chunk of any size (arena items take `align_floats(len)`).
fn overlaps(a: Buf, b: Buf) -> bool {
    let range = |x: Buf| match x.loc {
        Loc::Input(o) => (0, o, o + x.len),
        Loc::Output(o) => (1, o, o + x.len),
        Loc::Arena(o) => (2, o, o + align_floats(x.len)),
    };
    let (ra, a0, a1) = range(a);
    let (rb, b0, b1) = range(b);
    ra == rb && a0 < b1 && b0 < a1 && a.len > 0 && b.len > 0
}

/// Activations and per-thread work buffers of one `run` call.
pub struct Arena {
    buf: AlignedBuf,
    /// Batch items whose activations fit.
    items: usize,
}

/// Activation bytes of one chunk at most (unless a single item needs more): a large batch runs in chunks,
/// so that its arena stays bounded (ResNet-50: 7.2 MB per image, 35 images per chunk).
pub const CHUNK_BYTES: usize = 256 << 20;

/// A runnable model: steps, constants, the code they call, and a pool of arenas. See the module docs.
pub struct Program {
    blocks: Vec<AlignedBuf>,
    consts: AlignedBuf,
    steps: Vec<Step>,
    input_shape: Vec<usize>,
    output_shape: Vec<usize>,
    arena_floats: usize,
    work_floats: usize,
    threads: usize,
    arenas: Mutex<Vec<Arena>>,
    /// Bytes of the largest arena allocated so far (see [`Program::allocated_arena_bytes`]).
    allocated: std::sync::atomic::AtomicUsize,
    pool: Arc<ThreadPool>,
    _code: Option<Box<dyn Any + Send + Sync>>,
}

/// Where the items of one chunk are: the model input and output of its first item (dense, `in_len` and
/// `out_len` floats per item), the arena base, and the item count.
#[derive(Clone, Copy)]
struct Chunk {
    input: *const f32,
    output: *mut f32,
    arena: *mut f32,
    items: usize,
    in_len: usize,
    out_len: usize,
}

// SAFETY: the pointers are only dereferenced by kernels, which write disjoint parts of the output (see
// `run_chunk`); the chunk is shared by the pool's threads for one step at a time.
unsafe impl Send for Chunk {}
unsafe impl Sync for Chunk {}

impl Chunk {
    /// The address of item `i` of `b`.
    ///
    /// # Safety
    /// `b` was checked against its region by `ProgramBuilder::build`, `i < items`, and the chunk's
    /// regions hold `items` items.
    unsafe fn at(&self, b: Buf, i: usize) -> *mut f32 {
        match b.loc {
            Loc::Input(o) => self.input.add(i * self.in_len + o) as *mut f32,
            Loc::Output(o) => self.output.add(i * self.out_len + o),
            Loc::Arena(o) => self.arena.add(o * self.items + i * align_floats(b.len)),
        }
    }
}

impl Program {
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }
    pub fn output_shape(&self) -> &[usize] {
        &self.output_shape
    }
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Batch items run together: as many as fit in [`CHUNK_BYTES`] of activations, at least one.
    pub fn max_chunk(&self) -> usize {
        (CHUNK_BYTES / (self.arena_floats * 4).max(1)).max(1)
    }

    /// Bytes of the arena a run of `batch` items allocates: the activations of one chunk of
    /// `min(batch, max_chunk)` items and the work buffers of all threads.
    pub fn arena_bytes(&self, batch: usize) -> usize {
        (self.arena_floats * batch.clamp(1, self.max_chunk()) + self.threads * self.work_floats) * 4
    }

    /// Bytes of the largest arena (activations and work buffers) this program has allocated so far: what the
    /// memory plan must account for.
    pub fn allocated_arena_bytes(&self) -> usize {
        self.allocated.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs a batch: `input` has shape `[N, ..input_shape]`; returns `[N, ..output_shape]`.
    pub fn run(&self, input: ArrayViewD<f32>) -> Result<ArrayD<f32>, RuntimeError> {
        let sh = input.shape();
        if sh.len() != self.input_shape.len() + 1 || sh[1..] != self.input_shape[..] {
            return Err(RuntimeError::Shape {
                expected: format!("[N, {}]", join(&self.input_shape)),
                found: format!("[{}]", join(sh)),
            });
        }
        let n = sh[0];
        let input = input.as_standard_layout();
        let mut oshape = vec![n];
        oshape.extend_from_slice(&self.output_shape);
        let mut out = ArrayD::<f32>::zeros(IxDyn(&oshape));
        self.run_slice(input.as_slice().expect("standard layout"), out.as_slice_mut().expect("standard layout"), n)?;
        Ok(out)
    }

    /// Runs `batch` items from a dense slice into a dense slice.
    pub fn run_slice(&self, input: &[f32], output: &mut [f32], batch: usize) -> Result<(), RuntimeError> {
        let in_len: usize = self.input_shape.iter().product();
        let out_len: usize = self.output_shape.iter().product();
        if input.len() != batch * in_len || output.len() != batch * out_len {
            return Err(RuntimeError::Shape {
                expected: format!("{} input and {} output floats", batch * in_len, batch * out_len),
                found: format!("{} and {}", input.len(), output.len()),
            });
        }
        let chunk = batch.clamp(1, self.max_chunk());
        let mut arena = self.take_arena(chunk);
        for first in (0..batch).step_by(chunk) {
            let items = chunk.min(batch - first);
            let c = Chunk {
                input: input[first * in_len..].as_ptr(),
                output: output[first * out_len..].as_mut_ptr(),
                arena: arena.buf.as_mut_ptr(),
                items,
                in_len,
                out_len,
            };
            // SAFETY: the build step checked every buffer against its region's size; the slices hold `items`
            // items from `first` on, the arena `chunk >= items`.
            unsafe { self.run_chunk(c, None) };
        }
        self.give_arena(arena);
        Ok(())
    }

    /// Runs one batch item (`input` of [1, ..input_shape]) and adds each step's wall time in seconds to
    /// `seconds` (one entry per step): a per-kernel profile.
    pub fn profile(&self, input: ArrayViewD<f32>, seconds: &mut [f64]) -> Result<(), RuntimeError> {
        let sh = input.shape();
        if sh.len() != self.input_shape.len() + 1 || sh[1..] != self.input_shape[..] || sh[0] != 1 {
            return Err(RuntimeError::Shape {
                expected: format!("[1, {}]", join(&self.input_shape)),
                found: format!("[{}]", join(sh)),
            });
        }
        if seconds.len() != self.steps.len() {
            return Err(RuntimeError::BadStep(format!("profile needs {} slots", self.steps.len())));
        }
        let input = input.as_standard_layout();
        let mut out = vec![0f32; self.output_shape.iter().product()];
        let mut arena = self.take_arena(1);
        let c = Chunk {
            input: input.as_slice().expect("standard layout").as_ptr(),
            output: out.as_mut_ptr(),
            arena: arena.buf.as_mut_ptr(),
            items: 1,
            in_len: self.input_shape.iter().product(),
            out_len: out.len(),
        };
        // SAFETY: as in run_slice; the shapes were checked above.
        unsafe { self.run_chunk(c, Some(seconds)) };
        self.give_arena(arena);
        Ok(())
    }

    /// An arena for chunks of `items` items: a free one large enough, or a new one.
    fn take_arena(&self, items: usize) -> Arena {
        let mut free = self.arenas.lock().unwrap_or_else(|e| e.into_inner());
        match free.iter().position(|a| a.items >= items) {
            Some(i) => free.swap_remove(i),
            None => {
                drop(free);
                let buf = AlignedBuf::zeroed(self.arena_bytes(items) / 4);
                self.allocated.fetch_max(buf.len() * 4, std::sync::atomic::Ordering::Relaxed);
                Arena { buf, items }
            }
        }
    }

    fn give_arena(&self, arena: Arena) {
        self.arenas.lock().unwrap_or_else(|e| e.into_inner()).push(arena);
    }

    /// Runs every step on the items of `c`, each step's `items x ntasks` tasks over the pool.
    unsafe fn run_chunk(&self, c: Chunk, mut times: Option<&mut [f64]>) {
        let work_base = c.arena.add(self.arena_floats * c.items) as usize;
        let consts = |s: &Step| {
            s.consts.map_or(std::ptr::null(), |r| {
                let base = if r.block == 0 { &self.consts } else { &self.blocks[r.block - 1] };
                base.as_ptr().add(r.offset)
            })
        };
        for (i, s) in self.steps.iter().enumerate() {
            let t0 = times.as_ref().map(|_| std::time::Instant::now());
            // An address, so that the closures below are `Sync`.
            let cst = consts(s) as usize;
            let args = |item: usize| KernelArgs {
                input: s.input.map_or(std::ptr::null(), |b| c.at(b, item) as *const f32),
                input2: s.input2.map_or(std::ptr::null(), |b| c.at(b, item) as *const f32),
                output: c.at(s.output, item),
                consts: cst as *const f32,
            };
            let (kernel, ntasks, wf) = (s.kernel, s.ntasks, self.work_floats);
            let total = ntasks * c.items;
            if total <= 1 || self.threads <= 1 {
                for item in 0..c.items {
                    kernel(&args(item), work_base as *mut f32, 0, ntasks);
                }
            } else {
                self.pool.parallel_for_indexed(total, &|t, thread| {
                    let work = (work_base + thread * wf * 4) as *mut f32;
                    let (item, task) = (t / ntasks, t % ntasks);
                    // SAFETY: each thread has its own work buffer; tasks write disjoint outputs.
                    unsafe { kernel(&args(item), work, task, task + 1) };
                });
            }
            if let (Some(t), Some(t0)) = (times.as_deref_mut(), t0) {
                t[i] += t0.elapsed().as_secs_f64();
            }
        }
    }
}

fn join(s: &[usize]) -> String {
    s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::ArrayD;

    /// A hand-written kernel: output[i] = input[i] * consts[0] + input2[i] (if present), tasks = elements.
    unsafe extern "C" fn axpy(args: *const KernelArgs, _work: *mut f32, start: usize, end: usize) {
        let a = &*args;
        for i in start..end {
            let mut v = *a.input.add(i) * *a.consts;
            if !a.input2.is_null() {
                v += *a.input2.add(i);
            }
            *a.output.add(i) = v;
        }
    }

    fn program(pool: Arc<ThreadPool>) -> Program {
        let n = 40;
        let mut b = ProgramBuilder::new(&[n], &[n]);
        let two = b.add_consts(&[2.0]);
        // One constant copied into the shared buffer, one handed over as its own buffer.
        let three = b.add_consts_buf(AlignedBuf::from_slice(&[3.0]));
        b.arena_floats(2 * n + 16);
        b.push(Step {
            name: "x2".into(),
            kernel: axpy,
            input: Some(Buf::input(n)),
            input2: None,
            output: Buf::arena(0, n),
            consts: Some(two),
            ntasks: n,
            work_floats: 0,
        });
        b.push(Step {
            name: "x3+".into(),
            kernel: axpy,
            input: Some(Buf::arena(0, n)),
            input2: Some(Buf::input(n)),
            output: Buf::output(n),
            consts: Some(three),
            ntasks: n,
            work_floats: 8,
        });
        assert_eq!((two.block, three.block, three.offset), (0, 1, 0));
        b.build(pool).unwrap()
    }

    #[test]
    fn large_buffers_are_mapped_zeroed_and_aligned() {
        for len in [1, 17, MAP_THRESHOLD / 4 + 3] {
            let mut b = AlignedBuf::zeroed(len);
            assert_eq!(b.as_ptr() as usize % ALIGN, 0);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 0.0));
            b[0] = 1.0;
            b[len - 1] = 5.0;
            let c = b.clone();
            assert_eq!((c[0], c[len - 1]), (if len == 1 { 5.0 } else { 1.0 }, 5.0));
        }
    }

    #[test]
    fn const_blocks_out_of_range_are_refused() {
        let mut b = ProgramBuilder::new(&[4], &[4]);
        let mut c = b.add_consts_buf(AlignedBuf::from_slice(&[1.0; 4]));
        c.len = 5;
        b.push(Step {
            name: "c".into(),
            kernel: axpy,
            input: Some(Buf::input(4)),
            input2: None,
            output: Buf::output(4),
            consts: Some(c),
            ntasks: 4,
            work_floats: 0,
        });
        let e = b.build(Arc::new(ThreadPool::new(1))).err().unwrap();
        assert!(e.to_string().contains("constants out of range"), "{e}");
    }

    #[test]
    fn runs_steps_in_order_over_a_batch() {
        let p = program(Arc::new(ThreadPool::new(2)));
        let x = ArrayD::from_shape_fn(IxDyn(&[3, 40]), |i| (i[0] * 40 + i[1]) as f32);
        let y = p.run(x.view()).unwrap();
        assert_eq!(y.shape(), &[3, 40]);
        for (a, b) in x.iter().zip(y.iter()) {
            assert_eq!(*b, a * 7.0);
        }
        assert!(p.run(ArrayD::zeros(IxDyn(&[1, 41])).view()).is_err());
    }

    #[test]
    fn program_is_send_sync_and_runs_concurrently() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Program>();
        let p = Arc::new(program(Arc::new(ThreadPool::new(2))));
        let hs: Vec<_> = (0..4)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        let x = ArrayD::from_elem(IxDyn(&[2, 40]), t as f32);
                        let y = p.run(x.view()).unwrap();
                        assert!(y.iter().all(|&v| v == 7.0 * t as f32));
                    }
                })
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
    }

    #[test]
    fn bad_buffers_are_refused() {
        let mut b = ProgramBuilder::new(&[4], &[4]);
        b.arena_floats(4);
        b.push(Step {
            name: "oops".into(),
            kernel: axpy,
            input: Some(Buf::arena(2, 4)),
            input2: None,
            output: Buf::output(4),
            consts: None,
            ntasks: 4,
            work_floats: 0,
        });
        let e = b.build(Arc::new(ThreadPool::new(1))).err().unwrap();
        assert!(e.to_string().contains("does not fit"), "{e}");
    }
}
