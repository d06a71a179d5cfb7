//! The reference implementation of every [`Op`]: plain ndarray loops, the numerical oracle the
//! compiled kernels are checked against.
//!
//! It is written to be obviously correct, not fast: every output element is computed on its own
//! from the definition, with no layout tricks, no im2col, no fusion beyond what an op itself says.
//! Nothing here may depend on the optimizer or the back end.
//!
//! Data in: the op's inputs as batched views — feature maps 4-D `[N, H, W, C]` (NHWC), vectors 2-D
//! `[N, C]` — and its weights, in the order and Keras layouts [`Op::weights`] lists for the input's
//! per-item shape (conv kernel `[kh, kw, cin, cout]`, dense kernel `[in, out]`, ...). Data out: one
//! owned batched array. Shapes are assumed validated by the caller (`Op::infer`); mismatches stop
//! with an `assert!` naming what was wrong.
//!
//! Numerics (Keras inference mode, f32 in and out): every reduction — the sums of convolutions and
//! dense layers (bias included), average pools and softmax denominators — is accumulated in f64 and
//! rounded to f32 once, so the oracle's own rounding error is negligible next to any f32 kernel's.
//! Elementwise work (batch norm, relu, residual and `add` sums) is done in f32, as Keras does.

use ndarray::{Array, Array2, Array4, ArrayD, ArrayView1, ArrayView2, ArrayView4, ArrayViewD, Axis};
use ndarray::{Ix1, Ix2, Ix4, IxDyn};

use crate::ops::{Activation, Conv, Op, Pads, Pool};

/// Evaluates one op on a batch. Feature maps are 4-D NHWC, vectors 2-D [N, C]. `weights` are in the order
/// and Keras layouts given by `op.weights(input shape without batch)`.
///
/// `Input` returns `inputs[0]` (the model input) unchanged. A fused conv takes its residual as
/// `inputs[1]`; `Add` takes any number (two or more) of inputs of one shape.
pub fn eval(op: &Op, inputs: &[ArrayViewD<f32>], weights: &[ArrayViewD<f32>]) -> ArrayD<f32> {
    let (lo, hi) = match op {
        Op::Input { .. } => (1, 1),
        _ => op.arity(),
    };
    assert!(
        (lo..=hi).contains(&inputs.len()),
        "reference: `{}` takes {lo}{} input(s), got {}",
        op.kind(),
        if hi == lo {
            String::new()
        } else if hi == usize::MAX {
            " or more".into()
        } else {
            format!("..={hi}")
        },
        inputs.len()
    );
    assert!(
        inputs[0].ndim() >= 2,
        "reference: `{}` input must be batched (rank >= 2), got shape {:?}",
        op.kind(),
        inputs[0].shape()
    );
    let expected = op.weights(&inputs[0].shape()[1..]);
    assert_eq!(weights.len(), expected.len(), "reference: `{}` takes {} weight tensor(s)", op.kind(), expected.len());
    for ((name, shape), w) in expected.iter().zip(weights) {
        assert_eq!(w.shape(), shape.as_slice(), "reference: `{}` weight `{name}` has the wrong shape", op.kind());
    }

    let x = &inputs[0];
    match op {
        Op::Input { .. } => x.to_owned(),
        Op::ZeroPad(p) => zero_pad(fmap(x), p).into_dyn(),
        Op::Conv(c) => {
            let residual = inputs.get(1).map(fmap);
            conv(c, fmap(x), w4(&weights[0]), weights.get(1).map(w1), residual).into_dyn()
        }
        Op::BatchNorm { epsilon } => {
            batch_norm(x, w1(&weights[0]), w1(&weights[1]), w1(&weights[2]), w1(&weights[3]), *epsilon)
        }
        Op::Relu => x.mapv(relu),
        Op::Softmax => softmax_last_axis(x.to_owned()),
        Op::Add => {
            let mut sum = x.to_owned();
            for (i, other) in inputs.iter().enumerate().skip(1) {
                assert_eq!(other.shape(), x.shape(), "reference: `add` input {} differs in shape from input 0", i);
                sum += other;
            }
            sum
        }
        Op::MaxPool(p) => pool(p, fmap(x), true).into_dyn(),
        Op::AvgPool(p) => pool(p, fmap(x), false).into_dyn(),
        Op::GlobalAvgPool => global_pool(fmap(x), false).into_dyn(),
        Op::GlobalMaxPool => global_pool(fmap(x), true).into_dyn(),
        Op::Flatten => {
            // `iter()` walks in logical row-major order whatever the memory layout: NHWC order.
            let n = x.shape()[0];
            let per_item: usize = x.shape()[1..].iter().product();
            Array::from_shape_vec(IxDyn(&[n, per_item]), x.iter().copied().collect())
                .expect("element count is n * per_item")
        }
        Op::Dense { activation, .. } => {
            let x = x
                .view()
                .into_dimensionality::<Ix2>()
                .unwrap_or_else(|_| panic!("reference: `dense` input must be [N, C], got {:?}", x.shape()));
            let kernel = weights[0].view().into_dimensionality::<Ix2>().expect("checked against op.weights");
            let y = dense(x, kernel, weights.get(1).map(w1)).into_dyn();
            match activation {
                Activation::Linear => y,
                Activation::Relu => y.mapv(relu),
                Activation::Softmax => softmax_last_axis(y),
            }
        }
    }
}

