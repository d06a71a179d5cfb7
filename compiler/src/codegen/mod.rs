//! Cranelift code generation: shape-specialized JIT kernels following the runtime's kernel ABI.
//!
//! What enters: a kernel family's plan (made by the lowering stage, `crate::lower`) and the layer's weights.
//! What leaves: a [`Kernel`] (packed constants, task count, per-thread work buffer, output shape, and the id
//! of its machine code) and, when the session finishes, the [`JitCode`] that owns the code.
//!
//! A [`Session`] owns one `JITModule` (ISA flags from `cranelift_native`, `opt_level=speed`, its code in one
//! reserved address range so that calls between its functions are always in reach) and one reused
//! `Context` / `FunctionBuilderContext`. [`Session::compile`] (in [`family`]) is the one entry: every kernel
//! family implements [`family::KernelFamily`] and the driver packs, compiles (or reuses) and returns the
//! kernel. Kernels whose plans are equal share one function (`Session::compile_once`), within a session and
//! across the sessions that share a [`CodeCache`] (the back end's parallel workers): ResNet-50's 56 kernels
//! need 24 compilations.
//!
//! Every kernel follows `resnetc_runtime::abi`: `fn(args: *const KernelArgs, work: *mut f32, start, end)`.
//! With `SessionOptions::keep_ir`, each kernel carries its cranelift IR as text (`--emit clif`).
//!
//! Shared pieces, each in one module: [`family`] (the interface and driver), [`gemm`] (the micro-kernel
//! tile, K loop and fused epilogue of every convolution family), [`transform`] (Winograd matrices and
//! transforms), `util` (IR helpers: loops, loads, copies). The families, which never import each other:
//! [`conv`] (direct/implicit GEMM), [`strassen`] (one level of Strassen for large 1x1 convolutions),
//! [`winograd`] (3x3 stride-1 as F(2x2)/F(4x4)), [`stem`] (7x7 stride-2 of few channels as F(3x3, 4x4)
//! on the polyphase input), [`dense`], [`pool`], [`elementwise`].
//!
//! Session helpers: cranelift has no prefetch instruction, so each session defines a tiny machine-code
//! function (`prefetcht0 [rdi]; ret`) with the `preserve_all` convention, which kernels streaming weights
//! from memory call from their K loops without disturbing any register (`Session::prefetch_import`); and
//! softmax calls the host function [`softmax_in_place`].

pub mod conv;
pub mod dense;
pub mod elementwise;
pub mod family;
pub mod gemm;
pub mod pool;
pub mod stem;
pub mod strassen;
pub mod transform;
mod util;
pub mod winograd;
pub mod x86;

#[cfg(test)]
pub(crate) mod tests;

use cranelift_codegen::ir::{types, AbiParam, Signature, UserFuncName};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::FunctionBuilderContext;
use cranelift_jit::{ArenaMemoryProvider, JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use resnetc_runtime::{AlignedBuf, Buf, KernelFn, ProgramBuilder, Step};

pub use family::{KernelFamily, LayerWeights};

/// Errors from code generation.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    #[error("cranelift: {0}")]
    Cranelift(String),
    #[error("invalid kernel `{name}`: {msg}")]
    Invalid { name: String, msg: String },
}

impl CodegenError {
    pub(crate) fn invalid(name: &str, msg: impl Into<String>) -> CodegenError {
        CodegenError::Invalid { name: name.to_string(), msg: msg.into() }
    }
}

fn cl<E: std::fmt::Display>(e: E) -> CodegenError {
    CodegenError::Cranelift(e.to_string())
}

/// Options of a code-generation session (none of them changes the generated code).
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Run cranelift's IR verifier on every function (on in tests).
    pub verify: bool,
    /// Keep each kernel's cranelift IR as text in [`Kernel::clif`].
    pub keep_ir: bool,
    /// Keep each kernel's machine code listing (VCode) in [`Kernel::asm`].
    pub keep_asm: bool,
}

#[allow(clippy::derivable_impls)] // `verify` differs between debug and release builds
impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { verify: cfg!(debug_assertions), keep_ir: false, keep_asm: false }
    }
}

