//! Wide-vector GEMM micro-kernels (AVX-512, AVX2), assembled at run time with `iced-x86`.
//!
//! Cranelift's x64 back end has 128-bit vectors only (see `shared/notes/wide-vectors.md`), so the innermost
//! GEMM loop of the wider tiers is machine code this module writes itself, as oneDNN does with Xbyak:
//!
//! - In: a [`GemmUkernel`] — tier, tile (`rows` x `nr`, `lanes` valid columns), K, byte strides, whether C
//!   accumulates, the fused [`Epilogue`] and an optional B prefetch distance. Every shape and stride is an
//!   immediate of the code, so each variant is its own function.
//! - Out: a function `extern "sysv64" fn(a, b, c, bias, residual)` ([`GemmFn`]) computing
//!   `C[i][j] (+)= sum_k A[i][k] * B[k][j]` for `i < rows`, `j < lanes`, then the epilogue, installed in a
//!   [`CodeRegion`] (executable memory of this module, W^X: written, then sealed read+execute) that hands out
//!   absolute addresses ([`GemmRef::addr`], for cranelift's `call_indirect` on an `iconst`) and typed
//!   pointers ([`CodeRegion::gemm_fn`], for Rust). The region also holds the `prefetcht0 [rdi]; ret` stub
//!   ([`CodeRegion::prefetch`]) and caches kernels by their description.
//! - [`disassemble`] lists a kernel's code (iced-x86's Intel formatter), [`fma_peak_gflops`] measures a tier's
//!   FMA throughput with register-only chains (what the kernels are measured against).
//!
//! # The kernel contract (what a caller must know)
//! - SystemV arguments: `rdi` = A, `rsi` = B, `rdx` = C, `rcx` = bias (floats `0..lanes`), `r8` = residual R
//!   (laid out as C, `c_row_stride` apart). Bias/residual may be null when the epilogue does not use them.
//!   The kernel writes only caller-saved state — rax, rdi, rsi, the flags, k1 and the vector registers — uses
//!   no stack, and ends with `vzeroupper`, so cranelift code (legacy-SSE moves) pays no AVX-SSE transition
//!   after it. Call it with cranelift's `SystemV` convention (which saves the caller's live vectors).
//! - A: `A[i][k]` at `a + i*a_row_stride + 4k`; B: `B[k][j]` at `b + k*b_k_stride + 4j`, `nr` floats per k, all
//!   read (pack the panel `nr` wide; pad columns past the layer's N with anything finite — they only feed
//!   columns that are never stored). C, bias and R: only columns `< lanes` are read or written (masked loads and
//!   stores, which never fault on the masked lanes), so the last panel of a layer may end at a page end.
//! - Alignment: any 4-byte alignment works everywhere. B is read with full-vector loads: pack it 64-byte
//!   aligned (a 4-byte misaligned B cost ~5 % in the prototype). A is only broadcast from, C rows are touched
//!   once per call: their alignment does not matter (NHWC rows of odd channel counts are fine).
//! - Limits (checked by [`GemmUkernel::validate`]): strides are multiples of 4 bytes; every displacement the
//!   code uses must fit in 31 bits: `(rows-1)*a_row_stride + 4*s`, `s*b_k_stride + prefetch_b + 4*nr` and
//!   `(rows-1)*c_row_stride + 4*nr`, where `s` (at most 15) is the K steps addressed from one pointer value;
//!   `k <= MAX_K` (16M steps).
//! - Semantics: `y = acc (+ bias[j])`, `relu`, `(+ R[i][j])`, `relu_after_add`, in that order, exactly as
//!   `ops::Conv` documents the fused epilogue; relu is `max(0, x)` with x as the second source of `vmaxps`, so
//!   relu(NaN) = NaN and ±Inf flow through as IEEE arithmetic says (Keras semantics). With `accumulate` the
//!   kernel adds to C (K blocking: the first block without, later ones with; the epilogue on the last).
//!   The sum over k runs in order; tiles with fewer than 8 accumulators split it over up to 8 interleaved
//!   partial sums (to hide the FMA latency) added at the end.
//!
//! # Code shape and tiles (measured on this project's Xeon, Sapphire/Emerald Rapids class, 2 x 512-bit FMA)
//! Per K step: `nv` B vector loads, then per row one `vbroadcastss` of A into a register and `nv`
//! `vfmadd231ps` (the accumulator is the destination: no register moves); one-vector AVX-512 tiles use the
//! embedded broadcast instead. Steps are unrolled by 4 (2 and 8 measured no better), A and B advance by
//! pointer increments, and every address inside an iteration is a displacement. No B is loaded ahead, so
//! nothing past the panel is read and no step needs peeling. Numbers from `taskset -c 1 cargo bench -p
//! resnetc-compiler --bench ukernel` (GFLOP/s by thread CPU time, medians of 9 interleaved samples, two runs,
//! a machine shared with other builds; the tier's measured FMA peak = 100 %):
//!
//! | tier, tile | alone, data in L1 (K = 128 / 256) | ResNet-50 1x1 layers of stages 2-4 as GEMMs |
//! |---|---|---|
//! | AVX-512 14x32 (preferred) | 96-98 % | 87-93 % |
//! | AVX-512 6x64 | 97 % | 89-95 %: 0-3 % above 14x32 on most layers, within the noise |
//! | AVX-512 12x32, 8x48 | 95-98 % | 86-94 % |
//! | AVX-512 28x16 (embedded broadcast) | 97-98 % | 49-89 %: its 28-row A tile leaves L1 |
//! | AVX2 6x16 (preferred) | 93 % | 87-91 %, 1.8-2.3x the cranelift f32x4 convolution |
//! | AVX2 4x24 / 12x8 | 93 % / 91 % | 84-90 % / 82-85 % |
//!
//! Remainder tiles in L1 (K = 256, two runs): AVX-512 7x32 83-97 %, 4x32 83 %, 4x64 82-98 %, 1x32 64 %,
//! 1x64 32-35 % (a one-row tile reuses no B: its 64 KB panel streams from L2); AVX2 4x16 78-84 %, 1x16
//! 62-77 %. Stage 5 (7x7 maps, M = 49, 4 MB of weights from L3): 14x32 reaches 87-89 % with `prefetch_b`
//! 2048 or 8192 bytes and 55-87 % without; 6x64 66-80 %; AVX2 6x16 77-86 % with 2048 (8192 is worse there).
//!
//! AVX-512 prefers 14x32 over 6x64 (marginally faster in the stage 2-4 GEMMs, within the noise) because
//! ResNet's maps are 56, 28, 14 and 7 wide: M splits into full 14-row tiles (a 7-row remainder at 7x7) where
//! 6-row tiles leave a remainder in every layer (a 1-row one at 7x7); the 32-wide panel halves the N
//! granularity (threads, tails); its K x 32 B panel stays in L1 up to K = 256 (blocking used: K blocks of
//! 256, M blocks of 4 row tiles, the B panel reused across the row tiles of a block); and it streams weights
//! better (stage 5, above). Calling a kernel through its pointer costs ~2 ns (a 1x16, K = 1 kernel);
//! assembling one ~40 us (14x32, K = 256: 2 KB of code; AVX2 6x16 ~18 us).
//!
//! # Use from cranelift code
//! ```text
//! let region = Arc::new(CodeRegion::new()?);              // one per compiled model; keep it alive with the code
//! let k = region.gemm(&GemmUkernel { .. })?;              // assembled once per description; address final now
//! // in the task loop: sig = SystemV (a, b, c, bias, residual: i64) -> ()
//! let f = builder.ins().iconst(types::I64, k.addr() as i64);
//! builder.ins().call_indirect(sig_ref, f, &[a, b, c, bias, residual]);
//! let pf = region.prefetch()?;                            // likewise, with a PreserveAll (p: i64) signature
//! region.seal()?;                                         // before anything runs: the pages become executable
//! ```