fn fmap<'a>(a: &'a ArrayViewD<'_, f32>) -> ArrayView4<'a, f32> {
    a.view()
        .into_dimensionality::<Ix4>()
        .unwrap_or_else(|_| panic!("reference: expected a 4-D NHWC feature map, got shape {:?}", a.shape()))
}

fn w4<'a>(a: &'a ArrayViewD<'_, f32>) -> ArrayView4<'a, f32> {
    a.view().into_dimensionality::<Ix4>().expect("checked against op.weights")
}

fn w1<'a>(a: &'a ArrayViewD<'_, f32>) -> ArrayView1<'a, f32> {
    a.view().into_dimensionality::<Ix1>().expect("checked against op.weights")
}

/// Relu as Keras computes it: NaN passes through (IEEE: NaN is not less than 0).
fn relu(v: f32) -> f32 {
    if v < 0.0 {
        0.0
    } else {
        v
    }
}

/// IEEE 754-2019 `maximum`: NaN if either operand is NaN (Keras's max pooling propagates NaN; `f32::max`
/// would drop it).
fn max_nan(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

/// Output length of a window sliding over `n` elements padded by `pad_total`.
fn out_len(n: usize, pad_total: usize, k: usize, s: usize) -> usize {
    assert!(s >= 1, "reference: stride must be at least 1");
    assert!(n + pad_total >= k, "reference: window {k} is larger than the padded input {}", n + pad_total);
    (n + pad_total - k) / s + 1
}

/// The window taps of output position `o` that land on real input: `(tap index, input index)`.
/// Taps falling into the padding (before `pad_before` or past `n`) are skipped.
fn taps(o: usize, stride: usize, k: usize, pad_before: usize, n: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..k).filter_map(move |ki| {
        let pos = o * stride + ki; // position in the padded input
        (pos >= pad_before && pos - pad_before < n).then(|| (ki, pos - pad_before))
    })
}

fn zero_pad(x: ArrayView4<f32>, p: &Pads) -> Array4<f32> {
    let (n, h, w, c) = x.dim();
    let mut out = Array4::zeros((n, h + p.top + p.bottom, w + p.left + p.right, c));
    for ((b, i, j, ch), &v) in x.indexed_iter() {
        out[[b, i + p.top, j + p.left, ch]] = v;
    }
    out
}