/// In-place softmax over `n` floats (called from JIT code).
///
/// # Safety
/// `p` must be null or point to `n` writable floats.
pub unsafe extern "C" fn softmax_in_place(p: *mut f32, n: usize) {
    if p.is_null() || n == 0 {
        return;
    }
    // SAFETY: the kernel passes its own output buffer of `n` floats.
    let s = unsafe { std::slice::from_raw_parts_mut(p, n) };
    let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in s.iter_mut() {
        *v = (*v - m).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    s.iter_mut().for_each(|v| *v *= inv);
}

/// Address space reserved for one session's code: ResNet-152's kernels take a few MB; calls between a
/// session's functions are `rel32`, so they must stay within 2 GiB of each other.
const CODE_RESERVE: usize = 256 << 20;

/// Handle of a kernel: the session that compiled it (numbered process-wide) and the function in that session's
/// module; resolve it with the [`JitCode`] of that session ([`JitCode::kernel`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelId {
    session: u32,
    func: FuncId,
}

/// Session numbers, so that a kernel id names the module its code lives in.
static NEXT_SESSION: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// What the sessions compiling one model share ([`Session::with_cache`]): the kernels compiled so far, by what
/// their code depends on (see [`Session::compile_once`]), so that a layer shape is compiled once per model
/// rather than once per worker; and the code region of the wide micro-kernels those kernels call.
#[derive(Clone, Default)]
pub struct CodeCache {
    kernels: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Kernel>>>,
    region: std::sync::Arc<std::sync::OnceLock<std::sync::Arc<x86::CodeRegion>>>,
}

impl CodeCache {
    /// Distinct functions compiled under a key so far.
    pub fn len(&self) -> usize {
        self.kernels.lock().map_or(0, |m| m.len())
    }

    /// The code region of the wide micro-kernels, if any kernel called one.
    pub fn region(&self) -> Option<std::sync::Arc<x86::CodeRegion>> {
        self.region.get().cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One generated kernel and what the runtime needs to call it.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub name: String,
    pub id: KernelId,
    /// Packed constants the kernel reads through `KernelArgs::consts`; [`Kernel::step`] hands them to the
    /// program (64-byte aligned, in huge pages when large, so they are packed once in their final home).
    pub consts: AlignedBuf,
    /// The kernel's task count (`Step::ntasks`).
    pub ntasks: usize,
    /// Batch items one call computes (`Step::items`).
    pub items: usize,
    /// Per-thread work buffer size in floats (`Step::work_floats`); 0 if none.
    pub work_floats: usize,
    /// Whether the kernel reads `KernelArgs::input2` (a convolution's residual input).
    pub uses_input2: bool,
    /// Output shape of one batch item.
    pub out_shape: Vec<usize>,
    /// The function's cranelift IR, if `keep_ir`.
    pub clif: Option<String>,
    /// The function's machine code listing, if `keep_asm`.
    pub asm: Option<String>,
}

impl Kernel {
    /// A kernel running this one's code (same function, tasks, work buffer, output) under another name
    /// with other constants; without IR or assembly listings.
    fn same_code(&self, name: &str, consts: AlignedBuf) -> Kernel {
        Kernel {
            name: name.to_string(),
            id: self.id,
            consts,
            ntasks: self.ntasks,
            items: self.items,
            work_floats: self.work_floats,
            uses_input2: self.uses_input2,
            out_shape: self.out_shape.clone(),
            clif: None,
            asm: None,
        }
    }