#[cfg(target_arch = "x86_64")]
mod asm;
mod region;
#[cfg(all(test, target_arch = "x86_64", target_os = "linux"))]
mod tests;

pub use region::{CodeRegion, GemmRef, PrefetchRef, DEFAULT_REGION_BYTES};

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// A CPU tier: which vector width the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// 512-bit zmm vectors, 32 registers, opmasks: needs AVX-512F (nothing of VL/BW/DQ is used).
    Avx512,
    /// 256-bit ymm vectors, 16 registers: needs AVX2 and FMA.
    Avx2,
    /// The portable path: cranelift's own f32x4 kernels (no micro-kernels of this module).
    F32x4,
}

/// The generated kernel's type. `bias` and `residual` may be null when the epilogue does not read them.
#[cfg(target_arch = "x86_64")]
pub type GemmFn =
    unsafe extern "sysv64" fn(a: *const f32, b: *const f32, c: *mut f32, bias: *const f32, residual: *const f32);
/// (Other architectures have no kernels; the type exists so that callers need no `cfg`.)
#[cfg(not(target_arch = "x86_64"))]
pub type GemmFn =
    unsafe extern "C" fn(a: *const f32, b: *const f32, c: *mut f32, bias: *const f32, residual: *const f32);

/// The prefetch stub's type: `prefetcht0 [p]; ret`. It touches no register but `rip`/`rsp`, so cranelift
/// code may also call it with the `preserve_all` convention.
#[cfg(target_arch = "x86_64")]
pub type PrefetchFn = unsafe extern "sysv64" fn(p: *const u8);
#[cfg(not(target_arch = "x86_64"))]
pub type PrefetchFn = unsafe extern "C" fn(p: *const u8);

