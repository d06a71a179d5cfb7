//! Small IR-building helpers shared by the kernel generators.

use cranelift_codegen::ir::{types, BlockArg, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;
use resnetc_runtime::KernelArgs;

/// Packed constants and work buffers: aligned, never trapping, not written while they are read.
pub fn mf_packed() -> MemFlagsData {
    MemFlagsData::new().with_notrap().with_aligned().with_readonly().with_can_move()
}

/// Reads of kernel inputs (activations): the kernel never writes them; alignment only natural for scalars.
pub fn mf_input() -> MemFlagsData {
    MemFlagsData::new().with_notrap().with_readonly().with_can_move()
}

/// Reads of the input with natural (element) alignment guaranteed.
pub fn mf_input_scalar() -> MemFlagsData {
    MemFlagsData::new().with_notrap().with_aligned().with_readonly().with_can_move()
}

/// Loads and stores of outputs and partial sums.
pub fn mf_rw() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

pub fn args(vals: &[Value]) -> Vec<BlockArg> {
    vals.iter().map(|&v| BlockArg::Value(v)).collect()
}

/// The kernel entry: returns (args ptr, work ptr, start, end) after creating and sealing the entry block.
pub fn entry(b: &mut FunctionBuilder) -> [Value; 4] {
    let blk = b.create_block();
    b.append_block_params_for_function_params(blk);
    b.switch_to_block(blk);
    let p = b.block_params(blk);
    [p[0], p[1], p[2], p[3]]
}

/// Loads the four pointers of `KernelArgs`: (input, input2, output, consts).
pub fn load_args(b: &mut FunctionBuilder, a: Value) -> [Value; 4] {
    let f = MemFlagsData::new().with_notrap().with_aligned().with_readonly();
    [KernelArgs::OFFSET_INPUT, KernelArgs::OFFSET_INPUT2, KernelArgs::OFFSET_OUTPUT, KernelArgs::OFFSET_CONSTS]
        .map(|o| b.ins().load(types::I64, f, a, o))
}

/// `for iv in lo..hi` (signed compare, step 1) carrying `carried`: a header block tests the counter, the body
/// ends in one unconditional jump back. Returns the carried values at loop exit.
pub fn for_range(
    b: &mut FunctionBuilder,
    lo: Value,
    hi: Value,
    carried: &[Value],
    body: impl FnOnce(&mut FunctionBuilder, Value, &[Value]) -> Vec<Value>,
) -> Vec<Value> {
    for_range_step(b, lo, hi, 1, carried, body)
}

pub fn for_range_step(
    b: &mut FunctionBuilder,
    lo: Value,
    hi: Value,
    step: i64,
    carried: &[Value],
    body: impl FnOnce(&mut FunctionBuilder, Value, &[Value]) -> Vec<Value>,
) -> Vec<Value> {
    let header = b.create_block();
    let body_blk = b.create_block();
    let exit = b.create_block();
    b.append_block_param(header, types::I64);
    for &c in carried {
        let ty = b.func.dfg.value_type(c);
        b.append_block_param(header, ty);
    }
    let mut init = vec![lo];
    init.extend_from_slice(carried);
    b.ins().jump(header, &args(&init));
    b.switch_to_block(header);
    let params = b.block_params(header).to_vec();
    let iv = params[0];
    let cond = b.ins().icmp(cranelift_codegen::ir::condcodes::IntCC::SignedLessThan, iv, hi);
    b.ins().brif(cond, body_blk, &[], exit, &[]);
    b.switch_to_block(body_blk);
    let next = body(b, iv, &params[1..]);
    assert_eq!(next.len(), carried.len());
    let iv2 = b.ins().iadd_imm_s(iv, step);
    let mut back = vec![iv2];
    back.extend_from_slice(&next);
    b.ins().jump(header, &args(&back));
    b.switch_to_block(exit);
    params[1..].to_vec()
}

/// `for i in 0..n { body(i) }` with a compile-time count: straight-line code when `n == 1`.
pub fn for_n(b: &mut FunctionBuilder, n: usize, mut body: impl FnMut(&mut FunctionBuilder, Value)) {
    if n == 1 {
        let z = iconst(b, 0);
        body(b, z);
    } else {
        let z = iconst(b, 0);
        let hi = iconst(b, n);
        for_range(b, z, hi, &[], |b, i, _| {
            body(b, i);
            vec![]
        });
    }
}

/// `if cond { then() }` with no values flowing out.
pub fn if_then(b: &mut FunctionBuilder, cond: Value, then: impl FnOnce(&mut FunctionBuilder)) {
    let t = b.create_block();
    let join = b.create_block();
    b.ins().brif(cond, t, &[], join, &[]);
    b.switch_to_block(t);
    then(b);
    b.ins().jump(join, &[]);
    b.switch_to_block(join);
}

/// `if cond { then() } else { els() }` with no values flowing out.
pub fn if_else(
    b: &mut FunctionBuilder,
    cond: Value,
    then: impl FnOnce(&mut FunctionBuilder),
    els: impl FnOnce(&mut FunctionBuilder),
) {
    let t = b.create_block();
    let e = b.create_block();
    let join = b.create_block();
    b.ins().brif(cond, t, &[], e, &[]);
    b.switch_to_block(t);
    then(b);
    b.ins().jump(join, &[]);
    b.switch_to_block(e);
    els(b);
    b.ins().jump(join, &[]);
    b.switch_to_block(join);
}

pub fn iconst(b: &mut FunctionBuilder, v: usize) -> Value {
    b.ins().iconst(types::I64, v as i64)
}

/// `p + idx * scale + off` in bytes (`idx` an i64 value).
pub fn addr(b: &mut FunctionBuilder, p: Value, idx: Value, scale: usize, off: i64) -> Value {
    let s = if scale == 1 { idx } else { b.ins().imul_imm_s(idx, scale as i64) };
    let a = b.ins().iadd(p, s);
    if off == 0 {
        a
    } else {
        b.ins().iadd_imm_s(a, off)
    }
}

/// Writes a layer's bias (if it has one) into its packed constants at float offset `offset`; the padding
/// after it stays zero.
pub fn put_bias(consts: &mut [f32], offset: usize, bias: Option<&[f32]>) {
    if let Some(bias) = bias {
        consts[offset..offset + bias.len()].copy_from_slice(bias);
    }
}

/// An all-zero f32x4.
pub fn zero4(b: &mut FunctionBuilder) -> Value {
    let z = b.ins().f32const(0.0);
    b.ins().splat(types::F32X4, z)
}

/// `max(v, 0)` for f32x4 (a compare and a mask; NaN becomes 0).
pub fn relu4(b: &mut FunctionBuilder, v: Value) -> Value {
    let z = zero4(b);
    let m = b.ins().fcmp(cranelift_codegen::ir::condcodes::FloatCC::GreaterThan, v, z);
    let mf = b.ins().bitcast(types::F32X4, MemFlagsData::new(), m);
    b.ins().band(v, mf)
}

/// Loads `lanes` (1..=4) consecutive floats into the low lanes of an f32x4 (others zero).
pub fn load_lanes(b: &mut FunctionBuilder, flags: MemFlagsData, p: Value, off: i32, lanes: usize) -> Value {
    if lanes == 4 {
        return b.ins().load(types::F32X4, flags, p, off);
    }
    let mut v = zero4(b);
    for l in 0..lanes {
        let x = b.ins().load(types::F32, flags, p, off + 4 * l as i32);
        v = b.ins().insertlane(v, x, l as u8);
    }
    v
}

/// Stores the low `lanes` (1..=4) lanes of an f32x4.
pub fn store_lanes(b: &mut FunctionBuilder, flags: MemFlagsData, v: Value, p: Value, off: i32, lanes: usize) {
    if lanes == 4 {
        b.ins().store(flags, v, p, off);
        return;
    }
    for l in 0..lanes {
        let x = b.ins().extractlane(v, l as u8);
        b.ins().store(flags, x, p, off + 4 * l as i32);
    }
}

/// Copies `n` floats from `src` to `dst` (byte addresses, any 4-byte alignment): f32x4 moves (a loop of
/// 4 vectors at a time for long runs), then scalars.
pub fn copy_run(b: &mut FunctionBuilder, src: Value, dst: Value, n: usize) {
    let (ld, st) = (mf_input(), mf_rw());
    let big = n / 16;
    if big > 1 {
        let z = iconst(b, 0);
        let g = iconst(b, big);
        for_range(b, z, g, &[], |b, gi, _| {
            let s = addr(b, src, gi, 64, 0);
            let d = addr(b, dst, gi, 64, 0);
            for j in 0..4 {
                let x = b.ins().load(types::F32X4, ld, s, 16 * j);
                b.ins().store(st, x, d, 16 * j);
            }
            vec![]
        });
    }
    let done = if big > 1 { big * 16 } else { 0 };
    for v in (done..n - n % 4).step_by(4) {
        let x = b.ins().load(types::F32X4, ld, src, (v * 4) as i32);
        b.ins().store(st, x, dst, (v * 4) as i32);
    }
    for c in n - n % 4..n {
        let x = b.ins().load(types::F32, mf_input_scalar(), src, (c * 4) as i32);
        b.ins().store(st, x, dst, (c * 4) as i32);
    }
}

/// Zeroes `n` floats at `dst` (f32x4 stores, then scalars).
pub fn zero_run(b: &mut FunctionBuilder, dst: Value, n: usize) {
    let st = mf_rw();
    let zv = zero4(b);
    let big = n / 16;
    if big > 1 {
        let z = iconst(b, 0);
        let g = iconst(b, big);
        for_range(b, z, g, &[], |b, gi, _| {
            let d = addr(b, dst, gi, 64, 0);
            for j in 0..4 {
                b.ins().store(st, zv, d, 16 * j);
            }
            vec![]
        });
    }
    let done = if big > 1 { big * 16 } else { 0 };
    for v in (done..n - n % 4).step_by(4) {
        b.ins().store(st, zv, dst, (v * 4) as i32);
    }
    if !n.is_multiple_of(4) {
        let zf = b.ins().f32const(0.0);
        for c in n - n % 4..n {
            b.ins().store(st, zf, dst, (c * 4) as i32);
        }
    }
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