/// Convolution with zero padding, then the fused epilogue: relu, + residual, relu.
/// `conv + bias` is summed in f64 and rounded once; the epilogue is f32.
fn conv(
    c: &Conv,
    x: ArrayView4<f32>,
    k: ArrayView4<f32>,
    bias: Option<ArrayView1<f32>>,
    residual: Option<ArrayView4<f32>>,
) -> Array4<f32> {
    let (n, h, w, cin) = x.dim();
    let (kh, kw, kcin, cout) = k.dim();
    assert_eq!(kcin, cin, "reference: conv kernel expects {kcin} input channels, input has {cin}");
    let [sh, sw] = c.strides;
    let p = c.padding.pads(h, w, c.kernel, c.strides);
    let oh = out_len(h, p.top + p.bottom, kh, sh);
    let ow = out_len(w, p.left + p.right, kw, sw);

    let mut y = Array4::from_shape_fn((n, oh, ow, cout), |(b, oy, ox, co)| {
        let mut acc = bias.map_or(0.0, |bias| bias[co] as f64);
        for (ky, iy) in taps(oy, sh, kh, p.top, h) {
            for (kx, ix) in taps(ox, sw, kw, p.left, w) {
                for ci in 0..cin {
                    acc += x[[b, iy, ix, ci]] as f64 * k[[ky, kx, ci, co]] as f64;
                }
            }
        }
        acc as f32
    });

    if c.relu {
        y.mapv_inplace(relu);
    }
    if c.residual {
        let r = residual.expect("reference: a residual conv needs its second input");
        assert_eq!(r.shape(), y.shape(), "reference: residual shape differs from the conv output");
        y += &r;
    }
    if c.relu_after_add {
        y.mapv_inplace(relu);
    }
    y
}

/// `y = (x - mean) * (gamma / sqrt(var + eps)) + beta` per channel (last axis), in f32.
fn batch_norm(
    x: &ArrayViewD<f32>,
    gamma: ArrayView1<f32>,
    beta: ArrayView1<f32>,
    mean: ArrayView1<f32>,
    var: ArrayView1<f32>,
    eps: f32,
) -> ArrayD<f32> {
    let scale: Vec<f32> = gamma.iter().zip(var.iter()).map(|(&g, &v)| g / (v + eps).sqrt()).collect();
    let mut y = x.to_owned();
    let last = Axis(y.ndim() - 1);
    for mut lane in y.lanes_mut(last) {
        for (c, v) in lane.iter_mut().enumerate() {
            *v = (*v - mean[c]) * scale[c] + beta[c];
        }
    }
    y
}

/// Numerically stable softmax over the last axis: `exp(x - max)` and its sum in f64, divided, rounded once.
fn softmax_last_axis(mut a: ArrayD<f32>) -> ArrayD<f32> {
    let last = Axis(a.ndim() - 1);
    for mut lane in a.lanes_mut(last) {
        let max = lane.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let e: Vec<f64> = lane.iter().map(|&v| (v as f64 - max as f64).exp()).collect();
        let sum: f64 = e.iter().sum();
        for (o, &ei) in lane.iter_mut().zip(&e) {
            *o = (ei / sum) as f32;
        }
    }
    a
}

/// Max or average pooling. Padded positions — `Same` or `Explicit` alike — are not part of the window:
/// they never win a max and are not counted in an average (the divisor is the number of real input
/// elements under the window). A window lying entirely in padding (possible only with explicit pads)
/// yields 0.0, which is what zero padding would give.
fn pool(p: &Pool, x: ArrayView4<f32>, max: bool) -> Array4<f32> {
    let (n, h, w, c) = x.dim();
    let [kh, kw] = p.size;
    let [sh, sw] = p.strides;
    let pads = p.padding.pads(h, w, p.size, p.strides);
    let oh = out_len(h, pads.top + pads.bottom, kh, sh);
    let ow = out_len(w, pads.left + pads.right, kw, sw);
    Array4::from_shape_fn((n, oh, ow, c), |(b, oy, ox, ch)| {
        let (mut best, mut sum, mut count) = (f32::NEG_INFINITY, 0.0f64, 0usize);
        for (_, iy) in taps(oy, sh, kh, pads.top, h) {
            for (_, ix) in taps(ox, sw, kw, pads.left, w) {
                let v = x[[b, iy, ix, ch]];
                best = max_nan(best, v);
                sum += v as f64;
                count += 1;
            }
        }
        match (count, max) {
            (0, _) => 0.0,
            (_, true) => best,
            (_, false) => (sum / count as f64) as f32,
        }
    })
}

