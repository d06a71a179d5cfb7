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

/// Relu on f32x4 as Keras computes it: `v < 0 ? 0 : v` (a compare and a mask), so NaN passes through
/// (IEEE: a NaN is not less than 0) and -0.0 stays -0.0.
pub fn relu4(b: &mut FunctionBuilder, v: Value) -> Value {
    let z = zero4(b);
    let neg = b.ins().fcmp(cranelift_codegen::ir::condcodes::FloatCC::LessThan, v, z);
    let m = b.ins().bitcast(types::F32X4, MemFlagsData::new(), neg);
    b.ins().band_not(v, m)
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
