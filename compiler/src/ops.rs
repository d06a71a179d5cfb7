//! The operators a graph node can hold, with Keras semantics (NHWC, batch dimension left out of shapes).
//!
//! Everything that follows from an op alone lives here: output shape from input shapes, the weight
//! tensors it needs (names and Keras layouts), parameter and MAC counts. The spec stage builds ops,
//! the graph stores them, passes rewrite them, the interpreter and the back end execute them.

use std::fmt;

/// Shape of one batch item: `[H, W, C]` for feature maps, `[C]` for vectors. The batch size is dynamic.
pub type Shape = Vec<usize>;

/// The largest number of elements one activation of one batch item may have (1 Gi floats = 4 GiB).
pub const MAX_TENSOR_ELEMS: usize = 1 << 30;
/// The largest single dimension accepted anywhere (sizes, filters, kernels, strides).
pub const MAX_DIM: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Pads {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Pads {
    pub fn is_zero(&self) -> bool {
        *self == Pads::default()
    }
}

/// How a windowed op pads its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Padding {
    /// No padding.
    Valid,
    /// Keras `padding="same"`: output = ceil(input / stride); the odd extra row/column goes bottom/right.
    Same,
    /// Explicit zero padding (what a folded ZeroPadding2D becomes).
    Explicit(Pads),
}

impl Padding {
    /// Resolves the padding for an input of `h`x`w` with the given window and strides.
    pub fn pads(&self, h: usize, w: usize, k: [usize; 2], s: [usize; 2]) -> Pads {
        match *self {
            Padding::Valid => Pads::default(),
            Padding::Explicit(p) => p,
            Padding::Same => {
                let total = |n: usize, k: usize, s: usize| {
                    let out = n.div_ceil(s);
                    ((out.saturating_sub(1)) * s + k).saturating_sub(n)
                };
                let (th, tw) = (total(h, k[0], s[0]), total(w, k[1], s[1]));
                Pads { top: th / 2, bottom: th - th / 2, left: tw / 2, right: tw - tw / 2 }
            }
        }
    }
}

impl fmt::Display for Padding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Padding::Valid => write!(f, "valid"),
            Padding::Same => write!(f, "same"),
            Padding::Explicit(p) => write!(f, "pads(t{},b{},l{},r{})", p.top, p.bottom, p.left, p.right),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    Linear,
    Relu,
    Softmax,
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Activation::Linear => "linear",
            Activation::Relu => "relu",
            Activation::Softmax => "softmax",
        })
    }
}

/// A 2-D convolution, possibly with a fused epilogue (set by the optimizer, never by a spec).
///
/// Computes, per output element: `y = conv(x, kernel) + bias`; then `relu` if set; then, if `residual`,
/// adds the node's second input; then `relu_after_add` if set.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    pub filters: usize,
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub padding: Padding,
    pub bias: bool,
    pub relu: bool,
    pub residual: bool,
    pub relu_after_add: bool,
}

impl Conv {
    pub fn new(filters: usize, kernel: [usize; 2], strides: [usize; 2], padding: Padding, bias: bool) -> Conv {
        Conv { filters, kernel, strides, padding, bias, relu: false, residual: false, relu_after_add: false }
    }
}

/// A pooling window.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub size: [usize; 2],
    pub strides: [usize; 2],
    /// `Same` pads with values that never win (max) or are not counted (average), as Keras does.
    pub padding: Padding,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// The model input; `shape` is `[H, W, C]`.
    Input {
        shape: Shape,
    },
    /// Keras ZeroPadding2D.
    ZeroPad(Pads),
    Conv(Conv),
    /// Inference-mode batch normalization over the channel (last) axis, with moving statistics.
    BatchNorm {
        epsilon: f32,
    },
    Relu,
    /// Softmax over the last axis.
    Softmax,
    /// Elementwise sum of two or more inputs of one shape.
    Add,
    MaxPool(Pool),
    AvgPool(Pool),
    GlobalAvgPool,
    GlobalMaxPool,
    /// NHWC-order flatten to a vector (a free reshape).
    Flatten,
    Dense {
        units: usize,
        activation: Activation,
        bias: bool,
    },
}