    /// Moves this kernel's constants into `pb` (a second call adds none) and returns the runtime step calling
    /// it. `input2` is the residual input of a conv with `residual` (must be given exactly when
    /// [`Kernel::uses_input2`]).
    pub fn step(
        &mut self,
        code: &JitCode,
        pb: &mut ProgramBuilder,
        input: Buf,
        input2: Option<Buf>,
        output: Buf,
    ) -> Result<Step, CodegenError> {
        if input2.is_some() != self.uses_input2 {
            return Err(CodegenError::invalid(&self.name, "input2 must be given exactly for residual convolutions"));
        }
        let out_len: usize = self.out_shape.iter().product();
        if output.len != out_len {
            return Err(CodegenError::invalid(
                &self.name,
                format!("output buffer has {} floats, expected {out_len}", output.len),
            ));
        }
        let consts = (!self.consts.is_empty()).then(|| pb.add_consts_buf(std::mem::take(&mut self.consts)));
        Ok(Step {
            name: self.name.clone(),
            kernel: code.kernel(self.id),
            input: Some(input),
            input2,
            output,
            consts,
            ntasks: self.ntasks,
            items: self.items,
            work_floats: self.work_floats,
        })
    }
}

/// Owns the finalized JIT code (and the micro-kernels' code region its kernels call); drop it only after every
/// program using its kernels is gone.
pub struct JitCode {
    session: u32,
    module: Option<JITModule>,
    funcs: Vec<(FuncId, KernelFn)>,
    _region: Option<std::sync::Arc<x86::CodeRegion>>,
}

// SAFETY: after finalization the module is never touched again except to free its memory on drop (which
// needs `&mut self`); the function pointers it hands out point to immutable, executable memory.
unsafe impl Send for JitCode {}
unsafe impl Sync for JitCode {}

impl JitCode {
    /// The callable kernel for `id` (panics if `id` comes from another session, see [`JitCode::owns`]).
    pub fn kernel(&self, id: KernelId) -> KernelFn {
        assert!(self.owns(id), "kernel id from another session");
        self.funcs.iter().find(|(f, _)| *f == id.func).map(|(_, k)| *k).expect("kernel id of a finished session")
    }

    /// Whether `id` was compiled by the session this code comes from.
    pub fn owns(&self, id: KernelId) -> bool {
        id.session == self.session
    }
}

impl Drop for JitCode {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: the owner of JitCode guarantees no kernel runs any more (see the type's docs).
            unsafe { m.free_memory() };
        }
    }
}

/// A code-generation session: one JIT module, one reused builder context. See the module docs.
pub struct Session {
    pub(crate) module: JITModule,
    pub(crate) ctx: Context,
    pub(crate) fctx: FunctionBuilderContext,
    pub(crate) opts: SessionOptions,
    funcs: Vec<FuncId>,
    softmax_fn: Option<FuncId>,
    prefetch_fn: Option<FuncId>,
    count: u32,
    /// This session's number (see [`KernelId`]).
    number: u32,
    /// Kernels compiled so far by this session and the sessions sharing its cache.
    code: CodeCache,
}

impl Session {
    pub fn new() -> Result<Session, CodegenError> {
        Session::with_options(SessionOptions::default())
    }

    pub fn with_options(opts: SessionOptions) -> Result<Session, CodegenError> {
        Session::with_cache(opts, &CodeCache::default())
    }

    /// A session that reuses the code of kernels compiled by any session sharing `cache` (and adds its own):
    /// its kernels may then run code another session owns, so keep every such session's [`JitCode`] and
    /// resolve each kernel with the one that [owns](JitCode::owns) it.
    pub fn with_cache(opts: SessionOptions, cache: &CodeCache) -> Result<Session, CodegenError> {
        let mut fb = settings::builder();
        fb.set("opt_level", "speed").map_err(cl)?;
        fb.set("enable_verifier", if opts.verify { "true" } else { "false" }).map_err(cl)?;
        fb.set("use_colocated_libcalls", "false").map_err(cl)?;
        fb.set("is_pic", "false").map_err(cl)?;
        let isa = cranelift_native::builder().map_err(cl)?.finish(settings::Flags::new(fb)).map_err(cl)?;
        let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
        jb.symbol("resnetc_softmax", softmax_in_place as *const u8);
        // All of this session's functions in one reserved range: the kernels call the prefetch stub with
        // `rel32` calls, which the default provider (separate mappings, anywhere in the address space) could
        // place out of reach on a fragmented address space.
        let arena = ArenaMemoryProvider::new_with_size(CODE_RESERVE)
            .map_err(|e| CodegenError::Cranelift(format!("cannot reserve {CODE_RESERVE} bytes for code: {e}")))?;
        jb.memory_provider(Box::new(arena));
        let module = JITModule::new(jb);
        let ctx = module.make_context();
        Ok(Session {
            module,
            ctx,
            fctx: FunctionBuilderContext::new(),
            opts,
            funcs: Vec::new(),
            softmax_fn: None,
            prefetch_fn: None,
            count: 0,
            number: NEXT_SESSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            code: cache.clone(),
        })
    }

    /// The kernel ABI's signature: (args ptr, work ptr, start, end) -> ().
    pub(crate) fn kernel_signature(&self) -> Signature {
        let mut sig = self.module.make_signature();
        for _ in 0..4 {
            sig.params.push(AbiParam::new(types::I64));
        }
        sig
    }

