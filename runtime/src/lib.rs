//! resnetc's runtime: runs compiled models on `ndarray` tensors. It knows nothing of the compiler's graph or
//! of cranelift: a model arrives as a [`Program`] — a list of kernel calls ([`Step`]) with their buffers placed
//! in an activation arena, packed constants, and an opaque object keeping the kernels' machine code alive.
//!
//! - [`aligned`]: [`AlignedBuf`], the 64-byte-aligned `f32` buffers constants and arenas live in.
//! - [`abi`]: the calling convention of kernels ([`KernelFn`], [`KernelArgs`]): pointers in, task range in.
//! - [`pool`]: the persistent [`ThreadPool`] that splits each kernel call's task range over the cores.
//! - [`program`]: [`ProgramBuilder`] / [`Program`]: building, checking and running a program; input enters as
//!   an array with a batch dimension, results leave as a new array.

pub mod abi;
pub mod aligned;
pub mod pool;
pub mod program;

pub use abi::{KernelArgs, KernelFn};
pub use aligned::AlignedBuf;
pub use pool::ThreadPool;
pub use program::{Buf, ConstRef, Loc, Program, ProgramBuilder, Step};

/// Errors raised when building or running a program.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("input shape mismatch: expected {expected}, found {found}")]
    Shape { expected: String, found: String },
    #[error("invalid program: {0}")]
    BadStep(String),
    /// The thread pool could not be made (too many threads asked for, or the system refused a thread).
    #[error(transparent)]
    Pool(#[from] pool::PoolError),
}
