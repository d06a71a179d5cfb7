//! The assembler side: a [`GemmUkernel`] and its [`Plan`] in, x86-64 machine code out (iced-x86's
//! `CodeAssembler`); plus the prefetch stub, the FMA-peak loop and the disassembler.
//!
//! Register map of a GEMM kernel (vector registers numbered 0..32 zmm or 0..16 ymm):
//! - `0 .. sets*rows*nv`: accumulators, `acc(set, i, v)` = `(set*rows + i)*nv + v`;
//! - the next `nv`: the B vectors of the current K step;
//! - the rest: broadcast A elements (round robin). AVX-512 kernels with one vector per row use embedded
//!   broadcasts instead (`vfmadd231ps acc, b, dword bcst [a]`: one micro-fused µop, no register).
//!
//! After the K loop only the `rows*nv` accumulators of set 0 live on; the epilogue takes the next registers
//! for a zero (relu) and, on AVX2, a lane mask and a temporary (AVX-512 masks with `k1`).

use super::{GemmUkernel, Isa, Plan, UkernelError};
use iced_x86::code_asm::*;
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};

fn err(e: IcedError) -> UkernelError {
    UkernelError::Assembler(e.to_string())
}

const ZMM: [AsmRegisterZmm; 32] = [
    zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11, zmm12, zmm13, zmm14, zmm15, zmm16, zmm17,
    zmm18, zmm19, zmm20, zmm21, zmm22, zmm23, zmm24, zmm25, zmm26, zmm27, zmm28, zmm29, zmm30, zmm31,
];
const YMM: [AsmRegisterYmm; 16] =
    [ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13, ymm14, ymm15];
const XMM: [AsmRegisterXmm; 16] =
    [xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13, xmm14, xmm15];

/// `[base + off]`; offsets are validated to fit in 31 bits (`GemmUkernel::validate`).
fn at(base: AsmRegister64, off: usize) -> AsmMemoryOperand {
    base + off as i32
}

/// A vector-register instruction writer for one tier (zmm or ymm), so that the kernel logic is written once.
struct V {
    a: CodeAssembler,
    isa: Isa,
}

impl V {
    fn new(isa: Isa) -> Result<V, UkernelError> {
        Ok(V { a: CodeAssembler::new(64).map_err(err)?, isa })
    }

    fn z512(&self) -> bool {
        self.isa == Isa::Avx512
    }

    /// `r = [m]` (full vector, any alignment).
    fn load(&mut self, r: usize, m: AsmMemoryOperand) -> Result<(), IcedError> {
        if self.z512() {
            self.a.vmovups(ZMM[r], zmmword_ptr(m))
        } else {
            self.a.vmovups(YMM[r], ymmword_ptr(m))
        }
    }

    /// `r = broadcast([m] as f32)`.
    fn bcast(&mut self, r: usize, m: AsmMemoryOperand) -> Result<(), IcedError> {
        if self.z512() {
            self.a.vbroadcastss(ZMM[r], dword_ptr(m))
        } else {
            self.a.vbroadcastss(YMM[r], dword_ptr(m))
        }
    }

    /// `acc += b * s`.
    fn fma(&mut self, acc: usize, b: usize, s: usize) -> Result<(), IcedError> {
        if self.z512() {
            self.a.vfmadd231ps(ZMM[acc], ZMM[b], ZMM[s])
        } else {
            self.a.vfmadd231ps(YMM[acc], YMM[b], YMM[s])
        }
    }

    fn zero(&mut self, r: usize) -> Result<(), IcedError> {
        if self.z512() {
            // vpxord: AVX-512F (vxorps on zmm would need AVX-512DQ); a zeroing idiom either way.
            self.a.vpxord(ZMM[r], ZMM[r], ZMM[r])
        } else {
            self.a.vxorps(YMM[r], YMM[r], YMM[r])
        }
    }

    /// `acc += s`.
    fn add(&mut self, acc: usize, s: usize) -> Result<(), IcedError> {
        if self.z512() {
            self.a.vaddps(ZMM[acc], ZMM[acc], ZMM[s])
        } else {
            self.a.vaddps(YMM[acc], YMM[acc], YMM[s])
        }
    }