/// Why an op cannot take the shapes it is given; the message names what was expected and found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapeError(pub String);

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn fmt_shape(s: &[usize]) -> String {
    let inner: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", inner.join(", "))
}

fn out_dim(n: usize, pad: usize, k: usize, s: usize) -> Option<usize> {
    let padded = n.checked_add(pad)?;
    if padded < k {
        return None;
    }
    Some((padded - k) / s + 1)
}

fn elems(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl Op {
    /// The op's name as written in specs.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::ZeroPad(_) => "zero_padding",
            Op::Conv(_) => "conv",
            Op::BatchNorm { .. } => "batch_norm",
            Op::Relu => "relu",
            Op::Softmax => "softmax",
            Op::Add => "add",
            Op::MaxPool(_) => "max_pool",
            Op::AvgPool(_) => "avg_pool",
            Op::GlobalAvgPool => "global_avg_pool",
            Op::GlobalMaxPool => "global_max_pool",
            Op::Flatten => "flatten",
            Op::Dense { .. } => "dense",
        }
    }

    /// How many inputs the op takes: (min, max).
    pub fn arity(&self) -> (usize, usize) {
        match self {
            Op::Input { .. } => (0, 0),
            Op::Add => (2, usize::MAX),
            Op::Conv(c) if c.residual => (2, 2),
            _ => (1, 1),
        }
    }

    /// Infers the output shape from the input shapes.
    pub fn infer(&self, inputs: &[&[usize]]) -> Result<Shape, ShapeError> {
        let (lo, hi) = self.arity();
        if inputs.len() < lo || inputs.len() > hi {
            return Err(ShapeError(format!(
                "`{}` takes {} input(s), found {}",
                self.kind(),
                if lo == hi {
                    lo.to_string()
                } else if hi == usize::MAX {
                    format!("{lo} or more")
                } else {
                    format!("{lo} to {hi}")
                },
                inputs.len()
            )));
        }
        let map = |i: usize| -> Result<(usize, usize, usize), ShapeError> {
            match inputs[i] {
                [h, w, c] => Ok((*h, *w, *c)),
                s => Err(ShapeError(format!(
                    "`{}` expects a feature map [H, W, C], found a tensor of shape {}",
                    self.kind(),
                    fmt_shape(s)
                ))),
            }
        };
        let out = match self {
            Op::Input { shape } => shape.clone(),
            Op::ZeroPad(p) => {
                let (h, w, c) = map(0)?;
                let h2 = h.checked_add(p.top).and_then(|x| x.checked_add(p.bottom));
                let w2 = w.checked_add(p.left).and_then(|x| x.checked_add(p.right));
                match (h2, w2) {
                    (Some(h2), Some(w2)) => vec![h2, w2, c],
                    _ => return Err(ShapeError("padding overflows the tensor size".into())),
                }
            }
            Op::Conv(cv) => {
                let (h, w, _c) = map(0)?;
                let p = cv.padding.pads(h, w, cv.kernel, cv.strides);
                let oh = out_dim(h, p.top + p.bottom, cv.kernel[0], cv.strides[0]);
                let ow = out_dim(w, p.left + p.right, cv.kernel[1], cv.strides[1]);
                let (Some(oh), Some(ow)) = (oh, ow) else {
                    return Err(ShapeError(format!(
                        "kernel {}x{} is larger than the padded input {}x{} (input shape {}, padding {})",
                        cv.kernel[0],
                        cv.kernel[1],
                        h + p.top + p.bottom,
                        w + p.left + p.right,
                        fmt_shape(inputs[0]),
                        cv.padding
                    )));
                };
                let out = vec![oh, ow, cv.filters];
                if cv.residual && inputs[1] != out.as_slice() {
                    return Err(ShapeError(format!(
                        "residual input has shape {}, the convolution's output is {}",
                        fmt_shape(inputs[1]),
                        fmt_shape(&out)
                    )));
                }
                out
            }
            Op::MaxPool(pl) | Op::AvgPool(pl) => {
                let (h, w, c) = map(0)?;
                let p = pl.padding.pads(h, w, pl.size, pl.strides);
                let oh = out_dim(h, p.top + p.bottom, pl.size[0], pl.strides[0]);
                let ow = out_dim(w, p.left + p.right, pl.size[1], pl.strides[1]);
                let (Some(oh), Some(ow)) = (oh, ow) else {
                    return Err(ShapeError(format!(
                        "pool window {}x{} is larger than the padded input {}x{} (input shape {})",
                        pl.size[0],
                        pl.size[1],
                        h + p.top + p.bottom,
                        w + p.left + p.right,
                        fmt_shape(inputs[0])
                    )));
                };
                vec![oh, ow, c]
            }
            Op::BatchNorm { .. } | Op::Relu | Op::Softmax => inputs[0].to_vec(),
            Op::Add => {
                let first = inputs[0];
                for (i, s) in inputs.iter().enumerate().skip(1) {
                    if *s != first {
                        return Err(ShapeError(format!(
                            "`add` needs inputs of one shape: input 1 is {}, input {} is {}",
                            fmt_shape(first),
                            i + 1,
                            fmt_shape(s)
                        )));
                    }
                }
                first.to_vec()
            }
            Op::GlobalAvgPool | Op::GlobalMaxPool => {
                let (_, _, c) = map(0)?;
                vec![c]
            }
            Op::Flatten => {
                let n = elems(inputs[0]).ok_or_else(|| ShapeError("flatten overflows".into()))?;
                vec![n]
            }
            Op::Dense { units, .. } => match inputs[0] {
                [_] => vec![*units],
                s => {
                    return Err(ShapeError(format!(
                        "`dense` expects a vector [C] (add `flatten` or a global pool before it), found a tensor of shape {}",
                        fmt_shape(s)
                    )))
                }
            },
        };
        if out.contains(&0) {
            return Err(ShapeError(format!("the output shape {} has an empty dimension", fmt_shape(&out))));
        }
        match elems(&out) {
            Some(n) if n <= MAX_TENSOR_ELEMS => Ok(out),
            _ => Err(ShapeError(format!(
                "the output shape {} is larger than the limit of {} elements per batch item",
                fmt_shape(&out),
                MAX_TENSOR_ELEMS
            ))),
        }
    }

    /// The weight tensors this op reads, as (name, Keras-layout shape), given its first input's shape.
    /// A node's tensors are keyed `<node name>.<weight name>` in weights files.
    pub fn weights(&self, input: &[usize]) -> Vec<(&'static str, Shape)> {
        match self {
            Op::Conv(c) => {
                let cin = input.last().copied().unwrap_or(0);
                let mut v = vec![("kernel", vec![c.kernel[0], c.kernel[1], cin, c.filters])];
                if c.bias {
                    v.push(("bias", vec![c.filters]));
                }
                v
            }
            Op::BatchNorm { .. } => {
                let c = input.last().copied().unwrap_or(0);
                ["gamma", "beta", "moving_mean", "moving_variance"].into_iter().map(|n| (n, vec![c])).collect()
            }
            Op::Dense { units, bias, .. } => {
                let cin = input.last().copied().unwrap_or(0);
                let mut v = vec![("kernel", vec![cin, *units])];
                if *bias {
                    v.push(("bias", vec![*units]));
                }
                v
            }
            _ => vec![],
        }
    }

    /// Parameters as Keras counts them (BatchNorm's moving statistics included).
    pub fn params(&self, input: &[usize]) -> usize {
        self.weights(input).iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// Multiply-accumulates per batch item (convolutions and dense layers; others count 0).
    pub fn macs(&self, input: &[usize], output: &[usize]) -> u64 {
        match self {
            Op::Conv(c) => {
                let cin = *input.last().unwrap_or(&0) as u64;
                output.iter().map(|&d| d as u64).product::<u64>() * (c.kernel[0] * c.kernel[1]) as u64 * cin
            }
            Op::Dense { units, .. } => *input.last().unwrap_or(&0) as u64 * *units as u64,
            _ => 0,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Input { shape } => write!(f, "input {}", fmt_shape(shape)),
            Op::ZeroPad(p) => write!(f, "zero_padding t{} b{} l{} r{}", p.top, p.bottom, p.left, p.right),
            Op::Conv(c) => {
                write!(
                    f,
                    "conv {}x{}/{}x{} {} filters={}{}",
                    c.kernel[0],
                    c.kernel[1],
                    c.strides[0],
                    c.strides[1],
                    c.padding,
                    c.filters,
                    if c.bias { "" } else { " no-bias" }
                )?;
                if c.relu {
                    write!(f, " +relu")?;
                }
                if c.residual {
                    write!(f, " +add")?;
                }
                if c.relu_after_add {
                    write!(f, " +relu")?;
                }
                Ok(())
            }
            Op::BatchNorm { epsilon } => write!(f, "batch_norm eps={epsilon}"),
            Op::MaxPool(p) | Op::AvgPool(p) => {
                write!(f, "{} {}x{}/{}x{} {}", self.kind(), p.size[0], p.size[1], p.strides[0], p.strides[1], p.padding)
            }
            Op::Dense { units, activation, bias } => {
                write!(f, "dense units={units} activation={activation}{}", if *bias { "" } else { " no-bias" })
            }
            _ => f.write_str(self.kind()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keras_same_padding_puts_the_extra_row_bottom_right() {
        // 64 input, stride 2, kernel 3: out 32, total pad = 31*2+3-64 = 1 -> top 0, bottom 1.
        let p = Padding::Same.pads(64, 64, [3, 3], [2, 2]);
        assert_eq!(p, Pads { top: 0, bottom: 1, left: 0, right: 1 });
        // stride 1, kernel 3: total pad 2 -> 1/1.
        assert_eq!(Padding::Same.pads(7, 7, [3, 3], [1, 1]), Pads { top: 1, bottom: 1, left: 1, right: 1 });
        // kernel 4, stride 1: total 3 -> top 1, bottom 2.
        assert_eq!(Padding::Same.pads(5, 5, [4, 4], [1, 1]), Pads { top: 1, bottom: 2, left: 1, right: 2 });
    }

    #[test]
    fn conv_shapes() {
        let c = Op::Conv(Conv::new(64, [7, 7], [2, 2], Padding::Valid, true));
        assert_eq!(c.infer(&[&[70, 70, 3]]).unwrap(), vec![32, 32, 64]);
        assert_eq!(c.params(&[70, 70, 3]), 7 * 7 * 3 * 64 + 64);
        assert_eq!(c.macs(&[70, 70, 3], &[32, 32, 64]), 32 * 32 * 64 * 49 * 3);
        let e = c.infer(&[&[5, 5, 3]]).unwrap_err();
        assert!(e.0.contains("kernel 7x7 is larger than the padded input 5x5"), "{e}");
        let s = Op::Conv(Conv::new(8, [3, 3], [2, 2], Padding::Same, false));
        assert_eq!(s.infer(&[&[7, 9, 3]]).unwrap(), vec![4, 5, 8]);
    }

    #[test]
    fn dense_needs_a_vector() {
        let d = Op::Dense { units: 6, activation: Activation::Softmax, bias: true };
        assert_eq!(d.infer(&[&[2048]]).unwrap(), vec![6]);
        assert!(d.infer(&[&[2, 2, 3]]).unwrap_err().0.contains("expects a vector"));
        assert_eq!(d.params(&[2048]), 2048 * 6 + 6);
    }

    #[test]
    fn add_and_pools() {
        assert!(Op::Add.infer(&[&[4, 4, 8], &[4, 4, 16]]).unwrap_err().0.contains("[4, 4, 16]"));
        let mp = Op::MaxPool(Pool { size: [3, 3], strides: [2, 2], padding: Padding::Valid });
        assert_eq!(mp.infer(&[&[32, 32, 64]]).unwrap(), vec![15, 15, 64]);
        assert_eq!(Op::GlobalAvgPool.infer(&[&[7, 7, 2048]]).unwrap(), vec![2048]);
        assert_eq!(Op::Flatten.infer(&[&[2, 3, 4]]).unwrap(), vec![24]);
    }

    #[test]
    fn absurd_sizes_are_refused() {
        let c = Op::Conv(Conv::new(1 << 20, [1, 1], [1, 1], Padding::Valid, true));
        assert!(c.infer(&[&[4096, 4096, 3]]).unwrap_err().0.contains("larger than the limit"));
    }
}
