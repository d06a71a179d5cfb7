//! proptest "problems": random single-convolution models (kernel 1–7, stride 1–3, valid/same, 1–70
//! channels, maps 1–40, batch 1–3, with and without BatchNorm, ReLU, a residual add and ReLU after it),
//! compiled end to end — optimizer fusion, Winograd dispatch, JIT — and compared with the reference
//! interpreter on the unoptimized graph within 1e-4 relative. Cases proptest finds are kept below as
//! named regression tests.

mod common;

use common::{input, randomize, worst};
use proptest::prelude::*;
use resnetc_compiler::backend::BackendOptions;
use resnetc_compiler::codegen::x86::Isa;
use resnetc_compiler::{Model, Options};

#[derive(Clone, Debug)]
struct Case {
    h: usize,
    w: usize,
    cin: usize,
    cout: usize,
    k: [usize; 2],
    s: [usize; 2],
    same: bool,
    bias: bool,
    bn: bool,
    relu: bool,
    residual: bool,
    relu_after: bool,
    batch: usize,
}

fn spec(c: &Case) -> String {
    let conv = |name: &str, inputs: &str| {
        format!(
            "  - {{op: conv, name: {name}, inputs: {inputs}, filters: {}, kernel: [{}, {}], strides: [{}, {}], padding: {}, bias: {}}}\n",
            c.cout,
            c.k[0],
            c.k[1],
            c.s[0],
            c.s[1],
            if c.same { "same" } else { "valid" },
            c.bias
        )
    };
    let mut s = format!("input: [{}, {}, {}]\nlayers:\n", c.h, c.w, c.cin);
    if c.residual {
        s += &conv("other", "input");
    }
    s += &conv("main", "input");
    if c.bn {
        s += "  - {op: batch_norm, name: bn}\n";
    }
    if c.relu {
        s += "  - {op: relu, name: r1}\n";
    }
    if c.residual {
        s += "  - {op: add, name: add, shortcut: other}\n";
        if c.relu_after {
            s += "  - {op: relu, name: r2}\n";
        }
    }
    s
}

fn check(c: &Case) -> Result<(), String> {
    let mut m = Model::from_str("case.yaml", &spec(c), &Options::default())
        .map_err(|e| format!("spec rejected: {e}\n{}", spec(c)))?;
    randomize(&mut m.weights, 5);
    let x = input(&[c.h, c.w, c.cin], c.batch, 9);
    let want = m.run_reference(x.view()).map_err(|e| e.to_string())?;
    for isa in Isa::available() {
        for threads in [1, 2] {
            let compiled = m
                .compile(&BackendOptions { threads, verify: true, isa, ..Default::default() })
                .map_err(|e| format!("compile: {e}"))?;
            let got = compiled.run(x.view()).map_err(|e| e.to_string())?;
            let (d, s) = worst(&got, &want);
            if d > 1e-4 * s + 1e-6 {
                return Err(format!("{isa}, {threads} thread(s): JIT differs by {d} (scale {s}) on\n{}", spec(c)));
            }
        }
    }
    Ok(())
}

fn cases() -> impl Strategy<Value = Case> {
    (
        (1usize..=40, 1usize..=40, 1usize..=70, 1usize..=70),
        (1usize..=7, 1usize..=7, 1usize..=3, 1usize..=3, any::<bool>()),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), 1usize..=3),
    )
        .prop_map(|((h, w, cin, cout), (kh, kw, sh, sw, same), (bias, bn, relu, residual, relu_after, batch))| {
            Case { h, w, cin, cout, k: [kh, kw], s: [sh, sw], same, bias, bn, relu, residual, relu_after, batch }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn random_convolutions_match_the_reference(c in cases()) {
        // A valid-padded kernel larger than the map is a spec error, not a back-end problem.
        prop_assume!(c.same || (c.h >= c.k[0] && c.w >= c.k[1]));
        check(&c).map_err(TestCaseError::fail)?;
    }
}

fn case(h: usize, w: usize, cin: usize, cout: usize, k: usize, s: usize, same: bool) -> Case {
    Case {
        h,
        w,
        cin,
        cout,
        k: [k, k],
        s: [s, s],
        same,
        bias: true,
        bn: true,
        relu: true,
        residual: true,
        relu_after: true,
        batch: 2,
    }
}

/// A 3x3 stride-1 same conv on a map that Winograd takes (4x4 tiles), channels not multiples of 4.
#[test]
fn regression_winograd_odd_channels() {
    check(&case(17, 13, 7, 9, 3, 1, true)).unwrap();
}

/// A 2x2 map: Winograd declines, the direct kernel with edge tiles runs.
#[test]
fn regression_tiny_map_direct() {
    check(&case(2, 2, 70, 66, 3, 1, true)).unwrap();
}

/// A 7x7 kernel with stride 3 and Keras same padding (pads 2 top/left, 3 bottom/right on 20).
#[test]
fn regression_large_kernel_stride_3_same() {
    check(&case(20, 19, 3, 5, 7, 3, true)).unwrap();
}

/// A 1x1 map with a 1x1 kernel and one channel.
#[test]
fn regression_single_pixel() {
    check(&case(1, 1, 1, 1, 1, 1, false)).unwrap();
}

/// 7x7 stride-2 convolutions of 1-4 channels without residual run as the polyphase Winograd stem kernel:
/// ResNet-50's stem shape on a small map (same padding, BatchNorm and ReLU folded, batch 2), and an odd
/// valid map of one channel.
#[test]
fn regression_winograd_stem() {
    let stem = |h, w, cin, cout, same| Case { residual: false, relu_after: false, ..case(h, w, cin, cout, 7, 2, same) };
    check(&stem(23, 30, 3, 64, true)).unwrap();
    check(&stem(15, 9, 1, 6, false)).unwrap();
}