    /// `acc = max(z, acc)` with `z` zero: `vmaxps` returns its second source when either is NaN, so a NaN in
    /// `acc` comes through (relu(NaN) = NaN) and `acc` = ±Inf gives Inf / 0.
    fn relu(&mut self, acc: usize, z: usize) -> Result<(), IcedError> {
        if self.z512() {
            self.a.vmaxps(ZMM[acc], ZMM[z], ZMM[acc])
        } else {
            self.a.vmaxps(YMM[acc], YMM[z], YMM[acc])
        }
    }
}

/// The accumulator / B / broadcast register numbers of a kernel.
struct Regs {
    rows: usize,
    nv: usize,
    /// First B register; broadcast registers follow the `nv` B registers.
    b: usize,
    /// Broadcast registers: `bcast0 .. bcast0 + nbcast`.
    bcast0: usize,
    nbcast: usize,
}

impl Regs {
    fn acc(&self, set: usize, i: usize, v: usize) -> usize {
        (set * self.rows + i) * self.nv + v
    }
}

/// Emits a kernel (see the module docs of `x86` for the contract and `asm`'s for the registers).
pub(super) fn gemm(uk: &GemmUkernel, p: &Plan, ip: u64) -> Result<Vec<u8>, UkernelError> {
    let mut v = V::new(uk.isa)?;
    emit_gemm(&mut v, uk, p).map_err(err)?;
    v.a.assemble(ip).map_err(err)
}

fn emit_gemm(v: &mut V, uk: &GemmUkernel, p: &Plan) -> Result<(), IcedError> {
    let accs = p.sets * uk.rows * p.nv;
    let r =
        Regs { rows: uk.rows, nv: p.nv, b: accs, bcast0: accs + p.nv, nbcast: uk.isa.vector_registers() - accs - p.nv };
    let masked_tail = p.tail != 0;

    // Prologue: the accumulators start at zero, or at C (set 0) when accumulating.
    if masked_tail {
        // AVX-512: k1 = the tail lanes, for the whole kernel. AVX2: a lane mask in a free register, used by
        // the C loads here (the epilogue rebuilds it: the K loop reuses the register).
        lane_mask(v, p, r.b)?;
    }
    for set in 0..p.sets {
        for i in 0..uk.rows {
            for vi in 0..p.nv {
                let acc = r.acc(set, i, vi);
                if uk.accumulate && set == 0 {
                    let m = at(rdx, i * uk.c_row_stride + vi * p.vw * 4);
                    let partial = masked_tail && vi == p.nv - 1;
                    match (v.isa, partial) {
                        (Isa::Avx512, true) => v.a.vmovups(ZMM[acc].k1().z(), zmmword_ptr(m))?,
                        (_, true) => v.a.vmaskmovps(YMM[acc], YMM[r.b], ymmword_ptr(m))?,
                        (_, false) => v.load(acc, m)?,
                    }
                } else {
                    v.zero(acc)?;
                }
            }
        }
    }

    // K loop: `unroll` steps per iteration, the remainder after it; short K as straight-line code.
    if p.straight(uk.k) {
        emit_block(v, uk, p, &r, uk.k)?;
    } else {
        let iters = uk.k / p.unroll;
        let rem = uk.k % p.unroll;
        v.a.mov(rax, iters as u64)?;
        let mut top = v.a.create_label();
        v.a.set_label(&mut top)?;
        emit_block(v, uk, p, &r, p.unroll)?;
        v.a.add(rdi, (p.unroll * 4) as i32)?;
        v.a.add(rsi, (p.unroll * uk.b_k_stride) as i32)?;
        v.a.dec(rax)?;
        v.a.jne(top)?;
        if rem > 0 {
            emit_block(v, uk, p, &r, rem)?;
        }
    }

    // Partial sums into set 0.
    for set in 1..p.sets {
        for i in 0..uk.rows {
            for vi in 0..p.nv {
                v.add(r.acc(0, i, vi), r.acc(set, i, vi))?;
            }
        }
    }

    emit_epilogue(v, uk, p, &r)?;
    v.a.vzeroupper()?;
    v.a.ret()
}

