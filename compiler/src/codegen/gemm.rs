//! The GEMM micro-kernel shared by every convolution family (direct/implicit GEMM, Strassen, Winograd, the
//! stem): the tile shape ([`MR`] x [`NR`]), the K-loop emitter ([`emit_k_loop`]) and the fused epilogue
//! ([`Epilogue`], [`conv_epilogue`]).
//!
//! What enters: pointers to A (rows of the left operand, any stride), to a B panel (packed weights, `nr`
//! floats per K step, consecutive) and the initial accumulators. What leaves: the accumulated rows, which
//! the family stores where its layout wants them (output, scratch, quadrant tiles), through the epilogue
//! when it is the last K block.
//!
//! The tile depends on the CPU tier ([`Tile`]): the portable `f32x4` tier emits the K loop as cranelift
//! IR here ([`emit_k_loop`], MR x 4), the wide tiers (AVX-512, AVX2) call a micro-kernel assembled for the
//! exact call site ([`call_wide`], `codegen::x86`), which also applies the epilogue and stores.

use super::family::TaskEnv;
use super::util::*;
use super::x86::{GemmUkernel, Isa};
use crate::ops::Conv;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;

/// Rows of the micro-kernel at most; small layers use fewer, balanced rows.
pub const MR: usize = 12;
/// Columns of the micro-kernel (one f32x4), the panel width of packed weights.
pub const NR: usize = 4;

/// The fused epilogue of a convolution, in the order [`Conv`] defines: + bias, relu, + the residual
/// (the kernel's `input2`), relu after the add. One type for the cranelift loops and the wide
/// micro-kernels, which apply it in the same order.
pub use super::x86::Epilogue;

impl Epilogue {
    pub fn of(conv: &Conv) -> Epilogue {
        Epilogue { bias: conv.bias, relu: conv.relu, residual: conv.residual, relu_after_add: conv.relu_after_add }
    }
}

/// The register tile of a tier's GEMM micro-kernel: at most `mr` rows by `nr` columns, the width in which
/// the weights are packed (`B[panel][k][nr]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    pub isa: Isa,
    pub mr: usize,
    pub nr: usize,
}

impl Tile {
    /// The tile the tier's micro-kernels run best with (`Isa::preferred_tile`, measured).
    pub fn of(isa: Isa) -> Tile {
        let (mr, nr) = isa.preferred_tile();
        Tile { isa, mr, nr }
    }

    /// Whether the tile is a wide micro-kernel call (else the f32x4 cranelift K loop).
    pub fn is_wide(&self) -> bool {
        self.isa.is_wide()
    }
}

impl Default for Tile {
    fn default() -> Self {
        Tile::of(Isa::F32x4)
    }
}

/// One call of a wide micro-kernel: `C[rows][lanes] (+)= A * B (+ epilogue)` at these pointers.
pub struct WideCall {
    pub uk: GemmUkernel,
    pub a: Value,
    pub b: Value,
    pub c: Value,
    /// The bias of the panel's first column, when the epilogue adds one.
    pub bias: Option<Value>,
    /// The residual tile (laid out as C), when the epilogue adds one.
    pub residual: Option<Value>,
}

/// Emits a call of the micro-kernel `call.uk` (assembled into the session's code region on first use) at
/// its absolute address. An assembly error is recorded in `env` and fails the kernel's compilation.
pub fn call_wide(b: &mut FunctionBuilder, env: &TaskEnv, call: &WideCall) {
    let Some(w) = env.wide else {
        env.fail("a wide micro-kernel call in a kernel compiled without a code region".into());
        return;
    };
    let addr = match w.region.gemm(&call.uk) {
        Ok(r) => r.addr(),
        Err(e) => {
            env.fail(format!("micro-kernel {:?}: {e}", call.uk));
            0
        }
    };
    let f = b.ins().iconst(types::I64, addr as i64);
    let null = b.ins().iconst(types::I64, 0);
    let args = [call.a, call.b, call.c, call.bias.unwrap_or(null), call.residual.unwrap_or(null)];
    b.ins().call_indirect(w.sig, f, &args);
}

/// The fused convolution epilogue on one f32x4 of outputs, in the order `Conv` defines: + bias, relu,
/// + the residual (loaded from `residual = (pointer, byte offset, lanes)`), relu after the add.
pub fn conv_epilogue(
    b: &mut FunctionBuilder,
    mut v: Value,
    bias: Option<Value>,
    relu: bool,
    residual: Option<(Value, i32, usize)>,
    relu_after_add: bool,
) -> Value {
    if let Some(bv) = bias {
        v = b.ins().fadd(v, bv);
    }
    if relu {
        v = relu4(b, v);
    }
    if let Some((rp, off, lanes)) = residual {
        let r = load_lanes(b, mf_input(), rp, off, lanes);
        v = b.ins().fadd(v, r);
    }
    if relu_after_add {
        v = relu4(b, v);
    }
    v
}

/// One register-blocked GEMM micro-kernel's K loop: `rows` f32x4 accumulators, each K step loads one B vector
/// (`b0 + k*16`) and broadcasts one A element per row (`a0 + k*a_kstride + i*a_rowstride`) into an FMA.
pub struct KLoop {
    /// B (packed weights) at step 0; one f32x4 per K step, consecutive.
    pub b0: Value,
    /// A (packed or direct input) at step 0, and its strides in bytes.
    pub a0: Value,
    pub a_kstride: usize,
    pub a_rowstride: usize,
    pub a_flags: MemFlagsData,
    /// K steps.
    pub steps: usize,
    /// K steps per loop iteration.
    pub unroll: usize,
    /// Accumulator sets: step `j` of an iteration adds into set `j % sets`; the sets are summed at the end.
    /// Tiles with few rows use several, so that about 8 FMA chains are in flight to hide the FMA latency.
    pub sets: usize,
    /// Emit `fma(b, a, acc)` instead of `fma(a, b, acc)` (operand order affects register allocation).
    pub fma_b_first: bool,
    /// Prefetch B this many bytes ahead once per iteration through the `preserve_all` stub
    /// (`Session::prefetch_import`); callers unroll by 4, one 64-byte line of B per iteration, unless the
    /// four B vectors would not fit beside the accumulators (then by 2, prefetching each line twice).
    pub prefetch: Option<(cranelift_codegen::ir::FuncRef, usize)>,
}