/// `[N, H, W, C] -> [N, C]`: max, or mean (summed in f64) over H and W.
fn global_pool(x: ArrayView4<f32>, max: bool) -> Array2<f32> {
    let (n, h, w, c) = x.dim();
    Array2::from_shape_fn((n, c), |(b, ch)| {
        let window = x.slice(ndarray::s![b, .., .., ch]);
        if max {
            window.fold(f32::NEG_INFINITY, |m, &v| max_nan(m, v))
        } else {
            (window.iter().map(|&v| v as f64).sum::<f64>() / (h * w) as f64) as f32
        }
    })
}

/// `x[N, in] @ kernel[in, out] + bias`, summed in f64 and rounded once.
fn dense(x: ArrayView2<f32>, kernel: ArrayView2<f32>, bias: Option<ArrayView1<f32>>) -> Array2<f32> {
    let (n, cin) = x.dim();
    let (kin, units) = kernel.dim();
    assert_eq!(kin, cin, "reference: dense kernel expects {kin} inputs, got {cin}");
    Array2::from_shape_fn((n, units), |(b, u)| {
        let mut acc = bias.map_or(0.0, |bias| bias[u] as f64);
        for i in 0..cin {
            acc += x[[b, i]] as f64 * kernel[[i, u]] as f64;
        }
        acc as f32
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Padding;

    fn arr(shape: &[usize], data: &[f32]) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(shape), data.to_vec()).expect("test data matches its shape")
    }

    fn run(op: &Op, inputs: &[&ArrayD<f32>], weights: &[&ArrayD<f32>]) -> ArrayD<f32> {
        let i: Vec<_> = inputs.iter().map(|a| a.view()).collect();
        let w: Vec<_> = weights.iter().map(|a| a.view()).collect();
        eval(op, &i, &w)
    }

    #[track_caller]
    fn close(got: &ArrayD<f32>, shape: &[usize], want: &[f32]) {
        assert_eq!(got.shape(), shape, "shape");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "element {i}: got {g}, want {w}\n{got}");
        }
    }

    fn conv_op(filters: usize, k: [usize; 2], s: [usize; 2], padding: Padding, bias: bool) -> Op {
        Op::Conv(Conv::new(filters, k, s, padding, bias))
    }

    fn pool_op(max: bool, size: [usize; 2], strides: [usize; 2], padding: Padding) -> Op {
        let p = Pool { size, strides, padding };
        if max {
            Op::MaxPool(p)
        } else {
            Op::AvgPool(p)
        }
    }

    #[test]
    fn input_zero_pad_relu() {
        let x = arr(&[1, 1, 2, 1], &[1.0, -2.0]);
        assert_eq!(run(&Op::Input { shape: vec![1, 2, 1] }, &[&x], &[]), x);
        assert_eq!(run(&Op::Relu, &[&x], &[]), arr(&[1, 1, 2, 1], &[1.0, 0.0]));
        let pad = Op::ZeroPad(Pads { top: 1, bottom: 0, left: 0, right: 2 });
        let y = run(&pad, &[&arr(&[1, 1, 1, 1], &[7.0])], &[]);
        close(&y, &[1, 2, 3, 1], &[0.0, 0.0, 0.0, 7.0, 0.0, 0.0]);
    }

    #[test]
    fn conv_1x1_and_strides() {
        // One pixel (10, 100), kernel[0,0,ci,co] = [[1, 2], [3, 4]]: out[co] = sum_ci x[ci] * k[ci][co].
        let x = arr(&[1, 1, 1, 2], &[10.0, 100.0]);
        let k = arr(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
        close(&run(&conv_op(2, [1, 1], [1, 1], Padding::Valid, false), &[&x], &[&k]), &[1, 1, 1, 2], &[310.0, 420.0]);
        // Stride [1, 2] on a 1x4 row keeps columns 0 and 2.
        let x = arr(&[1, 1, 4, 1], &[1.0, 2.0, 3.0, 4.0]);
        let y = run(&conv_op(1, [1, 1], [1, 2], Padding::Valid, false), &[&x], &[&arr(&[1, 1, 1, 1], &[3.0])]);
        close(&y, &[1, 1, 2, 1], &[3.0, 9.0]);
    }

    #[test]
    fn conv_kernel_layout_kh_kw_cin_cout() {
        // 2x1 kernel, 2 in, 2 out, on pixels (1, 2) above (3, 4). Kernel flat index = ((ky*1+kx)*2+ci)*2+co.
        let x = arr(&[1, 2, 1, 2], &[1.0, 2.0, 3.0, 4.0]);
        let k = arr(&[2, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        // co0 = 1*1 + 2*3 + 3*5 + 4*7 = 50; co1 = 1*2 + 2*4 + 3*6 + 4*8 = 60.
        close(&run(&conv_op(2, [2, 1], [1, 1], Padding::Valid, false), &[&x], &[&k]), &[1, 1, 1, 2], &[50.0, 60.0]);
    }

    #[test]
    fn conv_3x3_valid_is_a_dot_product() {
        let x = arr(&[1, 3, 3, 1], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
        let k = arr(&[3, 3, 1, 1], &[1.0, 0.0, -1.0, 2.0, 0.0, -2.0, 1.0, 0.0, -1.0]);
        // 1 - 3 + 8 - 12 + 7 - 9 = -8
        close(&run(&conv_op(1, [3, 3], [1, 1], Padding::Valid, false), &[&x], &[&k]), &[1, 1, 1, 1], &[-8.0]);
    }

    #[test]
    fn conv_3x3_same_stride_1_counts_real_taps() {
        let x = ArrayD::ones(IxDyn(&[1, 3, 3, 1]));
        let k = ArrayD::ones(IxDyn(&[3, 3, 1, 1]));
        let y = run(&conv_op(1, [3, 3], [1, 1], Padding::Same, false), &[&x], &[&k]);
        close(&y, &[1, 3, 3, 1], &[4.0, 6.0, 4.0, 6.0, 9.0, 6.0, 4.0, 6.0, 4.0]);
    }

    #[test]
    fn conv_3x3_same_stride_2_pads_bottom_right() {
        // 4x4 input x[i][j] = 4i + j; out 2x2; total pad 1 -> top/left 0, bottom/right 1. All-ones kernel:
        // (0,0): rows 0-2 x cols 0-2 = 45; (0,1): rows 0-2 x cols 2-3 = 39;
        // (1,0): rows 2-3 x cols 0-2 = 66; (1,1): 10 + 11 + 14 + 15 = 50.
        let x = ArrayD::from_shape_fn(IxDyn(&[1, 4, 4, 1]), |i| (4 * i[1] + i[2]) as f32);
        let k = ArrayD::ones(IxDyn(&[3, 3, 1, 1]));
        let y = run(&conv_op(1, [3, 3], [2, 2], Padding::Same, false), &[&x], &[&k]);
        close(&y, &[1, 2, 2, 1], &[45.0, 39.0, 66.0, 50.0]);
    }

    #[test]
    fn conv_bias_and_epilogue_order() {
        // 1x1 conv, weight 2, bias -3, on [0, 1, 2, 3] -> [-3, -1, 1, 3]; residual [-5, 1, -2, 0.5].
        let x = arr(&[1, 1, 4, 1], &[0.0, 1.0, 2.0, 3.0]);
        let r = arr(&[1, 1, 4, 1], &[-5.0, 1.0, -2.0, 0.5]);
        let (k, b) = (arr(&[1, 1, 1, 1], &[2.0]), arr(&[1], &[-3.0]));
        let cases: [(bool, bool, bool, [f32; 4]); 6] = [
            (false, false, false, [-3.0, -1.0, 1.0, 3.0]),
            (true, false, false, [0.0, 0.0, 1.0, 3.0]),
            (false, true, false, [-8.0, 0.0, -1.0, 3.5]),
            (true, true, false, [-5.0, 1.0, -1.0, 3.5]),
            (false, true, true, [0.0, 0.0, 0.0, 3.5]),
            (true, true, true, [0.0, 1.0, 0.0, 3.5]),
        ];
        for (relu, residual, relu_after_add, want) in cases {
            let mut c = Conv::new(1, [1, 1], [1, 1], Padding::Valid, true);
            (c.relu, c.residual, c.relu_after_add) = (relu, residual, relu_after_add);
            let inputs: Vec<&ArrayD<f32>> = if residual { vec![&x, &r] } else { vec![&x] };
            close(&run(&Op::Conv(c), &inputs, &[&k, &b]), &[1, 1, 4, 1], &want);
        }
    }

    #[test]
    fn batch_norm_per_channel() {
        // sqrt(var + eps) = [2, 0.5]; gamma [2, 0.5] -> scale [1, 1]; mean [3, -2], beta [1, -1].
        let op = Op::BatchNorm { epsilon: 0.01 };
        let (g, b) = (arr(&[2], &[2.0, 0.5]), arr(&[2], &[1.0, -1.0]));
        let (m, v) = (arr(&[2], &[3.0, -2.0]), arr(&[2], &[3.99, 0.24]));
        let x = arr(&[1, 1, 2, 2], &[5.0, -1.0, 1.0, -3.0]);
        close(&run(&op, &[&x], &[&g, &b, &m, &v]), &[1, 1, 2, 2], &[3.0, 0.0, -1.0, -2.0]);
        // gamma 3 / sqrt(4) = 1.5: (5 - 3) * 1.5 + 1 = 4 on a 2-D input.
        let (g, v) = (arr(&[2], &[3.0, 0.5]), arr(&[2], &[3.99, 0.24]));
        close(&run(&op, &[&arr(&[1, 2], &[5.0, -1.0])], &[&g, &b, &m, &v]), &[1, 2], &[4.0, 0.0]);
    }

    #[test]
    fn softmax_and_add() {
        let e = |v: f64| v.exp();
        let s = e(-2.0) + e(-1.0) + 1.0;
        let want = [(e(-2.0) / s) as f32, (e(-1.0) / s) as f32, (1.0 / s) as f32];
        let y = run(&Op::Softmax, &[&arr(&[2, 3], &[1.0, 2.0, 3.0, 1000.0, 1001.0, 1002.0])], &[]);
        close(&y, &[2, 3], &[want, want].concat());
        for row in y.rows() {
            assert!((row.sum() - 1.0).abs() < 1e-6);
        }
        let (a, b, c) = (arr(&[1, 2], &[1.0, 2.0]), arr(&[1, 2], &[10.0, 20.0]), arr(&[1, 2], &[100.0, 200.0]));
        close(&run(&Op::Add, &[&a, &b, &c], &[]), &[1, 2], &[111.0, 222.0]);
    }

    #[test]
    fn max_pool_padding_never_wins() {
        let x = arr(&[1, 2, 2, 1], &[-1.0, -2.0, -3.0, -4.0]);
        let y = run(&pool_op(true, [3, 3], [1, 1], Padding::Same), &[&x], &[]);
        close(&y, &[1, 2, 2, 1], &[-1.0; 4]);
        // 2x2 same, stride 1: the pad row/column is bottom/right.
        let y = run(&pool_op(true, [2, 2], [1, 1], Padding::Same), &[&x], &[]);
        close(&y, &[1, 2, 2, 1], &[-1.0, -2.0, -3.0, -4.0]);
        // Explicit pads top/left 1: windows see only their real elements.
        let x = arr(&[1, 2, 2, 1], &[-4.0, -3.0, -2.0, -1.0]);
        let ex = Padding::Explicit(Pads { top: 1, bottom: 0, left: 1, right: 0 });
        close(&run(&pool_op(true, [2, 2], [1, 1], ex), &[&x], &[]), &[1, 2, 2, 1], &[-4.0, -3.0, -2.0, -1.0]);
    }

    #[test]
    fn avg_pool_counts_only_real_elements() {
        let x = arr(&[1, 2, 2, 1], &[1.0, 2.0, 3.0, 4.0]);
        close(&run(&pool_op(false, [3, 3], [1, 1], Padding::Same), &[&x], &[]), &[1, 2, 2, 1], &[2.5; 4]);
        // 3x3 input 1..9: corner (1+2+4+5)/4 = 3, edge (1+..+6)/6 = 3.5, centre 5.
        let x = arr(&[1, 3, 3, 1], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
        let y = run(&pool_op(false, [3, 3], [1, 1], Padding::Same), &[&x], &[]);
        close(&y, &[1, 3, 3, 1], &[3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0]);
        let x = arr(&[1, 2, 2, 1], &[1.0, 2.0, 3.0, 4.0]);
        let ex = Padding::Explicit(Pads { top: 1, bottom: 0, left: 1, right: 0 });
        close(&run(&pool_op(false, [2, 2], [1, 1], ex), &[&x], &[]), &[1, 2, 2, 1], &[1.0, 1.5, 2.0, 2.5]);
    }

    #[test]
    fn pool_window_all_in_padding_gives_zero() {
        let ex = Padding::Explicit(Pads { top: 2, bottom: 0, left: 0, right: 0 });
        for max in [true, false] {
            let y = run(&pool_op(max, [1, 1], [1, 1], ex), &[&arr(&[1, 1, 1, 1], &[-5.0])], &[]);
            close(&y, &[1, 3, 1, 1], &[0.0, 0.0, -5.0]);
        }
    }

    #[test]
    fn valid_pools() {
        let x = ArrayD::from_shape_fn(IxDyn(&[1, 4, 4, 1]), |i| (4 * i[1] + i[2]) as f32);
        let y = run(&pool_op(true, [2, 2], [2, 2], Padding::Valid), &[&x], &[]);
        close(&y, &[1, 2, 2, 1], &[5.0, 7.0, 13.0, 15.0]);
        let y = run(&pool_op(false, [2, 2], [2, 2], Padding::Valid), &[&x], &[]);
        close(&y, &[1, 2, 2, 1], &[2.5, 4.5, 10.5, 12.5]);
        // 3x3 valid stride 2 on 4x4 drops the last row/column: one window, rows/cols 0-2.
        close(&run(&pool_op(true, [3, 3], [2, 2], Padding::Valid), &[&x], &[]), &[1, 1, 1, 1], &[10.0]);
        close(&run(&pool_op(false, [3, 3], [2, 2], Padding::Valid), &[&x], &[]), &[1, 1, 1, 1], &[5.0]);
    }

    #[test]
    fn global_pools() {
        // Channel 0: 1, 2, 3, 4; channel 1: -1, -5, -3, -2.
        let x = arr(&[1, 2, 2, 2], &[1.0, -1.0, 2.0, -5.0, 3.0, -3.0, 4.0, -2.0]);
        close(&run(&Op::GlobalAvgPool, &[&x], &[]), &[1, 2], &[2.5, -2.75]);
        close(&run(&Op::GlobalMaxPool, &[&x], &[]), &[1, 2], &[4.0, -1.0]);
    }

    #[test]
    fn flatten_is_nhwc_order() {
        let (h, w, c) = (2, 3, 2);
        let x = ArrayD::from_shape_fn(IxDyn(&[1, h, w, c]), |i| (100 * i[1] + 10 * i[2] + i[3]) as f32);
        let y = run(&Op::Flatten, &[&x], &[]);
        assert_eq!(y.shape(), &[1, h * w * c]);
        for (hi, wi, ci) in (0..h).flat_map(|a| (0..w).flat_map(move |b| (0..c).map(move |d| (a, b, d)))) {
            assert_eq!(y[[0, (hi * w + wi) * c + ci]], (100 * hi + 10 * wi + ci) as f32);
        }
        // A non-standard memory layout still flattens in logical order.
        let t = x.clone().permuted_axes(IxDyn(&[0, 2, 1, 3])); // [1, w, h, c]
        let yt = eval(&Op::Flatten, &[t.view()], &[]);
        assert_eq!(yt[[0, 2]], 100.0); // (w=0, h=1, c=0)
    }

    #[test]
    fn dense_with_activations() {
        // kernel rows: in0 -> (1, 0, -1), in1 -> (0, 1, 1); x = (1, 2).
        let x = arr(&[1, 2], &[1.0, 2.0]);
        let k = arr(&[2, 3], &[1.0, 0.0, -1.0, 0.0, 1.0, 1.0]);
        let dense = |activation| Op::Dense { units: 3, activation, bias: true };
        let b = arr(&[3], &[0.0, -3.0, 0.0]);
        close(&run(&dense(Activation::Linear), &[&x], &[&k, &b]), &[1, 3], &[1.0, -1.0, 1.0]);
        close(&run(&dense(Activation::Relu), &[&x], &[&k, &b]), &[1, 3], &[1.0, 0.0, 1.0]);
        // Logits (1, 2, 2) -> (e^-1, 1, 1) / (e^-1 + 2).
        let b = arr(&[3], &[0.0, 0.0, 1.0]);
        let s = (-1.0f64).exp() + 2.0;
        let want = [((-1.0f64).exp() / s) as f32, (1.0 / s) as f32, (1.0 / s) as f32];
        close(&run(&dense(Activation::Softmax), &[&x], &[&k, &b]), &[1, 3], &want);
        let no_bias = Op::Dense { units: 3, activation: Activation::Linear, bias: false };
        close(&run(&no_bias, &[&x], &[&k]), &[1, 3], &[1.0, 2.0, 1.0]);
    }

    #[test]
    fn batch_items_are_independent() {
        // Item 0 all ones, item 1 all twos: 3x3 same all-ones conv gives 4/6/9 and twice that.
        let x = ArrayD::from_shape_fn(IxDyn(&[2, 3, 3, 1]), |i| (i[0] + 1) as f32);
        let k = ArrayD::ones(IxDyn(&[3, 3, 1, 1]));
        let y = run(&conv_op(1, [3, 3], [1, 1], Padding::Same, false), &[&x], &[&k]);
        let one = [4.0, 6.0, 4.0, 6.0, 9.0, 6.0, 4.0, 6.0, 4.0];
        close(&y, &[2, 3, 3, 1], &[one, one.map(|v| 2.0 * v)].concat());
        close(&run(&Op::GlobalAvgPool, &[&x], &[]), &[2, 1], &[1.0, 2.0]);
        let p = run(&pool_op(true, [2, 2], [2, 2], Padding::Same), &[&x], &[]);
        close(&p, &[2, 2, 2, 1], &[1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]);
        let f = run(&Op::Flatten, &[&x], &[]);
        let d = Op::Dense { units: 1, activation: Activation::Linear, bias: false };
        close(&run(&d, &[&f], &[&ArrayD::ones(IxDyn(&[9, 1]))]), &[2, 1], &[9.0, 18.0]);
        // Each item alone gives the same as in the batch.
        for b in 0..2 {
            let item = x.slice_axis(Axis(0), (b..b + 1).into()).to_owned();
            let yb = run(&conv_op(1, [3, 3], [1, 1], Padding::Same, false), &[&item], &[&k]);
            assert_eq!(yb, y.slice_axis(Axis(0), (b..b + 1).into()));
        }
    }
}