/// A lane mask of the `tail` valid floats of the last vector: `k1` (AVX-512), or register `m` (AVX2,
/// `vmaskmovps` wants the mask in a vector: sign bits of 8 bytes 0xFF/0x00 sign-extended to dwords; no
/// constant data in the code, so that the disassembly is all instructions).
fn lane_mask(v: &mut V, p: &Plan, m: usize) -> Result<(), IcedError> {
    if v.z512() {
        v.a.mov(eax, (1u32 << p.tail) - 1)?;
        v.a.kmovw(k1, eax)
    } else {
        let bytes: u64 = (0..p.tail).map(|l| 0xFFu64 << (8 * l)).sum();
        v.a.mov(rax, bytes)?;
        v.a.vmovq(XMM[m], rax)?;
        v.a.vpmovsxbd(YMM[m], XMM[m])
    }
}

/// `steps` K steps from the current A/B pointers (`rdi`, `rsi`), step `u` adding into set `u % sets`
/// (blocks start at a multiple of `sets`: the unroll is one), with B prefetches spread over the steps.
fn emit_block(v: &mut V, uk: &GemmUkernel, p: &Plan, r: &Regs, steps: usize) -> Result<(), IcedError> {
    let pf_lines = uk.prefetch_b.map_or(0, |_| (steps * uk.b_k_stride).div_ceil(64));
    let mut t = 0;
    for u in 0..steps {
        let set = u % p.sets;
        for vi in 0..p.nv {
            v.load(r.b + vi, at(rsi, u * uk.b_k_stride + vi * p.vw * 4))?;
        }
        for i in 0..uk.rows {
            let a_off = i * uk.a_row_stride + u * 4;
            if v.z512() && p.nv == 1 {
                v.a.vfmadd231ps(ZMM[r.acc(set, i, 0)], ZMM[r.b], dword_bcst(at(rdi, a_off)))?;
                continue;
            }
            let s = r.bcast0 + t;
            t = (t + 1) % r.nbcast;
            v.bcast(s, at(rdi, a_off))?;
            for vi in 0..p.nv {
                v.fma(r.acc(set, i, vi), r.b + vi, s)?;
            }
        }
        if let Some(dist) = uk.prefetch_b {
            // Lines j with j * steps / pf_lines == u: evenly spread over the block.
            for j in (u * pf_lines).div_ceil(steps)..((u + 1) * pf_lines).div_ceil(steps) {
                v.a.prefetcht0(byte_ptr(at(rsi, dist + 64 * j)))?;
            }
        }
    }
    Ok(())
}

/// `+ bias`, relu, `+ R`, relu, store — row by row, only the valid lanes.
fn emit_epilogue(v: &mut V, uk: &GemmUkernel, p: &Plan, r: &Regs) -> Result<(), IcedError> {
    let e = uk.epilogue;
    let masked_tail = p.tail != 0;
    // Free registers after the K loop: everything past set 0's accumulators.
    let free0 = uk.rows * p.nv;
    let free = uk.isa.vector_registers() - free0;
    let (mask, tmp) = (free0, free0 + 1); // AVX2 only
                                          // The zero for relu: its own register where there is room, else the AVX2 temporary, re-zeroed per use.
    let zero_own = if v.z512() { free0 } else { free0 + 2 };
    let zero = if v.z512() || free >= 3 { zero_own } else { tmp };
    if masked_tail && !v.z512() {
        lane_mask(v, p, mask)?;
    }
    if (e.relu || e.relu_after_add) && zero == zero_own {
        v.zero(zero)?;
    }
    for i in 0..uk.rows {
        for vi in 0..p.nv {
            let acc = r.acc(0, i, vi);
            let partial = masked_tail && vi == p.nv - 1;
            let col = vi * p.vw * 4;
            let c_off = i * uk.c_row_stride + col;
            if e.bias {
                add_mem(v, acc, at(rcx, col), partial, mask, tmp)?;
            }
            if e.relu {
                relu(v, acc, zero, zero != zero_own)?;
            }
            if e.residual {
                add_mem(v, acc, at(r8, c_off), partial, mask, tmp)?;
            }
            if e.relu_after_add {
                relu(v, acc, zero, zero != zero_own)?;
            }
            let m = at(rdx, c_off);
            match (v.isa, partial) {
                (Isa::Avx512, true) => v.a.vmovups(zmmword_ptr(m).k1(), ZMM[acc])?,
                (Isa::Avx512, false) => v.a.vmovups(zmmword_ptr(m), ZMM[acc])?,
                (_, true) => v.a.vmaskmovps(ymmword_ptr(m), YMM[mask], YMM[acc])?,
                (_, false) => v.a.vmovups(ymmword_ptr(m), YMM[acc])?,
            }
        }
    }
    Ok(())
}

