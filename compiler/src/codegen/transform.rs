//! Winograd transform math shared by the Winograd and stem kernels: the matrices of F(2x2, 3x3),
//! F(4x4, 3x3) and F(3x3, 4x4) (rows of Bᵀ, G and Aᵀ, derived by Toom-Cook and checked numerically), and the
//! emitter of `L d Lᵀ` on f32x4 values ([`transform2d`]), which turns ±1 coefficients into adds and
//! subtracts and skips zeros.

use super::util::zero4;
use cranelift_codegen::ir::{types, InstBuilder, Value};
use cranelift_frontend::FunctionBuilder;

/// Output tile size of the Winograd algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WinogradTile {
    /// F(2x2, 3x3): 16 multiplications per 4 outputs (2.25x fewer than direct), transforms with 0/±1 only.
    F2,
    /// F(4x4, 3x3): 36 multiplications per 16 outputs (4x fewer), larger transform constants.
    F4,
}

// F(2x2, 3x3) and F(4x4, 3x3).
pub const BT2: [[f64; 4]; 4] = [[1., 0., -1., 0.], [0., 1., 1., 0.], [0., -1., 1., 0.], [0., 1., 0., -1.]];
pub const G2: [[f64; 3]; 4] = [[1., 0., 0.], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0., 0., 1.]];
pub const AT2: [[f64; 4]; 2] = [[1., 1., 1., 0.], [0., 1., -1., -1.]];

pub const BT4: [[f64; 6]; 6] = [
    [4., 0., -5., 0., 1., 0.],
    [0., -4., -4., 1., 1., 0.],
    [0., 4., -4., -1., 1., 0.],
    [0., -2., -1., 2., 1., 0.],
    [0., 2., -1., -2., 1., 0.],
    [0., 4., 0., -5., 0., 1.],
];
pub const G4: [[f64; 3]; 6] = [
    [1. / 4., 0., 0.],
    [-1. / 6., -1. / 6., -1. / 6.],
    [-1. / 6., 1. / 6., -1. / 6.],
    [1. / 24., 1. / 12., 1. / 6.],
    [1. / 24., -1. / 12., 1. / 6.],
    [0., 0., 1.],
];
pub const AT4: [[f64; 6]; 4] =
    [[1., 1., 1., 1., 1., 0.], [0., 1., -1., 2., -2., 0.], [0., 1., 1., 4., 4., 0.], [0., 1., -1., 8., -8., 1.]];

/// The transform matrices of one tile size as row vectors: (Bᵀ: a x a, G: a x 3, Aᵀ: m x a).
pub struct Mats {
    pub bt: Vec<Vec<f64>>,
    pub g: Vec<Vec<f64>>,
    pub at: Vec<Vec<f64>>,
}

pub fn mats(tile: WinogradTile) -> Mats {
    match tile {
        WinogradTile::F2 => Mats {
            bt: BT2.iter().map(|r| r.to_vec()).collect(),
            g: G2.iter().map(|r| r.to_vec()).collect(),
            at: AT2.iter().map(|r| r.to_vec()).collect(),
        },
        WinogradTile::F4 => Mats {
            bt: BT4.iter().map(|r| r.to_vec()).collect(),
            g: G4.iter().map(|r| r.to_vec()).collect(),
            at: AT4.iter().map(|r| r.to_vec()).collect(),
        },
    }
}

/// G of F(3x3, 4x4) (points 0, ±1, ±2, ∞; its Bᵀ is F(4x4, 3x3)'s).
pub const G34: [[f64; 4]; 6] = [
    [1. / 4., 0., 0., 0.],
    [-1. / 6., -1. / 6., -1. / 6., -1. / 6.],
    [-1. / 6., 1. / 6., -1. / 6., 1. / 6.],
    [1. / 24., 1. / 12., 1. / 6., 1. / 3.],
    [1. / 24., -1. / 12., 1. / 6., -1. / 3.],
    [0., 0., 0., 1.],
];
/// Aᵀ of F(3x3, 4x4).
pub const AT34: [[f64; 6]; 3] = [[1., 1., 1., 1., 1., 0.], [0., 1., -1., 2., -2., 0.], [0., 1., 1., 4., 4., 1.]];

/// Splat of an f32 constant.
pub fn splat(b: &mut FunctionBuilder, c: f64) -> Value {
    let x = b.ins().f32const(c as f32);
    b.ins().splat(types::F32X4, x)
}

/// `sum_k coef[k] * xs[k]` with ±1 as add/sub and zero terms skipped.
pub fn lincomb(b: &mut FunctionBuilder, coef: &[f64], xs: &[Value]) -> Value {
    let mut acc: Option<Value> = None;
    for (&c, &x) in coef.iter().zip(xs) {
        if c == 0.0 {
            continue;
        }
        acc = Some(match acc {
            None if c == 1.0 => x,
            None if c == -1.0 => b.ins().fneg(x),
            None => {
                let s = splat(b, c);
                b.ins().fmul(s, x)
            }
            Some(v) if c == 1.0 => b.ins().fadd(v, x),
            Some(v) if c == -1.0 => b.ins().fsub(v, x),
            Some(v) => {
                let s = splat(b, c);
                b.ins().fma(s, x, v)
            }
        });
    }
    acc.unwrap_or_else(|| zero4(b))
}

/// `L d Lᵀ` for `d` (a x a, row-major) and `L` (rows x a): returns rows x rows, row-major.
pub fn transform2d(b: &mut FunctionBuilder, l: &[Vec<f64>], d: &[Value], a: usize) -> Vec<Value> {
    let n = l.len();
    // t[i][x] = sum_y L[i][y] d[y][x]
    let mut t = vec![];
    for li in l {
        for x in 0..a {
            let col: Vec<Value> = (0..a).map(|y| d[y * a + x]).collect();
            t.push(lincomb(b, li, &col));
        }
    }
    let mut o = vec![];
    for i in 0..n {
        for lj in l {
            o.push(lincomb(b, lj, &t[i * a..(i + 1) * a]));
        }
    }
    o
}
