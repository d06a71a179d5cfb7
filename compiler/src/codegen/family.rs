//! One interface for every kernel family, and one driver that compiles any of them.
//!
//! A family's *plan* (e.g. `conv::ConvPlan`, `winograd::WinogradPlan`, `pool::WindowPoolPlan`) is
//! everything its generated code bakes in: shapes, tiling, epilogue. The lowering stage (`crate::lower`)
//! makes the plans; this module turns one into a [`Kernel`]:
//!
//! 1. [`KernelFamily::pack`] checks the layer's weights ([`LayerWeights`]) and packs them into the
//!    constants, in the layout the code reads;
//! 2. unless a kernel with an equal plan was compiled already (the plan's `Debug` text is the cache key,
//!    see [`Session::compile_once`]), [`KernelFamily::emit_task`] emits the code of one task inside the
//!    runtime's task loop ([`Session::build_task_loop`]), with the pointers of [`TaskEnv`];
//! 3. the result carries the task count, the per-thread work buffer and the output shape the plan reports.
//!
//! Adding a kernel family is adding one file with a plan type that implements [`KernelFamily`].

use super::x86::CodeRegion;
use super::{CodegenError, Kernel, Session};
use cranelift_codegen::ir::{FuncRef, SigRef, Value};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::Module;
use resnetc_runtime::AlignedBuf;
use std::cell::RefCell;

/// The pointers a task's code works with: `KernelArgs`' four, the per-thread work buffer, and the
/// session's helper functions the family asked for ([`KernelFamily::helpers`]).
#[derive(Clone, Copy)]
pub struct TaskEnv<'a> {
    pub inp: Value,
    /// `KernelArgs::input2`: the residual of a convolution, the second operand of an add.
    pub res: Value,
    pub out: Value,
    pub cst: Value,
    pub work: Value,
    /// The `prefetcht0` stub (`Session::prefetch_import`), if asked for.
    pub prefetch: Option<FuncRef>,
    /// The in-place softmax helper (`codegen::softmax_in_place`), if asked for.
    pub softmax: Option<FuncRef>,
    /// The wide micro-kernels' code region and call signature, if asked for (`gemm::call_wide`).
    pub wide: Option<&'a WideEnv>,
    /// Where emission records an error it cannot return through the builder's closures.
    pub error: &'a RefCell<Option<String>>,
}

impl TaskEnv<'_> {
    /// Records that the kernel cannot be compiled (the first reason wins); the driver returns it as an error.
    pub fn fail(&self, reason: String) {
        self.error.borrow_mut().get_or_insert(reason);
    }
}

/// What calls of wide micro-kernels need: the region their code goes into and their signature, imported
/// into the function being built.
pub struct WideEnv {
    pub region: std::sync::Arc<CodeRegion>,
    pub sig: SigRef,
}

/// Session helpers a family's code calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Helpers {
    pub prefetch: bool,
    pub softmax: bool,
    /// Wide micro-kernels (`gemm::call_wide`).
    pub ukernels: bool,
}

/// The per-channel weights of an inference-mode batch normalization (each `[C]`).
#[derive(Clone, Copy, Debug)]
pub struct BatchNormWeights<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub moving_mean: &'a [f32],
    pub moving_variance: &'a [f32],
    pub epsilon: f32,
}

/// A layer's weights in Keras layouts, flat: what [`KernelFamily::pack`] reads.
#[derive(Clone, Copy, Debug, Default)]
pub struct LayerWeights<'a> {
    /// Conv `[kh, kw, cin, cout]` or dense `[cin, units]`.
    pub kernel: Option<&'a [f32]>,
    pub bias: Option<&'a [f32]>,
    pub batch_norm: Option<BatchNormWeights<'a>>,
}