/// Accumulator sets for a micro-kernel of `rows` accumulators (`KLoop::sets`): short tiles (few output
/// pixels or Winograd tiles: 7x7 maps and smaller) have too few accumulators to hide the FMA latency (each
/// chain waits ~4 cycles), so K is split over sets, one per unrolled step, to keep ~8 chains in flight.
pub fn accumulator_sets(rows: usize) -> usize {
    if rows < 8 {
        (8 / rows.max(1)).clamp(1, 4)
    } else {
        1
    }
}

/// K steps per iteration of a micro-kernel's loop (`KLoop::unroll`) with `rows` accumulators in `sets`
/// sets: with prefetching, one iteration reads (and prefetches) one 64-byte line of B, or half of one when
/// 4 steps would keep too many B vectors live beside the accumulators (more than 15 registers spill);
/// without, `default` and at least one step per set.
pub fn k_unroll(prefetch: bool, rows: usize, sets: usize, default: usize) -> usize {
    match prefetch {
        true if rows * sets <= 10 => 4,
        true => 2,
        false => default.max(1).max(sets),
    }
}

/// Emits `l`'s K loop, accumulating into `accs` (the initial values, one per row); returns the sums.
///
/// Shape, as the notes on cranelift found fastest: a header block tests the B pointer, the body ends in one
/// unconditional jump back carrying the accumulators (passing them to both targets of a `brif` disables load
/// folding), and each FMA gets its own single-use broadcast load of A. The steps that do not fill an
/// iteration follow the loop, straight-line.
pub fn emit_k_loop(b: &mut FunctionBuilder, l: &KLoop, accs: Vec<Value>) -> Vec<Value> {
    let rows = accs.len();
    let (u, sets) = (l.unroll.max(1), l.sets.clamp(1, l.unroll.max(1)));
    let fma_step = |b: &mut FunctionBuilder, accs: &mut [Value], ap: Value, aoff: usize, bv: Value| {
        for (i, acc) in accs.iter_mut().enumerate() {
            let x = b.ins().load(types::F32, l.a_flags, ap, (aoff + i * l.a_rowstride) as i32);
            let s = b.ins().splat(types::F32X4, x);
            *acc = if l.fma_b_first { b.ins().fma(bv, s, *acc) } else { b.ins().fma(s, bv, *acc) };
        }
    };
    let mut accs = accs;
    let mut extra: Vec<Value> = (0..(sets - 1) * rows).map(|_| zero4(b)).collect();
    let nsteps = l.steps / u;
    let (mut bp, mut ap) = (l.b0, l.a0);
    if nsteps > 0 {
        let bend = b.ins().iadd_imm_s(l.b0, (nsteps * u * 16) as i64);
        let header = b.create_block();
        let body = b.create_block();
        let exit = b.create_block();
        b.append_block_param(header, types::I64);
        b.append_block_param(header, types::I64);
        for _ in 0..rows * sets {
            b.append_block_param(header, types::F32X4);
        }
        let mut init = vec![l.b0, l.a0];
        init.extend_from_slice(&accs);
        init.extend_from_slice(&extra);
        b.ins().jump(header, &args(&init));
        b.switch_to_block(header);
        let hp = b.block_params(header).to_vec();
        let cond = b.ins().icmp(cranelift_codegen::ir::condcodes::IntCC::UnsignedLessThan, hp[0], bend);
        b.ins().brif(cond, body, &[], exit, &[]);
        b.switch_to_block(body);
        if let Some((f, dist)) = l.prefetch {
            let ahead = b.ins().iadd_imm_s(hp[0], dist as i64);
            b.ins().call(f, &[ahead]);
        }
        let mut acc2 = hp[2..].to_vec();
        let bvs: Vec<Value> = (0..u).map(|j| b.ins().load(types::F32X4, mf_packed(), hp[0], (16 * j) as i32)).collect();
        for (j, &bv) in bvs.iter().enumerate() {
            let set = j % sets;
            fma_step(b, &mut acc2[set * rows..(set + 1) * rows], hp[1], j * l.a_kstride, bv);
        }
        let bpn = b.ins().iadd_imm_s(hp[0], (16 * u) as i64);
        let apn = b.ins().iadd_imm_s(hp[1], (u * l.a_kstride) as i64);
        let mut back = vec![bpn, apn];
        back.extend_from_slice(&acc2);
        b.ins().jump(header, &args(&back));
        b.switch_to_block(exit);
        bp = hp[0];
        ap = hp[1];
        accs = hp[2..2 + rows].to_vec();
        extra = hp[2 + rows..].to_vec();
    }
    for j in 0..l.steps % u {
        let b0 = b.ins().load(types::F32X4, mf_packed(), bp, (16 * j) as i32);
        fma_step(b, &mut accs, ap, j * l.a_kstride, b0);
    }
    for set in extra.chunks(rows) {
        for (acc, &x) in accs.iter_mut().zip(set) {
            *acc = b.ins().fadd(*acc, x);
        }
    }
    accs
}
