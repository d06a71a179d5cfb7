//! The calling convention between the runtime and JIT-compiled kernels.
//!
//! Every kernel is an `unsafe extern "C" fn(args: *const KernelArgs, work: *mut f32, start: usize, end: usize)`
//! ([`KernelFn`]). All shapes, strides and loop bounds are compile-time constants inside the kernel, so the
//! arguments only carry where the data is:
//!
//! - `args.input` / `args.input2`: the kernel's activations in (`input2` is a convolution's residual input;
//!   null when unused), NHWC `f32`, one batch item, densely packed.
//! - `args.output`: where the kernel writes its result (one batch item). It must not overlap either input.
//! - `args.consts`: the kernel's packed constants (weights, bias), 64-byte aligned, in the layout that the
//!   code generator chose for it (the kernel is the only reader).
//! - `work`: a per-thread scratch buffer of at least the kernel's `work_floats` floats, 64-byte aligned
//!   (e.g. for packing im2col tiles); two concurrent calls never share one.
//! - `[start, end)`: the range of the kernel's tasks to run, `0 <= start <= end <= ntasks`. Tasks are
//!   independent (they write disjoint outputs), so one kernel call can be split over threads by splitting
//!   the range; calling every task exactly once, in any grouping and order, computes the whole output.

/// Pointers handed to a kernel; see the module docs. `#[repr(C)]`: the JIT code reads the fields at
/// byte offsets 0, 8, 16, 24 ([`KernelArgs::OFFSET_INPUT`] etc.).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KernelArgs {
    pub input: *const f32,
    pub input2: *const f32,
    pub output: *mut f32,
    pub consts: *const f32,
}

impl KernelArgs {
    pub const OFFSET_INPUT: i32 = 0;
    pub const OFFSET_INPUT2: i32 = 8;
    pub const OFFSET_OUTPUT: i32 = 16;
    pub const OFFSET_CONSTS: i32 = 24;
}

/// A compiled kernel: see the module docs for the contract.
pub type KernelFn = unsafe extern "C" fn(args: *const KernelArgs, work: *mut f32, start: usize, end: usize);

/// Required alignment, in bytes, of constants, work buffers and arena buffers.
pub const ALIGN: usize = 64;
/// [`ALIGN`] in floats.
pub const ALIGN_FLOATS: usize = ALIGN / 4;

/// Rounds a float count up to a multiple of [`ALIGN_FLOATS`].
pub const fn align_floats(n: usize) -> usize {
    n.div_ceil(ALIGN_FLOATS) * ALIGN_FLOATS
}
