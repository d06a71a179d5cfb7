//! Dense layers (simple, not tuned): `y = x W + b` for a vector `x[cin]` and the Keras kernel `W[cin, units]`.
//!
//! The kernel is packed at compile time into panels of 4 units (`W[panel][cin][4]`, zero-padded), followed
//! by the bias. One task per group of [`PANELS_PER_TASK`] panels; four accumulators per panel break the FMA
//! dependence chain; the weights, one sequential stream, are prefetched 8 KB ahead (ResNet-50's 8 MB
//! classifier 0.82-0.95 -> 0.59-0.76 ms on one thread). Relu is applied in registers; softmax calls the
//! session's in-place softmax helper after all units are computed (the kernel then runs as a single task;
//! on several threads the lowering splits dense and softmax into two kernels instead).

use super::family::{Helpers, KernelFamily, LayerWeights, TaskEnv};
use super::util::*;
use crate::ops::Activation;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;
use resnetc_runtime::AlignedBuf;

/// Panels of 4 units per task.
pub const PANELS_PER_TASK: usize = 8;

/// A dense layer: `cin` inputs, `units` outputs, the activation applied in the kernel, whether it has a bias.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DensePlan {
    pub cin: usize,
    pub units: usize,
    pub activation: Activation,
    pub bias: bool,
}

impl DensePlan {
    pub fn new(cin: usize, units: usize, activation: Activation, bias: bool) -> Result<DensePlan, String> {
        if cin == 0 || units == 0 {
            return Err("zero-sized dimension".into());
        }
        Ok(DensePlan { cin, units, activation, bias })
    }

    fn panels(&self) -> usize {
        self.units.div_ceil(4)
    }

    fn bias_offset(&self) -> usize {
        self.panels() * self.cin * 4
    }
}

impl KernelFamily for DensePlan {
    fn ntasks(&self) -> usize {
        if self.activation == Activation::Softmax {
            1
        } else {
            self.panels().div_ceil(PANELS_PER_TASK)
        }
    }

    fn out_shape(&self) -> Vec<usize> {
        vec![self.units]
    }

    fn helpers(&self) -> Helpers {
        Helpers { prefetch: true, softmax: self.activation == Activation::Softmax, ..Default::default() }
    }

    fn packed_floats(&self) -> usize {
        self.bias_offset() + self.panels() * 4
    }

    fn pack(&self, w: &LayerWeights) -> Result<AlignedBuf, String> {
        let (cin, units) = (self.cin, self.units);
        let (kernel, bias) = w.checked(cin * units, self.bias, units)?;
        let mut consts = AlignedBuf::zeroed(self.packed_floats());
        for p in 0..self.panels() {
            for k in 0..cin {
                for j in 0..4 {
                    let u = p * 4 + j;
                    if u < units {
                        consts[(p * cin + k) * 4 + j] = kernel[k * units + u];
                    }
                }
            }
        }
        put_bias(&mut consts, self.bias_offset(), bias);
        Ok(consts)
    }

    fn emit_task(&self, b: &mut FunctionBuilder, env: &TaskEnv, task: Value) {
        let (cin, units, npan) = (self.cin, self.units, self.panels());
        let TaskEnv { inp, out, cst, .. } = *env;
        let softmax = self.activation == Activation::Softmax;
        let (plo, phi) = if softmax {
            (iconst(b, 0), iconst(b, npan))
        } else {
            let lo = b.ins().imul_imm_s(task, PANELS_PER_TASK as i64);
            let hi = b.ins().iadd_imm_s(lo, PANELS_PER_TASK as i64);
            let n = iconst(b, npan);
            (lo, b.ins().umin(hi, n))
        };
        let relu = self.activation == Activation::Relu;
        let panel = |b: &mut FunctionBuilder, p: Value, lanes: usize| {
            let wbase = addr(b, cst, p, cin * 16, 0);
            let z = zero4(b);
            let groups = cin / 4;
            let zi = iconst(b, 0);
            let gi = iconst(b, groups);
            let accs = for_range(b, zi, gi, &[z, z, z, z], |b, g, acc| {
                let xp = addr(b, inp, g, 16, 0);
                let wp = addr(b, wbase, g, 64, 0);
                if let Some(f) = env.prefetch {
                    // The weights are one sequential stream (panels are contiguous): keep lines in flight.
                    let ahead = b.ins().iadd_imm_s(wp, 8192);
                    b.ins().call(f, &[ahead]);
                }
                (0..4)
                    .map(|j| {
                        let x = b.ins().load(types::F32, mf_input_scalar(), xp, 4 * j as i32);
                        let xs = b.ins().splat(types::F32X4, x);
                        let wv = b.ins().load(types::F32X4, mf_packed(), wp, 16 * j as i32);
                        b.ins().fma(xs, wv, acc[j])
                    })
                    .collect()
            });
            let s01 = b.ins().fadd(accs[0], accs[1]);
            let s23 = b.ins().fadd(accs[2], accs[3]);
            let mut v = b.ins().fadd(s01, s23);
            for k in groups * 4..cin {
                let x = b.ins().load(types::F32, mf_input_scalar(), inp, 4 * k as i32);
                let xs = b.ins().splat(types::F32X4, x);
                let wv = b.ins().load(types::F32X4, mf_packed(), wbase, 16 * k as i32);
                v = b.ins().fma(xs, wv, v);
            }
            if self.bias {
                let bp = addr(b, cst, p, 16, (self.bias_offset() * 4) as i64);
                let bv = b.ins().load(types::F32X4, mf_packed(), bp, 0);
                v = b.ins().fadd(v, bv);
            }
            if relu {
                v = relu4(b, v);
            }
            let dst = addr(b, out, p, 16, 0);
            store_lanes(b, mf_rw(), v, dst, 0, lanes);
        };
        let nfull = iconst(b, units / 4);
        let pend = b.ins().umin(phi, nfull);
        for_range(b, plo, pend, &[], |b, p, _| {
            panel(b, p, 4);
            vec![]
        });
        if !units.is_multiple_of(4) {
            let has_tail = b.ins().icmp(cranelift_codegen::ir::condcodes::IntCC::UnsignedGreaterThan, phi, nfull);
            if_then(b, has_tail, |b| {
                let p = iconst(b, units / 4);
                panel(b, p, units % 4);
            });
        }
        if let Some(f) = env.softmax.filter(|_| softmax) {
            let n = iconst(b, units);
            b.ins().call(f, &[out, n]);
        }
    }
}