/// `acc += [m]`, reading only the valid lanes when `partial` (AVX-512: `k1` merge-masked memory operand;
/// AVX2: `vmaskmovps` into `tmp` with the lane mask in `mask`). Masked lanes never fault.
fn add_mem(
    v: &mut V,
    acc: usize,
    m: AsmMemoryOperand,
    partial: bool,
    mask: usize,
    tmp: usize,
) -> Result<(), IcedError> {
    match (v.isa, partial) {
        (Isa::Avx512, true) => v.a.vaddps(ZMM[acc].k1(), ZMM[acc], zmmword_ptr(m)),
        (Isa::Avx512, false) => v.a.vaddps(ZMM[acc], ZMM[acc], zmmword_ptr(m)),
        (_, true) => {
            v.a.vmaskmovps(YMM[tmp], YMM[mask], ymmword_ptr(m))?;
            v.add(acc, tmp)
        }
        (_, false) => v.a.vaddps(YMM[acc], YMM[acc], ymmword_ptr(m)),
    }
}

fn relu(v: &mut V, acc: usize, zero: usize, rezero: bool) -> Result<(), IcedError> {
    if rezero {
        v.zero(zero)?;
    }
    v.relu(acc, zero)
}

/// `prefetcht0 [rdi]; ret`.
pub(super) fn prefetch_stub(ip: u64) -> Result<Vec<u8>, UkernelError> {
    let mut a = CodeAssembler::new(64).map_err(err)?;
    a.prefetcht0(byte_ptr(rdi)).map_err(err)?;
    a.ret().map_err(err)?;
    a.assemble(ip).map_err(err)
}

/// Independent FMA chains for [`super::fma_peak_gflops`]: `fn(iters: u64)` runs `iters` times `chains`
/// register-only `vfmadd231ps` (zero operands: no denormals, no data dependence of the timing).
pub(super) fn fma_peak_loop(isa: Isa, ip: u64) -> Result<(Vec<u8>, usize), UkernelError> {
    let chains = match isa {
        Isa::Avx512 => 24,
        Isa::Avx2 | Isa::F32x4 => 12,
    };
    let e = |r: Result<(), IcedError>| r.map_err(err);
    let mut a = CodeAssembler::new(64).map_err(err)?;
    for r in 0..=chains {
        match isa {
            Isa::Avx512 => e(a.vpxord(ZMM[r], ZMM[r], ZMM[r]))?,
            Isa::Avx2 => e(a.vxorps(YMM[r], YMM[r], YMM[r]))?,
            Isa::F32x4 => e(a.vxorps(XMM[r], XMM[r], XMM[r]))?,
        }
    }
    let mut top = a.create_label();
    e(a.set_label(&mut top))?;
    let m = chains; // the shared multiplicand
    for r in 0..chains {
        match isa {
            Isa::Avx512 => e(a.vfmadd231ps(ZMM[r], ZMM[m], ZMM[m]))?,
            Isa::Avx2 => e(a.vfmadd231ps(YMM[r], YMM[m], YMM[m]))?,
            Isa::F32x4 => e(a.vfmadd231ps(XMM[r], XMM[m], XMM[m]))?,
        }
    }
    e(a.dec(rdi))?;
    e(a.jne(top))?;
    e(a.vzeroupper())?;
    e(a.ret())?;
    Ok((a.assemble(ip).map_err(err)?, chains))
}

/// See [`super::disassemble`].
pub(super) fn disassemble(bytes: &[u8], base: u64) -> String {
    let mut decoder = Decoder::with_ip(64, bytes, base, DecoderOptions::NONE);
    let mut formatter = IntelFormatter::new();
    formatter.options_mut().set_space_after_operand_separator(true);
    let mut out = String::new();
    let mut text = String::new();
    for ins in &mut decoder {
        text.clear();
        formatter.format(&ins, &mut text);
        out.push_str(&format!("{:016x}  {text}\n", ins.ip()));
    }
    out
}