    /// The kernel for `name` with constants `consts`: `build(self, consts)` compiles it, unless this session
    /// or one sharing its [`CodeCache`] already compiled one under `key` (a description of everything the
    /// code depends on: op, shapes, epilogue; the weights are not in the code but in the constants), whose
    /// function is then reused. ResNet-50 repeats most of its layer shapes (six identical stage-4 3x3 convs,
    /// five identical 1x1 pairs), and sharing their code cuts cranelift's share of compile time. Off when IR
    /// or assembly is kept, so every kernel keeps its own listing. Two sessions meeting a new key at the
    /// same time both compile it (the first to finish is kept); the back end orders its work so that
    /// repeats come after every first occurrence.
    pub(crate) fn compile_once(
        &mut self,
        key: String,
        name: &str,
        consts: AlignedBuf,
        build: impl FnOnce(&mut Session, AlignedBuf) -> Result<Kernel, CodegenError>,
    ) -> Result<Kernel, CodegenError> {
        let sharing = !self.opts.keep_ir && !self.opts.keep_asm;
        let code = self.code.clone();
        let cache = || code.kernels.lock().unwrap_or_else(|e| e.into_inner());
        if sharing {
            if let Some(k) = cache().get(&key) {
                return Ok(k.same_code(name, consts));
            }
        }
        let k = build(self, consts)?;
        if sharing {
            // Everything but the constants (not cloned: they can be tens of MB).
            cache().entry(key).or_insert_with(|| k.same_code(&k.name, AlignedBuf::zeroed(0)));
        }
        Ok(k)
    }

    /// Prepares `self.ctx` for a new kernel function; returns its id.
    pub(crate) fn begin(&mut self, name: &str) -> Result<FuncId, CodegenError> {
        self.module.clear_context(&mut self.ctx);
        let sig = self.kernel_signature();
        self.count += 1;
        let sym = format!("k{}_{}", self.count, sanitize(name));
        let id = self.module.declare_function(&sym, Linkage::Local, &sig).map_err(cl)?;
        self.ctx.func.signature = sig;
        self.ctx.func.name = UserFuncName::user(0, id.as_u32());
        Ok(id)
    }

    /// Builds the body of the function begun with [`Session::begin`] as a task kernel: `per_task(b, args,
    /// work, task)` emits the code of one task, given the four `KernelArgs` pointers (input, input2,
    /// output, consts) and the per-thread work buffer; it runs for every task of the call's range.
    pub(crate) fn build_task_loop(
        &mut self,
        per_task: impl FnOnce(
            &mut cranelift_frontend::FunctionBuilder,
            [cranelift_codegen::ir::Value; 4],
            cranelift_codegen::ir::Value,
            cranelift_codegen::ir::Value,
        ),
    ) {
        use cranelift_codegen::ir::InstBuilder;
        let fcfg = self.module.isa().frontend_config();
        let mut b = cranelift_frontend::FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
        let [a, work, start, end] = util::entry(&mut b);
        let args = util::load_args(&mut b, a);
        util::for_range(&mut b, start, end, &[], |b, t, _| {
            per_task(b, args, work, t);
            vec![]
        });
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(fcfg);
    }

    /// The code region of the wide micro-kernels, shared with the sessions sharing this one's cache (created on
    /// first use).
    pub(crate) fn code_region(&mut self) -> Result<std::sync::Arc<x86::CodeRegion>, CodegenError> {
        if let Some(r) = self.code.region.get() {
            return Ok(r.clone());
        }
        let r = std::sync::Arc::new(x86::CodeRegion::new().map_err(|e| CodegenError::Cranelift(e.to_string()))?);
        Ok(self.code.region.get_or_init(|| r).clone())
    }

    /// The signature of a wide micro-kernel: `(a, b, c, bias, residual)`, SystemV (`x86::GemmFn`).
    pub(crate) fn ukernel_signature(&self) -> Signature {
        let mut sig = Signature::new(cranelift_codegen::isa::CallConv::SystemV);
        for _ in 0..5 {
            sig.params.push(AbiParam::new(types::I64));
        }
        sig
    }