/// The largest K a kernel accepts (a named limit; the loop counter itself would take any).
pub const MAX_K: usize = 1 << 24;

/// The largest displacement an instruction of a kernel may carry (x86 displacements are signed 32-bit).
const MAX_DISP: usize = (1 << 31) - 1;

impl Isa {
    /// Every tier, widest first.
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::F32x4];

    /// The name used by `--isa` and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::F32x4 => "f32x4",
        }
    }

    /// The widest tier this CPU and platform run, detected once per process.
    pub fn detect() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| Isa::ALL.into_iter().find(|i| i.check_supported().is_ok()).unwrap_or(Isa::F32x4))
    }

    /// The tiers this CPU and platform run, widest first (always ends with `F32x4`).
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.check_supported().is_ok()).collect()
    }

    /// Whether this tier has micro-kernels here (`Avx512`, `Avx2`); `F32x4` is cranelift's own code.
    pub fn is_wide(self) -> bool {
        self != Isa::F32x4
    }

    /// CPU features the tier needs.
    pub fn required_features(self) -> &'static [&'static str] {
        match self {
            Isa::Avx512 => &["avx512f"],
            Isa::Avx2 => &["avx2", "fma"],
            Isa::F32x4 => &[],
        }
    }

    /// Ok if this process can run the tier's kernels; else an error naming the tier and what is missing.
    pub fn check_supported(self) -> Result<(), UkernelError> {
        if !self.is_wide() {
            return Ok(());
        }
        if !cfg!(all(target_arch = "x86_64", target_os = "linux")) {
            return Err(UkernelError::Unsupported {
                isa: self,
                missing: format!(
                    "an x86_64 Linux host (this is {} {}; the micro-kernels are x86-64 code in mmap'ed memory)",
                    std::env::consts::ARCH,
                    std::env::consts::OS
                ),
            });
        }
        let missing: Vec<&str> = self.required_features().iter().copied().filter(|f| !cpu_has(f)).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(UkernelError::Unsupported { isa: self, missing: format!("the CPU features {}", missing.join(", ")) })
        }
    }

    /// Floats per vector register: 16, 8, 4.
    pub fn vector_floats(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
            Isa::F32x4 => 4,
        }
    }

    /// Vector registers of the tier (32 zmm, 16 ymm, 16 xmm).
    pub fn vector_registers(self) -> usize {
        match self {
            Isa::Avx512 => 32,
            Isa::F32x4 | Isa::Avx2 => 16,
        }
    }

    /// The most tile rows a kernel of panel width `nr` can have (0 if `nr` is not a positive multiple of the
    /// vector width, or too wide): `rows * nr/vw` accumulators, `nr/vw` B vectors and one broadcast register
    /// must fit in the register file. AVX-512: nr 16/32/48/64 -> 30/14/9/6 rows; AVX2: nr 8/16/24/32 ->
    /// 14/6/4/2 rows. `F32x4` has no micro-kernels here: 0.
    pub fn max_rows(self, nr: usize) -> usize {
        let vw = self.vector_floats();
        if !self.is_wide() || nr == 0 || !nr.is_multiple_of(vw) {
            return 0;
        }
        let nv = nr / vw;
        self.vector_registers().saturating_sub(nv + 1) / nv
    }

    /// The tile (rows, nr) to use for large GEMMs on this tier, chosen by measurement (see the module docs
    /// and `benches/ukernel.rs`). `F32x4`: cranelift's conv micro-kernel tile.
    pub fn preferred_tile(self) -> (usize, usize) {
        match self {
            // 14x32: 28 zmm accumulators; see the module docs for the measurements against 6x64, 8x48,
            // 12x32 and 28x16, and why 14x32 over 6x64.
            Isa::Avx512 => (14, 32),
            // The classic 6x16 (12 ymm accumulators, 2 B vectors, 1 broadcast).
            Isa::Avx2 => (6, 16),
            Isa::F32x4 => (super::gemm::MR, super::gemm::NR),
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = UkernelError;

    /// `avx512`, `avx2`, `f32x4`, or `auto` (the widest this machine runs, [`Isa::detect`]). Does not check
    /// that the CPU has the tier: call [`Isa::check_supported`].
    fn from_str(s: &str) -> Result<Isa, UkernelError> {
        match s {
            "auto" => Ok(Isa::detect()),
            _ => Isa::ALL.into_iter().find(|i| i.name() == s).ok_or_else(|| UkernelError::ParseIsa(s.to_string())),
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn cpu_has(feature: &str) -> bool {
    match feature {
        "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
        "avx2" => std::arch::is_x86_feature_detected!("avx2"),
        "fma" => std::arch::is_x86_feature_detected!("fma"),
        "avx" => std::arch::is_x86_feature_detected!("avx"),
        _ => false,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has(_feature: &str) -> bool {
    false
}

/// What the kernel does after the K loop, in this order: `+ bias[j]`, relu, `+ R[i][j]`, relu.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Epilogue {
    pub bias: bool,
    pub relu: bool,
    pub residual: bool,
    pub relu_after_add: bool,
}

impl Epilogue {
    /// No epilogue: C = A*B (or C + A*B).
    pub const NONE: Epilogue = Epilogue { bias: false, relu: false, residual: false, relu_after_add: false };
}

/// One micro-kernel variant: everything its code depends on (the cache key of [`CodeRegion::gemm`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmUkernel {
    /// `Avx512` or `Avx2`.
    pub isa: Isa,
    /// Output rows of the tile, `1..=isa.max_rows(nr)`; partial row tiles are kernels of their own.
    pub rows: usize,
    /// Panel width in floats (a multiple of the vector width): the packed B panel's width.
    pub nr: usize,
    /// Valid output columns, `1..=nr`: C, bias and R columns past it are neither read nor written, and the
    /// vectors wholly past it are not computed.
    pub lanes: usize,
    /// K steps, `1..=MAX_K`.
    pub k: usize,
    /// Bytes between rows of A (`A[i][k]` at `a + i*a_row_stride + 4k`).
    pub a_row_stride: usize,
    /// Bytes between consecutive k of the B panel (normally `4*nr`).
    pub b_k_stride: usize,
    /// Bytes between rows of C and of the residual R; at least `4*lanes` when `rows > 1`.
    pub c_row_stride: usize,
    /// false: C = A*B (+ epilogue); true: C = C + A*B (+ epilogue).
    pub accumulate: bool,
    pub epilogue: Epilogue,
    /// `prefetcht0` B this many bytes ahead while streaming it (weights coming from DRAM); one prefetch per
    /// 64 bytes of B read.
    pub prefetch_b: Option<usize>,
}

impl GemmUkernel {
    /// A plain dense-panel kernel: B packed `nr` wide (`b_k_stride = 4*nr`), A rows `k` floats apart and C
    /// rows `lanes` floats apart, no accumulation, no epilogue, no prefetch.
    pub fn dense(isa: Isa, rows: usize, nr: usize, lanes: usize, k: usize) -> GemmUkernel {
        GemmUkernel {
            isa,
            rows,
            nr,
            lanes,
            k,
            a_row_stride: 4 * k,
            b_k_stride: 4 * nr,
            c_row_stride: 4 * lanes,
            accumulate: false,
            epilogue: Epilogue::NONE,
            prefetch_b: None,
        }
    }

    /// Checks every field against the limits the code has (see the module docs); the error names the field,
    /// what was expected and what was found.
    pub fn validate(&self) -> Result<(), UkernelError> {
        let bad = |field: &'static str, msg: String| Err(UkernelError::Invalid { field, msg });
        if !self.isa.is_wide() {
            return bad("isa", format!("expected avx512 or avx2, found {} (cranelift's own kernels)", self.isa));
        }
        let vw = self.isa.vector_floats();
        if self.nr == 0 || !self.nr.is_multiple_of(vw) || self.isa.max_rows(self.nr) == 0 {
            let widest = (1..).map(|n| n * vw).take_while(|&n| self.isa.max_rows(n) > 0).last().unwrap_or(vw);
            return bad(
                "nr",
                format!("expected a multiple of {vw} floats from {vw} to {widest} on {}, found {}", self.isa, self.nr),
            );
        }
        let max_rows = self.isa.max_rows(self.nr);
        if self.rows == 0 || self.rows > max_rows {
            return bad(
                "rows",
                format!("expected 1..={max_rows} for nr = {} on {}, found {}", self.nr, self.isa, self.rows),
            );
        }
        if self.lanes == 0 || self.lanes > self.nr {
            return bad("lanes", format!("expected 1..={} (nr), found {}", self.nr, self.lanes));
        }
        if self.k == 0 || self.k > MAX_K {
            return bad("k", format!("expected 1..={MAX_K}, found {}", self.k));
        }
        for (field, v) in
            [("a_row_stride", self.a_row_stride), ("b_k_stride", self.b_k_stride), ("c_row_stride", self.c_row_stride)]
        {
            if v % 4 != 0 {
                return bad(field, format!("expected a multiple of 4 bytes, found {v}"));
            }
        }
        if self.rows > 1 && self.c_row_stride < 4 * self.lanes {
            return bad(
                "c_row_stride",
                format!(
                    "expected at least {} bytes (4 * lanes: rows of C must not overlap), found {}",
                    4 * self.lanes,
                    self.c_row_stride
                ),
            );
        }
        if self.prefetch_b == Some(0) {
            return bad(
                "prefetch_b",
                "expected a positive distance in bytes, found 0 (use None for no prefetch)".into(),
            );
        }
        // Displacements the code encodes (see `Plan`): the last row at the last step of a block of K steps,
        // B of a whole block plus the prefetch distance, the last C row's last vector.
        let steps = Plan::new(self).block_steps(self.k) as u128;
        let disps = [
            ("a_row_stride", (self.rows - 1) as u128 * self.a_row_stride as u128 + 4 * steps),
            (
                "b_k_stride",
                steps * self.b_k_stride as u128 + self.prefetch_b.unwrap_or(0) as u128 + 4 * self.nr as u128,
            ),
            ("c_row_stride", (self.rows - 1) as u128 * self.c_row_stride as u128 + 4 * self.nr as u128),
        ];
        for (field, d) in disps {
            if d > MAX_DISP as u128 {
                return bad(
                    field,
                    format!("the kernel's addresses must stay within 2 GiB of its pointers; this one needs {d} bytes"),
                );
            }
        }
        Ok(())
    }

    /// Floating-point operations of one call (2 per multiply-add of the valid columns).
    pub fn flops(&self) -> usize {
        2 * self.rows * self.lanes * self.k
    }
}

/// Register and loop plan of a kernel: shared by the validation (its displacements) and the assembler.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Plan {
    /// Floats per vector.
    vw: usize,
    /// Vectors computed per row: ceil(lanes / vw).
    nv: usize,
    /// Valid floats of the last vector when it is partial (0: it is full).
    tail: usize,
    /// Interleaved partial sums per accumulator (1, 2, 4 or 8).
    sets: usize,
    /// K steps per loop iteration (a multiple of `sets`).
    unroll: usize,
}

/// FMA chains in flight needed to hide the latency: 2 FMA units x 4 cycles.
const CHAINS_WANTED: usize = 8;
/// K steps per loop iteration for tiles with enough accumulators (measured, see the bench).
const BASE_UNROLL: usize = 4;

impl Plan {
    fn new(uk: &GemmUkernel) -> Plan {
        let vw = uk.isa.vector_floats();
        let nv = uk.lanes.div_ceil(vw);
        let tail = uk.lanes % vw;
        let accs = uk.rows * nv;
        // Registers the K loop needs besides the accumulators: nv B vectors and one broadcast.
        let budget = uk.isa.vector_registers() - nv - 1;
        let mut sets = 1;
        while accs * sets < CHAINS_WANTED && accs * sets * 2 <= budget && sets < 8 && sets * 2 <= uk.k {
            sets *= 2;
        }
        Plan { vw, nv, tail, sets, unroll: Plan::unroll_sets(sets) }
    }

    fn unroll_sets(sets: usize) -> usize {
        BASE_UNROLL.max(sets)
    }

    /// Whether K runs as straight-line code (fewer than two loop iterations' worth of steps).
    fn straight(&self, k: usize) -> bool {
        k < 2 * self.unroll
    }

    /// K steps addressed from one pair of A/B pointers: all of them in straight-line code, else one
    /// iteration (the remainder after the loop has fewer).
    fn block_steps(&self, k: usize) -> usize {
        if self.straight(k) {
            k
        } else {
            self.unroll
        }
    }
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum UkernelError {
    #[error("ISA tier `{isa}` is not available here: it needs {missing}")]
    Unsupported { isa: Isa, missing: String },
    #[error("unknown ISA tier `{0}`: expected one of avx512, avx2, f32x4, auto")]
    ParseIsa(String),
    #[error("invalid micro-kernel: `{field}`: {msg}")]
    Invalid { field: &'static str, msg: String },
    #[error("micro-kernel code region: {0}")]
    Region(String),
    #[error("micro-kernel assembler: {0}")]
    Assembler(String),
}

/// The code of `bytes` (loaded at `base`) as Intel-syntax assembly, one `address: instruction` line each.
pub fn disassemble(bytes: &[u8], base: u64) -> String {
    #[cfg(target_arch = "x86_64")]
    {
        asm::disassemble(bytes, base)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        format!("; {} bytes of x86-64 code at {base:#x} (this build has no x86-64 disassembler)\n", bytes.len())
    }
}

/// Assembles a kernel's code for loading at address `ip` (the code is position independent: its only
/// branches are internal and relative). [`CodeRegion::gemm`] is what installs it; this is for inspection.
pub fn assemble_gemm(uk: &GemmUkernel, ip: u64) -> Result<Vec<u8>, UkernelError> {
    uk.validate()?;
    #[cfg(target_arch = "x86_64")]
    {
        asm::gemm(uk, &Plan::new(uk), ip)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ip;
        Err(UkernelError::Unsupported { isa: uk.isa, missing: "an x86_64 build".into() })
    }
}

/// This core's FMA throughput on a tier, GFLOP/s (2 flops per lane per FMA), measured with independent
/// register-only FMA chains (24 zmm / 12 ymm / 12 xmm) in assembled code; the best of 15 runs of a few
/// milliseconds on the calling thread, timed by the thread's CPU time (so that time spent waiting for a core
/// on a loaded machine does not count). `F32x4` needs FMA (x86_64).
pub fn fma_peak_gflops(isa: Isa) -> Result<f64, UkernelError> {
    region::fma_peak_gflops(isa)
}