impl<'a> LayerWeights<'a> {
    /// A kernel (and optional bias).
    pub fn kernel(kernel: &'a [f32], bias: Option<&'a [f32]>) -> LayerWeights<'a> {
        LayerWeights { kernel: Some(kernel), bias, batch_norm: None }
    }

    /// The kernel, which must have `len` floats, and the bias, which must have `cout` floats exactly when
    /// `has_bias`.
    pub fn checked(&self, len: usize, has_bias: bool, cout: usize) -> Result<(&'a [f32], Option<&'a [f32]>), String> {
        let kernel = self.kernel.ok_or("no kernel weights")?;
        if kernel.len() != len {
            return Err(format!("kernel has {} floats, expected {len}", kernel.len()));
        }
        match (has_bias, self.bias) {
            (true, Some(b)) if b.len() == cout => Ok((kernel, Some(b))),
            (false, None) => Ok((kernel, None)),
            (true, _) => Err(format!("expected a bias of {cout} floats")),
            (false, Some(_)) => Err("bias given to a layer without bias".into()),
        }
    }
}

/// A kernel family's plan: see the module docs. Its `Debug` text must describe everything the code
/// depends on (it is the key under which kernels share compiled code).
pub trait KernelFamily: std::fmt::Debug + Sync {
    /// Tasks of one call (`Step::ntasks`); each writes its own part of the output.
    fn ntasks(&self) -> usize;
    /// Per-thread work buffer in floats (0 for none).
    fn work_floats(&self) -> usize {
        0
    }
    /// Output shape of one batch item.
    fn out_shape(&self) -> Vec<usize>;
    /// Whether the code reads `KernelArgs::input2`.
    fn reads_input2(&self) -> bool {
        false
    }
    /// Session helpers the code calls.
    fn helpers(&self) -> Helpers {
        Helpers::default()
    }
    /// Floats of packed constants [`KernelFamily::pack`] returns (0 for none).
    fn packed_floats(&self) -> usize {
        0
    }
    /// Checks `w` against the plan and packs it into the constants.
    fn pack(&self, _w: &LayerWeights) -> Result<AlignedBuf, String> {
        Ok(AlignedBuf::default())
    }
    /// Emits the code of task `task` (an i64 in `0..ntasks`); a failure is recorded with [`TaskEnv::fail`].
    fn emit_task(&self, b: &mut FunctionBuilder, env: &TaskEnv, task: Value);
}

impl Session {
    /// Compiles `plan` as kernel `name` with the layer weights `w` (see the module docs).
    pub fn compile(&mut self, name: &str, plan: &dyn KernelFamily, w: &LayerWeights) -> Result<Kernel, CodegenError> {
        let consts = plan.pack(w).map_err(|e| CodegenError::invalid(name, e))?;
        if consts.len() != plan.packed_floats() {
            return Err(CodegenError::invalid(
                name,
                format!("packed {} floats, the plan says {}", consts.len(), plan.packed_floats()),
            ));
        }
        self.compile_once(format!("{plan:?}"), name, consts, |s, consts| {
            let helpers = plan.helpers();
            // The helpers are declared in the module first, then referenced from the new function.
            let prefetch = if helpers.prefetch { Some(s.prefetch_import()?) } else { None };
            let softmax = if helpers.softmax { Some(s.softmax_import()?) } else { None };
            let region = if helpers.ukernels { Some(s.code_region()?) } else { None };
            let id = s.begin(name)?;
            let prefetch = prefetch.map(|f| s.import_in_func(f));
            let softmax = softmax.map(|f| s.import_in_func(f));
            let wide = region.map(|region| {
                let sig = s.ukernel_signature();
                WideEnv { region, sig: s.ctx.func.import_signature(sig) }
            });
            let error = RefCell::new(None);
            s.build_task_loop(|b, [inp, res, out, cst], work, task| {
                let env = TaskEnv { inp, res, out, cst, work, prefetch, softmax, wide: wide.as_ref(), error: &error };
                plan.emit_task(b, &env, task)
            });
            if let Some(e) = error.into_inner() {
                s.module.clear_context(&mut s.ctx);
                return Err(CodegenError::invalid(name, e));
            }
            s.end(id, name, consts, plan.ntasks(), plan.work_floats(), plan.reads_input2(), plan.out_shape())
        })
    }
}