    /// The imported `resnetc_softmax(ptr, n)` helper, declared once per session.
    pub(crate) fn softmax_import(&mut self) -> Result<FuncId, CodegenError> {
        if let Some(f) = self.softmax_fn {
            return Ok(f);
        }
        let mut sig = self.module.make_signature();
        sig.params.push(AbiParam::new(types::I64));
        sig.params.push(AbiParam::new(types::I64));
        let f = self.module.declare_function("resnetc_softmax", Linkage::Import, &sig).map_err(cl)?;
        self.softmax_fn = Some(f);
        Ok(f)
    }

    /// A `prefetcht0 [arg]; ret` stub with the `preserve_all` convention, defined once per session.
    ///
    /// Cranelift has no prefetch instruction, and kernels that stream weights from DRAM with few FMAs per byte
    /// (tiny maps) cannot keep enough misses in flight with demand loads alone: the out-of-order window fills
    /// with FMAs first. A call that clobbers no register costs a few front-end slots and keeps every
    /// accumulator in place (measured: ~5.5 -> ~8.5 GB/s on a 2x2-map layer's weights).
    pub(crate) fn prefetch_import(&mut self) -> Result<FuncId, CodegenError> {
        if let Some(f) = self.prefetch_fn {
            return Ok(f);
        }
        let mut sig = Signature::new(cranelift_codegen::isa::CallConv::PreserveAll);
        sig.params.push(AbiParam::new(types::I64));
        let f = self.module.declare_function("resnetc_prefetch", Linkage::Local, &sig).map_err(cl)?;
        // prefetcht0 [rdi] (0F 18 /1, modrm 00 001 111); ret
        const STUB: [u8; 4] = [0x0F, 0x18, 0x0F, 0xC3];
        self.module.define_function_bytes(f, 16, &STUB, &[]).map_err(cl)?;
        self.prefetch_fn = Some(f);
        Ok(f)
    }

    /// Declares the session function `f` inside the function being built (after [`Session::begin`]).
    pub(crate) fn import_in_func(&mut self, f: FuncId) -> cranelift_codegen::ir::FuncRef {
        self.module.declare_func_in_func(f, &mut self.ctx.func)
    }

    /// Compiles the function in `self.ctx` (built after [`Session::begin`]) into the module.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn end(
        &mut self,
        id: FuncId,
        name: &str,
        consts: AlignedBuf,
        ntasks: usize,
        items: usize,
        work_floats: usize,
        uses_input2: bool,
        out_shape: Vec<usize>,
    ) -> Result<Kernel, CodegenError> {
        let clif = self.opts.keep_ir.then(|| self.ctx.func.display().to_string());
        self.ctx.set_disasm(self.opts.keep_asm);
        self.module.define_function(id, &mut self.ctx).map_err(|e| match e {
            cranelift_module::ModuleError::Compilation(cranelift_codegen::CodegenError::Verifier(v)) => {
                CodegenError::Cranelift(format!(
                    "verifier errors in `{name}`:\n{}",
                    cranelift_codegen::print_errors::pretty_verifier_error(&self.ctx.func, None, v)
                ))
            }
            e => CodegenError::Cranelift(format!("{e:?}")),
        })?;
        let asm = if self.opts.keep_asm { self.ctx.compiled_code().and_then(|c| c.vcode.clone()) } else { None };
        self.module.clear_context(&mut self.ctx);
        self.funcs.push(id);
        Ok(Kernel {
            name: name.to_string(),
            id: KernelId { session: self.number, func: id },
            consts,
            ntasks: ntasks.max(1),
            items: items.max(1),
            work_floats,
            uses_input2,
            out_shape,
            clif,
            asm,
        })
    }

    /// Finalizes all kernels (and makes the micro-kernels they call executable) and returns the code owner.
    pub fn finish(mut self) -> Result<JitCode, CodegenError> {
        self.module.finalize_definitions().map_err(cl)?;
        let region = self.code.region.get().cloned();
        if let Some(r) = &region {
            r.seal().map_err(|e| CodegenError::Cranelift(e.to_string()))?;
        }
        let funcs = self
            .funcs
            .iter()
            .map(|&f| {
                let p = self.module.get_finalized_function(f);
                // SAFETY: every function was declared with the kernel ABI's signature (see `kernel_signature`).
                (f, unsafe { std::mem::transmute::<*const u8, KernelFn>(p) })
            })
            .collect();
        Ok(JitCode { session: self.number, module: Some(self.module), funcs, _region: region })
    }
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}
