//! Tests of the generated kernels against naive nested-loop references.

use super::conv::{ConvPlan, GemmTiling};
use super::dense::DensePlan;
use super::elementwise::SoftmaxPlan;
use super::pool::{GlobalPoolPlan, PoolKind, WindowPoolPlan};
use super::*;
use crate::lower::{select_conv, Rules};
use crate::ops::{Activation, Conv, Padding, Pads, Pool};
use proptest::prelude::*;
use resnetc_runtime::{AlignedBuf, Buf, KernelArgs, ProgramBuilder, ThreadPool};
use std::sync::Arc;

fn opts() -> SessionOptions {
    SessionOptions { verify: true, ..SessionOptions::default() }
}

/// One-thread rules with Winograd off (the conv tests exercise the GEMM and Strassen families).
fn rules() -> Rules {
    Rules { winograd: false, ..Rules::for_threads(1) }
}

/// Rules with this GEMM tiling.
fn gemm_rules(gemm: GemmTiling) -> Rules {
    Rules { gemm, ..rules() }
}

/// Compiles `conv` on `input` as the rules select.
fn compile_conv(
    s: &mut Session,
    name: &str,
    conv: &Conv,
    input: [usize; 3],
    r: &Rules,
    kernel: &[f32],
    bias: Option<&[f32]>,
) -> Result<Kernel, String> {
    let algo = select_conv(conv, input, r)?;
    s.compile(name, crate::lower::KernelOp::Conv(algo).family(), &LayerWeights::kernel(kernel, bias))
        .map_err(|e| e.to_string())
}

/// A deterministic pseudo-random vector in [-1, 1), shared by the codegen tests.
pub(crate) fn rnd(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Calls a kernel on one batch item, task by task (in reverse order), on the calling thread; the work
/// buffer starts full of NaN (in the runtime it holds whatever the previous kernel left).
pub(crate) fn call(code: &JitCode, k: &Kernel, input: &[f32], input2: Option<&[f32]>) -> Vec<f32> {
    let out_len: usize = k.out_shape.iter().product();
    // Guard floats around the output catch out-of-bounds stores.
    let guard = 64;
    let mut out = AlignedBuf::zeroed(out_len + 2 * guard);
    out.as_mut_slice().fill(f32::from_bits(0x7fc0_dead));
    let consts = AlignedBuf::from_slice(&k.consts);
    let mut work = AlignedBuf::zeroed(k.work_floats.max(1));
    work.as_mut_slice().fill(f32::NAN);
    let inp = AlignedBuf::from_slice(input);
    let in2 = input2.map(AlignedBuf::from_slice);
    let args = KernelArgs {
        input: inp.as_ptr(),
        input2: in2.as_ref().map_or(std::ptr::null(), |b| b.as_ptr()),
        output: unsafe { out.as_mut_ptr().add(guard) },
        consts: consts.as_ptr(),
    };
    let f = code.kernel(k.id);
    // Run tasks in reverse order, one at a time, to check that they are independent.
    for t in (0..k.ntasks).rev() {
        unsafe { f(&args, work.as_mut_ptr(), t, t + 1) };
    }
    let s = out.as_slice();
    for g in s[..guard].iter().chain(&s[guard + out_len..]) {
        assert_eq!(g.to_bits(), 0x7fc0_dead, "kernel wrote outside its output");
    }
    s[guard..guard + out_len].to_vec()
}

#[derive(Clone, Debug)]
struct ConvCase {
    h: usize,
    w: usize,
    cin: usize,
    cout: usize,
    k: [usize; 2],
    s: [usize; 2],
    padding: Padding,
    bias: bool,
    relu: bool,
    residual: bool,
    relu_after_add: bool,
}

fn naive_conv(c: &ConvCase, x: &[f32], wt: &[f32], bias: &[f32], res: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let p = c.padding.pads(c.h, c.w, c.k, c.s);
    let oh = (c.h + p.top + p.bottom - c.k[0]) / c.s[0] + 1;
    let ow = (c.w + p.left + p.right - c.k[1]) / c.s[1] + 1;
    let mut y = vec![0f32; oh * ow * c.cout];
    for oy in 0..oh {
        for ox in 0..ow {
            for n in 0..c.cout {
                let mut acc = 0f64;
                for ky in 0..c.k[0] {
                    for kx in 0..c.k[1] {
                        let iy = (oy * c.s[0] + ky) as isize - p.top as isize;
                        let ix = (ox * c.s[1] + kx) as isize - p.left as isize;
                        if iy < 0 || ix < 0 || iy >= c.h as isize || ix >= c.w as isize {
                            continue;
                        }
                        for ci in 0..c.cin {
                            let xv = x[(iy as usize * c.w + ix as usize) * c.cin + ci] as f64;
                            let wv = wt[((ky * c.k[1] + kx) * c.cin + ci) * c.cout + n] as f64;
                            acc += xv * wv;
                        }
                    }
                }
                if c.bias {
                    acc += bias[n] as f64;
                }
                if c.relu {
                    acc = relu64(acc);
                }
                let o = (oy * ow + ox) * c.cout + n;
                if c.residual {
                    acc += res[o] as f64;
                }
                if c.relu_after_add {
                    acc = relu64(acc);
                }
                y[o] = acc as f32;
            }
        }
    }
    (vec![oh, ow, c.cout], y)
}

/// Relu as Keras computes it: NaN passes (`f64::max` would turn it into 0).
fn relu64(v: f64) -> f64 {
    if v < 0.0 {
        0.0
    } else {
        v
    }
}

fn conv_op(c: &ConvCase) -> Conv {
    let mut op = Conv::new(c.cout, c.k, c.s, c.padding, c.bias);
    op.relu = c.relu;
    op.residual = c.residual;
    op.relu_after_add = c.relu_after_add;
    op
}

fn check_close(got: &[f32], want: &[f32], what: &str) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{what}: length {} != {}", got.len(), want.len()));
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-4 * w.abs().max(1.0);
        if g.is_nan() || (g - w).abs() > tol {
            return Err(format!("{what}: element {i}: got {g}, want {w}"));
        }
    }
    Ok(())
}

fn run_conv_case(c: &ConvCase, tiling: Option<Rules>) -> Result<(), String> {
    let x = rnd(c.h * c.w * c.cin, 1);
    let wt = rnd(c.k[0] * c.k[1] * c.cin * c.cout, 2);
    let bias = rnd(c.cout, 3);
    let p = c.padding.pads(c.h, c.w, c.k, c.s);
    let oh = (c.h + p.top + p.bottom - c.k[0]) / c.s[0] + 1;
    let ow = (c.w + p.left + p.right - c.k[1]) / c.s[1] + 1;
    let res = rnd(oh * ow * c.cout, 4);
    let (shape, want) = naive_conv(c, &x, &wt, &bias, &res);
    let r = tiling.unwrap_or_else(rules);
    let mut s = Session::with_options(opts()).map_err(|e| e.to_string())?;
    let k = compile_conv(&mut s, "conv", &conv_op(c), [c.h, c.w, c.cin], &r, &wt, c.bias.then_some(&bias[..]))?;
    if k.out_shape != shape {
        return Err(format!("shape {:?} != {:?}", k.out_shape, shape));
    }
    let code = s.finish().map_err(|e| e.to_string())?;
    let got = call(&code, &k, &x, c.residual.then_some(&res[..]));
    check_close(&got, &want, &format!("{c:?}"))
}

fn small_tiling() -> Rules {
    // Tiny blocks: exercises K blocking (first/middle/last), channel chunks and many tasks on small shapes.
    gemm_rules(GemmTiling { kc: 8, mc_tiles: 1, nc_panels: 1, min_tasks: 1, unroll: 3, ..GemmTiling::default() })
}

fn case(h: usize, w: usize, cin: usize, cout: usize, k: usize, s: usize, padding: Padding) -> ConvCase {
    ConvCase {
        h,
        w,
        cin,
        cout,
        k: [k, k],
        s: [s, s],
        padding,
        bias: true,
        relu: false,
        residual: false,
        relu_after_add: false,
    }
}

#[test]
fn codegen_conv_1x1_direct() {
    run_conv_case(&case(6, 8, 16, 8, 1, 1, Padding::Valid), None).unwrap();
    run_conv_case(&case(7, 7, 64, 36, 1, 1, Padding::Same), None).unwrap();
}

#[test]
fn codegen_conv_3x3_same_with_epilogue() {
    let mut c = case(9, 11, 13, 10, 3, 1, Padding::Same);
    c.relu = true;
    c.residual = true;
    c.relu_after_add = true;
    run_conv_case(&c, None).unwrap();
    run_conv_case(&c, Some(small_tiling())).unwrap();
}

#[test]
fn codegen_conv_k_blocking_and_channel_chunks() {
    // cin > kc: channel chunks (cin=300 -> 2 chunks of 150 at kc=256; 3 chunks of 7 + padding at kc=8).
    let c = case(5, 4, 300, 9, 1, 1, Padding::Valid);
    run_conv_case(&c, None).unwrap();
    run_conv_case(&c, Some(small_tiling())).unwrap();
    let c = case(6, 5, 19, 5, 3, 2, Padding::Same);
    run_conv_case(&c, Some(small_tiling())).unwrap();
    let c = case(8, 8, 9, 7, 3, 1, Padding::Explicit(Pads { top: 2, bottom: 0, left: 1, right: 3 }));
    run_conv_case(&c, Some(small_tiling())).unwrap();
}

#[test]
fn codegen_conv_resnet_stem_like() {
    // 7x7/2 same on 3 channels (K = 147, odd).
    let mut c = case(20, 18, 3, 16, 7, 2, Padding::Same);
    c.relu = true;
    run_conv_case(&c, None).unwrap();
}

#[test]
fn codegen_conv_edge_cases() {
    let mut cases = vec![
        case(1, 1, 4, 4, 1, 1, Padding::Valid),   // M = 1: a single one-row tile
        case(1, 1, 1, 1, 7, 3, Padding::Same),    // 7x7 window over a 1x1 map, all padding but the centre
        case(7, 7, 1, 70, 3, 3, Padding::Valid),  // cin = 1, stride 3
        case(40, 1, 5, 3, 5, 2, Padding::Same),   // a column map
        case(7, 7, 512, 6, 1, 1, Padding::Valid), // M = 49: balanced 10-row tiles, 2 channel chunks
        case(14, 14, 3, 5, 2, 2, Padding::Same),  // even kernel: Keras puts the extra padding bottom/right
    ];
    cases[2].bias = false;
    cases[3].residual = true;
    cases[4].relu = true;
    cases[4].residual = true;
    cases[4].relu_after_add = true;
    for c in &cases {
        run_conv_case(c, None).unwrap();
        run_conv_case(c, Some(small_tiling())).unwrap();
    }
}

/// Tiny maps (M <= `prefetch_max_m`) run in the streaming order with the weight prefetch: every row tile of
/// a task packed first, then per panel all tiles (see `ConvPlan::prefetch`).
#[test]
fn codegen_conv_streaming_order() {
    let mut cases = vec![
        case(2, 2, 512, 70, 3, 1, Padding::Same), // notebook stage 5 shape, narrower: packed, tail panel
        case(4, 4, 37, 9, 1, 1, Padding::Valid),  // direct 1x1, M = 16: two 8-row tiles
        case(5, 4, 24, 13, 1, 1, Padding::Valid), // direct, M = 20: two 10-row tiles
        case(4, 6, 7, 6, 3, 1, Padding::Same),    // M = 24: 12-row tiles (unroll 2 with prefetch)
        case(7, 7, 16, 8, 3, 3, Padding::Same),   // stride 3: M = 9, one 9-row tile
        case(8, 8, 30, 5, 1, 2, Padding::Valid),  // stride-2 1x1, packed
    ];
    cases[0].relu = true;
    cases[1].residual = true;
    cases[1].relu_after_add = true;
    cases[3].bias = false;
    // Many tasks with one tile each, and with a remainder tile alone in the last task.
    let many = gemm_rules(GemmTiling { mc_tiles: 1, nc_panels: 1, min_tasks: 64, ..GemmTiling::default() });
    for c in &cases {
        let p = ConvPlan::new(&conv_op(c), [c.h, c.w, c.cin], &GemmTiling::default()).unwrap();
        assert!(p.prefetch > 0 && p.k.blocks == 1, "{c:?} should stream");
        run_conv_case(c, None).unwrap();
        run_conv_case(c, Some(many.clone())).unwrap();
    }
}

/// Weight-bound layers (M <= `prefetch_max_m`) split their tasks by columns, so that each weight is read
/// from memory by one task only; larger maps split rows first. (ResNet-50's stage 5 on AVX-512, one thread:
/// the 7x7 3x3 convs 2.5 -> 1.5 ms, the 1x1 ones 1.0 -> 0.66 ms with rows split in two before.)
#[test]
fn codegen_conv_weight_bound_layers_split_columns() {
    let t = GemmTiling { min_tasks: 8, ..GemmTiling::for_tile(gemm::Tile::of(x86::Isa::Avx512)) };
    let plan = |c: &ConvCase| ConvPlan::new(&conv_op(c), [c.h, c.w, c.cin], &t).unwrap();
    // Direct 1x1, 16 panels of 32: two per task, all 49 rows in each.
    let p = plan(&case(7, 7, 2048, 512, 1, 1, Padding::Valid));
    assert_eq!((p.m.blocks, p.n.blocks), (1, 8), "{p:?}");
    // Packed A (each column block packs it again): at least two panels per task.
    let p = plan(&case(7, 7, 512, 512, 3, 1, Padding::Same));
    assert_eq!((p.m.blocks, p.n.blocks, p.n.panels_per_task), (1, 8, 2), "{p:?}");
    // Too few panels to share among the tasks: rows are split after all.
    let p = plan(&case(7, 7, 64, 64, 1, 1, Padding::Valid));
    assert!(p.m.blocks > 1, "{p:?}");
    // A 56x56 map splits rows first.
    let p = plan(&case(56, 56, 64, 256, 1, 1, Padding::Valid));
    assert!(p.m.blocks >= 8 && p.n.blocks == 1, "{p:?}");
}

/// The 7x7 stem copies whole kernel rows as one run where they lie inside the input; near the borders it
/// falls back to tap-by-tap copies. A map whose every output sees the border, and one block per kernel row.
#[test]
fn codegen_conv_kernel_row_runs() {
    let mut c = case(9, 8, 3, 6, 7, 2, Padding::Same);
    c.relu = true;
    run_conv_case(&c, None).unwrap();
    // kc = 21: one kernel row (7 taps x 3 channels) per K block.
    let kc21 = Rules { gemm: GemmTiling { kc: 21, ..small_tiling().gemm }, ..small_tiling() };
    run_conv_case(&c, Some(kc21)).unwrap();
    let c = case(30, 31, 3, 5, 7, 2, Padding::Same);
    run_conv_case(&c, None).unwrap();
}

#[test]
fn codegen_conv_strassen_matches_naive() {
    // Forced on for small channel counts: odd M (a missing bottom row), stride 2, partial last tiles,
    // several column blocks and tasks, every epilogue.
    let t = strassen_rules(6, 128);
    let mut cases = vec![
        case(7, 7, 64, 32, 1, 1, Padding::Valid),
        case(14, 14, 32, 16, 1, 1, Padding::Valid),
        case(13, 13, 16, 264, 1, 2, Padding::Same),
        case(5, 5, 8, 8, 1, 1, Padding::Valid),
        case(9, 3, 24, 40, 1, 1, Padding::Valid),
    ];
    let mut c = case(7, 7, 64, 32, 1, 1, Padding::Valid);
    c.residual = true;
    c.relu_after_add = true;
    cases.push(c.clone());
    c.relu = true;
    c.bias = false;
    cases.push(c);
    for c in &cases {
        assert!(is_strassen(c, &t), "{c:?}");
        run_conv_case(c, Some(t.clone())).unwrap();
        run_conv_case(c, Some(strassen_rules(1, 128))).unwrap();
        // Tasks by row count: 3 rows of the top half at most per task.
        run_conv_case(c, Some(strassen_rules(1, 3))).unwrap();
    }
    // Not for padded, larger kernels or channel counts that do not split into vectors.
    let no = [case(7, 7, 64, 32, 3, 1, Padding::Same), case(7, 7, 60, 32, 1, 1, Padding::Valid)];
    for c in &no {
        assert!(!is_strassen(c, &t), "{c:?}");
    }
}

/// Rules that run every 1x1 conv Strassen can compute as Strassen, with its task parameters.
fn strassen_rules(min_tasks: usize, task_rows: usize) -> Rules {
    Rules {
        strassen_min_m: 2,
        strassen_max_m: usize::MAX,
        strassen_min_k: 8,
        strassen_min_n: 8,
        strassen: strassen::StrassenTiling { min_tasks, task_rows, ..Default::default() },
        ..rules()
    }
}

fn is_strassen(c: &ConvCase, r: &Rules) -> bool {
    matches!(select_conv(&conv_op(c), [c.h, c.w, c.cin], r), Ok(crate::lower::ConvAlgo::Strassen(_)))
}

fn conv_case_strategy() -> impl Strategy<Value = ConvCase> {
    (
        (1usize..=7, 1usize..=7, 1usize..=3, 1usize..=3),
        (1usize..=70, 1usize..=70),
        (0usize..=40, 0usize..=40),
        any::<bool>(),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(|((kh, kw, sh, sw), (cin, cout), (dh, dw), same, (bias, relu, residual, raa))| {
            // Spatial size 1..=40 but at least the kernel size for valid padding.
            let h = if same { dh.max(1) } else { (kh + dh).min(40).max(kh) };
            let w = if same { dw.max(1) } else { (kw + dw).min(40).max(kw) };
            ConvCase {
                h,
                w,
                cin,
                cout,
                k: [kh, kw],
                s: [sh, sw],
                padding: if same { Padding::Same } else { Padding::Valid },
                bias,
                relu,
                residual,
                relu_after_add: raa,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn codegen_conv_matches_naive(c in conv_case_strategy()) {
        run_conv_case(&c, None).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn codegen_conv_matches_naive_small_blocks(c in conv_case_strategy()) {
        run_conv_case(&c, Some(small_tiling())).map_err(TestCaseError::fail)?;
    }

    /// Strassen on random 1x1 convs (forced on for any size): odd and even M, strides, channel counts
    /// of 8..96, every epilogue, 1-4 tasks or more by a random cap on a task's rows.
    #[test]
    fn codegen_conv_strassen_matches_naive_random(
        (h, w, s, cin8, cout8) in (1usize..=30, 1usize..=30, 1usize..=3, 1usize..=12, 1usize..=12),
        (bias, relu, residual, raa, tasks) in (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), 1usize..=4),
        task_rows in 1usize..=64,
    ) {
        let mut c = case(h, w, 8 * cin8, 8 * cout8, 1, s, Padding::Valid);
        (c.bias, c.relu, c.residual, c.relu_after_add) = (bias, relu, residual, raa);
        let t = strassen_rules(tasks, task_rows);
        let m = h.div_ceil(s) * w.div_ceil(s);
        prop_assert_eq!(is_strassen(&c, &t), m >= 2);
        run_conv_case(&c, Some(t)).map_err(TestCaseError::fail)?;
    }
}

// ---- pools and dense ----

fn naive_pool(kind: PoolKind, p: &Pool, [h, w, c]: [usize; 3], x: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let pads = p.padding.pads(h, w, p.size, p.strides);
    let oh = (h + pads.top + pads.bottom - p.size[0]) / p.strides[0] + 1;
    let ow = (w + pads.left + pads.right - p.size[1]) / p.strides[1] + 1;
    let mut y = vec![0f32; oh * ow * c];
    for oy in 0..oh {
        for ox in 0..ow {
            for ch in 0..c {
                let (mut m, mut s, mut n) = (f32::NEG_INFINITY, 0f64, 0usize);
                for ky in 0..p.size[0] {
                    for kx in 0..p.size[1] {
                        let iy = (oy * p.strides[0] + ky) as isize - pads.top as isize;
                        let ix = (ox * p.strides[1] + kx) as isize - pads.left as isize;
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        let v = x[(iy as usize * w + ix as usize) * c + ch];
                        m = m.max(v);
                        s += v as f64;
                        n += 1;
                    }
                }
                y[(oy * ow + ox) * c + ch] = match kind {
                    PoolKind::Max => m,
                    PoolKind::Avg => (s / n as f64) as f32,
                };
            }
        }
    }
    (vec![oh, ow, c], y)
}

#[test]
fn codegen_pools_match_naive() {
    // Channels: tails of 1-3 lanes, one and two groups of 8 vectors, a group plus 2 vectors plus 3 lanes.
    let shapes = [[7usize, 9, 5], [8, 8, 4], [1, 1, 3], [13, 6, 9], [5, 5, 64], [6, 5, 43]];
    let pools = [
        Pool { size: [3, 3], strides: [2, 2], padding: Padding::Same },
        Pool { size: [2, 2], strides: [2, 2], padding: Padding::Valid },
        Pool { size: [3, 2], strides: [1, 2], padding: Padding::Same },
        Pool { size: [1, 1], strides: [1, 1], padding: Padding::Valid },
        Pool { size: [4, 4], strides: [3, 3], padding: Padding::Same },
    ];
    for (si, shape) in shapes.iter().enumerate() {
        // All-negative inputs: a padded zero must never win the max.
        let x: Vec<f32> = rnd(shape.iter().product(), si as u64).iter().map(|v| v - 2.0).collect();
        for p in &pools {
            if p.padding == Padding::Valid && (shape[0] < p.size[0] || shape[1] < p.size[1]) {
                continue;
            }
            for kind in [PoolKind::Max, PoolKind::Avg] {
                let mut s = Session::with_options(opts()).unwrap();
                let plan = WindowPoolPlan::new(kind, p, *shape).unwrap();
                let k = s.compile("pool", &plan, &LayerWeights::default()).unwrap();
                let code = s.finish().unwrap();
                let (oshape, want) = naive_pool(kind, p, *shape, &x);
                assert_eq!(k.out_shape, oshape);
                let got = call(&code, &k, &x, None);
                check_close(&got, &want, &format!("{kind:?} {p:?} {shape:?}")).unwrap();
            }
        }
    }
}

#[test]
fn codegen_global_pools_match_naive() {
    for shape in [[7usize, 7, 2048], [2, 3, 5], [1, 1, 1], [4, 4, 6]] {
        let [h, w, c] = shape;
        let x = rnd(h * w * c, 9);
        for kind in [PoolKind::Avg, PoolKind::Max] {
            let mut s = Session::with_options(opts()).unwrap();
            let k = s.compile("gp", &GlobalPoolPlan::new(kind, shape).unwrap(), &LayerWeights::default()).unwrap();
            let code = s.finish().unwrap();
            let want: Vec<f32> = (0..c)
                .map(|ch| {
                    let vals = (0..h * w).map(|p| x[p * c + ch]);
                    match kind {
                        PoolKind::Avg => (vals.map(|v| v as f64).sum::<f64>() / (h * w) as f64) as f32,
                        PoolKind::Max => vals.fold(f32::NEG_INFINITY, f32::max),
                    }
                })
                .collect();
            check_close(&call(&code, &k, &x, None), &want, &format!("{kind:?} {shape:?}")).unwrap();
        }
    }
}

#[test]
fn codegen_dense_matches_naive() {
    for (cin, units) in [(2048usize, 1000usize), (7, 3), (16, 33), (1, 1), (5, 64)] {
        for act in [Activation::Linear, Activation::Relu, Activation::Softmax] {
            for bias in [true, false] {
                let x = rnd(cin, 1);
                let wt = rnd(cin * units, 2);
                let bv = rnd(units, 3);
                let mut s = Session::with_options(opts()).unwrap();
                let plan = DensePlan::new(cin, units, act, bias).unwrap();
                let k = s.compile("fc", &plan, &LayerWeights::kernel(&wt, bias.then_some(&bv[..]))).unwrap();
                let code = s.finish().unwrap();
                let mut want: Vec<f64> = (0..units)
                    .map(|u| {
                        (0..cin).map(|i| x[i] as f64 * wt[i * units + u] as f64).sum::<f64>()
                            + if bias { bv[u] as f64 } else { 0.0 }
                    })
                    .collect();
                match act {
                    Activation::Relu => want.iter_mut().for_each(|v| *v = relu64(*v)),
                    Activation::Softmax => {
                        let m = want.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let e: Vec<f64> = want.iter().map(|v| (v - m).exp()).collect();
                        let s: f64 = e.iter().sum();
                        want = e.iter().map(|v| v / s).collect();
                    }
                    Activation::Linear => {}
                }
                let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
                check_close(&call(&code, &k, &x, None), &want, &format!("dense {cin}x{units} {act}")).unwrap();
            }
        }
    }
}

#[test]
fn codegen_softmax_kernel() {
    let mut s = Session::with_options(opts()).unwrap();
    let k = s.compile("sm", &SoftmaxPlan::new(&[10]).unwrap(), &LayerWeights::default()).unwrap();
    let code = s.finish().unwrap();
    let x = rnd(10, 5);
    let got = call(&code, &k, &x, None);
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| (v - m).exp()).collect();
    let sum: f32 = e.iter().sum();
    let want: Vec<f32> = e.iter().map(|v| v / sum).collect();
    check_close(&got, &want, "softmax").unwrap();
}

// ---- a small program on the runtime, one thread vs two ----

fn tiny_net(threads: usize) -> (Vec<f32>, Vec<f32>) {
    let mut s = Session::with_options(opts()).unwrap();
    let (h, w, c) = (23, 19, 13);
    let w1 = rnd(3 * 3 * c * 24, 11);
    let b1 = rnd(24, 12);
    let mut c1 = Conv::new(24, [3, 3], [1, 1], Padding::Same, true);
    c1.relu = true;
    let r = rules();
    let mut k1 = compile_conv(&mut s, "c1", &c1, [h, w, c], &r, &w1, Some(&b1)).unwrap();
    let w2 = rnd(24 * 24, 13);
    let mut c2 = Conv::new(24, [1, 1], [1, 1], Padding::Valid, false);
    c2.residual = true;
    c2.relu_after_add = true;
    let mut k2 = compile_conv(&mut s, "c2", &c2, [h, w, 24], &r, &w2, None).unwrap();
    let pool = Pool { size: [3, 3], strides: [2, 2], padding: Padding::Same };
    let none = LayerWeights::default();
    let mut k3 = s.compile("mp", &WindowPoolPlan::new(PoolKind::Max, &pool, [h, w, 24]).unwrap(), &none).unwrap();
    let [ph, pw, _] = [k3.out_shape[0], k3.out_shape[1], 24];
    let mut k4 = s.compile("gap", &GlobalPoolPlan::new(PoolKind::Avg, [ph, pw, 24]).unwrap(), &none).unwrap();
    let w5 = rnd(24 * 10, 14);
    let fc = DensePlan::new(24, 10, Activation::Softmax, false).unwrap();
    let mut k5 = s.compile("fc", &fc, &LayerWeights::kernel(&w5, None)).unwrap();
    let code = s.finish().unwrap();
    let a1 = h * w * 24;
    let a3 = ph * pw * 24;
    let mut pb = ProgramBuilder::new(&[h, w, c], &[10]);
    // Arena: [c1 out | c2 out | mp out | gap out], each 16-float aligned.
    let al = resnetc_runtime::abi::align_floats;
    let (o1, o2) = (0, al(a1));
    let o3 = o2 + al(a1);
    let o4 = o3 + al(a3);
    pb.arena_floats(o4 + al(24));
    let mut step = |k: &mut Kernel, input: Buf, input2: Option<Buf>, output: Buf| {
        let st = k.step(&code, &mut pb, input, input2, output).unwrap();
        pb.push(st);
    };
    step(&mut k1, Buf::input(h * w * c), None, Buf::arena(o1, a1));
    step(&mut k2, Buf::arena(o1, a1), Some(Buf::arena(o1, a1)), Buf::arena(o2, a1));
    step(&mut k3, Buf::arena(o2, a1), None, Buf::arena(o3, a3));
    step(&mut k4, Buf::arena(o3, a3), None, Buf::arena(o4, 24));
    step(&mut k5, Buf::arena(o4, 24), None, Buf::output(10));
    pb.keep_alive(Box::new(code));
    let prog = pb.build(Arc::new(ThreadPool::new(threads))).unwrap();
    let x = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[2, h, w, c]), rnd(2 * h * w * c, 15)).unwrap();
    let y = prog.run(x.view()).unwrap();
    let y = y.as_slice().unwrap().to_vec();
    // Also run from two threads at once.
    let prog = Arc::new(prog);
    let hs: Vec<_> = (0..2)
        .map(|_| {
            let (p, x) = (prog.clone(), x.clone());
            std::thread::spawn(move || p.run(x.view()).unwrap().as_slice().unwrap().to_vec())
        })
        .collect();
    let ys: Vec<Vec<f32>> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    (y, ys.concat())
}

#[test]
fn codegen_program_multithreaded_matches_single_thread() {
    let (y1, y1c) = tiny_net(1);
    let (y2, y2c) = tiny_net(2);
    assert_eq!(y1, y2, "2 threads must give bit-identical results");
    assert_eq!(y1c, [y1.clone(), y1.clone()].concat());
    assert_eq!(y2c, [y2.clone(), y2].concat());
    let s: f32 = y1[..10].iter().sum();
    assert!((s - 1.0).abs() < 1e-5);
}

// ---- golden IR ----

fn golden(file: &str, got: String) {
    let path = format!("{}/src/codegen/golden/{file}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).expect("golden file missing: run with BLESS=1");
    assert_eq!(got, want, "IR of {file} changed; if intended, regenerate with BLESS=1");
}

fn golden_conv_ir(tiling: GemmTiling, cin: usize) -> String {
    let mut s = Session::with_options(SessionOptions { keep_ir: true, ..opts() }).unwrap();
    let mut c = Conv::new(4, [1, 1], [1, 1], Padding::Valid, true);
    c.relu = true;
    let wt = rnd(4 * cin, 1);
    let k = compile_conv(&mut s, "golden", &c, [1, 1, cin], &gemm_rules(tiling), &wt, Some(&[0.5; 4])).unwrap();
    k.clif.unwrap()
}

#[test]
fn codegen_golden_ir_conv1x1_c4() {
    golden(
        "conv1x1_c4.clif",
        golden_conv_ir(GemmTiling { prefetch_max_m: 0, prefetch_first_tile: false, ..GemmTiling::default() }, 4),
    );
}

/// The same conv with 8 input channels and the weight prefetch of tiny maps: a K loop of 4 steps per
/// iteration that calls the `preserve_all` prefetch stub once per iteration, 8 KB ahead.
#[test]
fn codegen_golden_ir_conv1x1_c8_prefetch() {
    let ir = golden_conv_ir(GemmTiling::default(), 8);
    assert!(ir.contains("preserve_all") && ir.contains("call fn0"), "{ir}");
    golden("conv1x1_c8_prefetch.clif", ir);
}

/// Writes the machine code of a ResNet-like conv to $DUMP_ASM (for tuning): `DUMP_ASM=/tmp/x.s cargo test ... -- --ignored`;
/// `CONV_MR` and `CONV_UNROLL` as in `benches/conv.rs`.
#[test]
#[ignore]
fn codegen_dump_asm() {
    let path = std::env::var("DUMP_ASM").unwrap_or_else(|_| "/tmp/conv.s".into());
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let t = GemmTiling::default();
    let tiling = GemmTiling { mr_max: env("CONV_MR", t.mr_max), unroll: env("CONV_UNROLL", t.unroll), ..t };
    let mut s = Session::with_options(SessionOptions { keep_asm: true, keep_ir: true, ..opts() }).unwrap();
    let c = Conv::new(256, [1, 1], [1, 1], Padding::Valid, true);
    let r = gemm_rules(tiling);
    let k = compile_conv(&mut s, "c", &c, [56, 56, 64], &r, &rnd(64 * 256, 1), Some(&rnd(256, 2))).unwrap();
    std::fs::write(&path, k.asm.unwrap()).unwrap();
    std::fs::write(format!("{path}.clif"), k.clif.unwrap()).unwrap();
}

#[test]
fn codegen_identical_convs_share_code_with_their_own_weights() {
    // Three convs of one shape and epilogue (GEMM, Strassen and Winograd paths), the first compiled by one
    // session, the others by a second session sharing its code cache (as the back end's workers do): one
    // compiled function, owned by the first session, each kernel with its own constants and its own correct
    // result; another shape, or the same under other session options, gets its own code.
    let wino = Rules { winograd: true, ..rules() };
    for (c, r) in [
        (case(6, 8, 16, 8, 3, 1, Padding::Same), rules()),
        (case(7, 7, 16, 16, 1, 1, Padding::Valid), strassen_rules(1, 128)),
        (case(8, 8, 8, 12, 3, 1, Padding::Same), wino),
    ] {
        let x = rnd(c.h * c.w * c.cin, 1);
        let compile = |s: &mut Session, c: &ConvCase, wt: &[f32], bias: &[f32]| {
            compile_conv(s, "c", &conv_op(c), [c.h, c.w, c.cin], &r, wt, Some(bias)).unwrap()
        };
        let cache = CodeCache::default();
        let mut ss = [Session::with_cache(opts(), &cache).unwrap(), Session::with_cache(opts(), &cache).unwrap()];
        let mut ks = Vec::new();
        let mut wants = Vec::new();
        for (i, seed) in [2, 5, 7].into_iter().enumerate() {
            let wt = rnd(c.k[0] * c.k[1] * c.cin * c.cout, seed);
            let bias = rnd(c.cout, seed + 1);
            wants.push(naive_conv(&c, &x, &wt, &bias, &[]).1);
            ks.push(compile(&mut ss[i.min(1)], &c, &wt, &bias));
        }
        assert!(ks.iter().all(|k| k.id == ks[0].id), "{c:?}");
        assert_eq!(cache.len(), 1);
        let mut other = c.clone();
        other.cout += 8;
        let wt = rnd(other.k[0] * other.k[1] * other.cin * other.cout, 9);
        let k3 = compile(&mut ss[1], &other, &wt, &rnd(other.cout, 10));
        assert_ne!(k3.id, ks[0].id);
        // Another tiling of the same layer (another plan) sharing the cache compiles its own.
        let input = [c.h, c.w, c.cin];
        let other = match select_conv(&conv_op(&c), input, &r).unwrap() {
            crate::lower::ConvAlgo::Gemm(p) => crate::lower::ConvAlgo::Gemm(ConvPlan { unroll: 3, ..p }),
            crate::lower::ConvAlgo::Strassen(p) => {
                crate::lower::ConvAlgo::Strassen(strassen::StrassenPlan { ncp: 1, ..p })
            }
            crate::lower::ConvAlgo::Winograd(_) => {
                let t = winograd::WinogradTiling { rows: 3, ..winograd::WinogradTiling::for_input(input) };
                crate::lower::ConvAlgo::Winograd(winograd::WinogradPlan::new(&conv_op(&c), input, &t).unwrap())
            }
            a => a,
        };
        let mut s2 = Session::with_cache(opts(), &cache).unwrap();
        let (wt, b) = (rnd(c.k[0] * c.k[1] * c.cin * c.cout, 2), rnd(c.cout, 3));
        let k4 = s2
            .compile("c", crate::lower::KernelOp::Conv(other).family(), &LayerWeights::kernel(&wt, Some(&b)))
            .unwrap();
        assert_ne!(k4.id, ks[0].id, "{c:?}");
        assert_eq!(cache.len(), 3);
        let [s0, s1] = ss;
        let (code0, code1) = (s0.finish().unwrap(), s1.finish().unwrap());
        assert!(code1.owns(k3.id) && !code0.owns(k3.id));
        for (k, want) in ks.iter().zip(&wants) {
            assert!(code0.owns(k.id) && !code1.owns(k.id));
            check_close(&call(&code0, k, &x, None), want, &format!("{c:?}")).unwrap();
        }
    }
}

#[test]
fn codegen_kept_ir_is_per_kernel() {
    // With IR kept (`compile --emit clif`), every kernel is compiled and listed on its own.
    let c = case(6, 8, 16, 8, 3, 1, Padding::Same);
    let mut s = Session::with_options(SessionOptions { keep_ir: true, ..opts() }).unwrap();
    let wt = rnd(9 * c.cin * c.cout, 2);
    let b = rnd(c.cout, 3);
    let k1 = compile_conv(&mut s, "a", &conv_op(&c), [c.h, c.w, c.cin], &rules(), &wt, Some(&b)).unwrap();
    let k2 = compile_conv(&mut s, "b", &conv_op(&c), [c.h, c.w, c.cin], &rules(), &wt, Some(&b)).unwrap();
    assert_ne!(k1.id, k2.id);
    assert!(k1.clif.is_some() && k2.clif.is_some());
}

// ---- NaN and Inf: IEEE propagation, as Keras does ----

/// Which outputs a non-finite input pixel `(iy, ix)` may reach in a kernel of family `algo`, beyond those whose
/// window contains it (where every family must be non-finite): fast algorithms mix whole tiles (Winograd: the
/// transformed input patch of every tile that overlaps the pixel; the stem: its polyphase patches) or, for
/// Strassen, the same pixel of the other half of the rows.
fn may_spread(algo: crate::lower::Algorithm, c: &ConvCase, (oy, ox): (usize, usize), (iy, ix): (usize, usize)) -> bool {
    use crate::lower::Algorithm;
    let near = |d: usize| oy.abs_diff(iy) <= d && ox.abs_diff(ix) <= d;
    match algo {
        Algorithm::Gemm | Algorithm::Plain => false,
        Algorithm::Winograd(_) => near(6),
        Algorithm::Stem => oy.abs_diff(iy / 2) <= 6 && ox.abs_diff(ix / 2) <= 6,
        Algorithm::Strassen => {
            let ow = (c.w - 1) / c.s[1] + 1;
            let m = ((c.h - 1) / c.s[0] + 1) * ow;
            let half = m.div_ceil(2);
            let (o, p) = (oy * ow + ox, (iy / c.s[0]) * ow + ix / c.s[1]);
            o % half == p % half
        }
    }
}

/// Runs `c` (selected by `r`) with `x[(iy, ix, ch)] = bad` and checks: every output the naive convolution
/// makes non-finite is non-finite (NaN where it is NaN), every other output equals it unless the family may
/// spread the value there (`may_spread`).
fn check_non_finite(c: &ConvCase, r: &Rules, (iy, ix, ch): (usize, usize, usize), bad: f32) -> Result<(), String> {
    let mut x = rnd(c.h * c.w * c.cin, 1);
    x[(iy * c.w + ix) * c.cin + ch] = bad;
    let wt = rnd(c.k[0] * c.k[1] * c.cin * c.cout, 2);
    let bias = rnd(c.cout, 3);
    let p = c.padding.pads(c.h, c.w, c.k, c.s);
    let (oh, ow) = ((c.h + p.top + p.bottom - c.k[0]) / c.s[0] + 1, (c.w + p.left + p.right - c.k[1]) / c.s[1] + 1);
    let res = rnd(oh * ow * c.cout, 4);
    let (_, want) = naive_conv(c, &x, &wt, &bias, &res);
    let algo = select_conv(&conv_op(c), [c.h, c.w, c.cin], r)?;
    let kind = crate::lower::KernelOp::Conv(algo.clone()).algorithm();
    let mut s = Session::with_options(opts()).map_err(|e| e.to_string())?;
    let k = s
        .compile(
            "c",
            crate::lower::KernelOp::Conv(algo).family(),
            &LayerWeights::kernel(&wt, c.bias.then_some(&bias[..])),
        )
        .map_err(|e| e.to_string())?;
    let code = s.finish().map_err(|e| e.to_string())?;
    let got = call(&code, &k, &x, c.residual.then_some(&res[..]));
    let mut hits = 0;
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let (oy, ox) = (i / c.cout / ow, i / c.cout % ow);
        let at = format!("{kind} {c:?}, bad {bad} at ({iy}, {ix}, {ch}), output ({oy}, {ox}, {})", i % c.cout);
        if !w.is_finite() {
            hits += 1;
            if g.is_finite() || (w.is_nan() && !g.is_nan() && !may_spread(kind, c, (oy, ox), (iy, ix))) {
                return Err(format!("{at}: got {g}, want {w}"));
            }
        } else if !may_spread(kind, c, (oy, ox), (iy, ix)) && (g.is_nan() || (g - w).abs() > 1e-4 * w.abs().max(1.0)) {
            return Err(format!("{at}: got {g}, want {w}"));
        }
    }
    if hits == 0 {
        return Err(format!("{kind} {c:?}: the test reaches no output"));
    }
    Ok(())
}

/// A NaN or an infinity in the input reaches the outputs whose window holds it, in every convolution
/// family, through the fused epilogue's relus (relu(NaN) = NaN, as in Keras); elsewhere results are exact.
#[test]
fn codegen_non_finite_inputs_propagate_in_every_conv_family() {
    let epi = |mut c: ConvCase| {
        (c.relu, c.residual, c.relu_after_add) = (true, true, true);
        c
    };
    let wino = Rules { winograd: true, ..rules() };
    let families = [
        (epi(case(6, 8, 16, 8, 1, 1, Padding::Valid)), rules(), "gemm, direct 1x1"),
        (epi(case(9, 7, 19, 10, 3, 2, Padding::Same)), small_tiling(), "gemm, packed, K blocks"),
        (epi(case(3, 4, 40, 12, 3, 1, Padding::Same)), rules(), "gemm, streaming order"),
        (epi(case(7, 7, 16, 16, 1, 1, Padding::Valid)), strassen_rules(2, 128), "strassen"),
        (epi(case(12, 11, 9, 6, 3, 1, Padding::Same)), wino.clone(), "winograd F(4x4)"),
        (epi(case(5, 6, 9, 6, 3, 1, Padding::Same)), wino.clone(), "winograd F(2x2)"),
        (case(23, 20, 3, 8, 7, 2, Padding::Same), wino, "stem"),
    ];
    for isa in tiers() {
        for (c, r, what) in &families {
            let c = ConvCase { relu: true, ..c.clone() };
            for (at, bad) in [((2, 3, 1), f32::NAN), ((0, 0, 0), f32::NAN), ((c.h - 1, 1, 2), f32::INFINITY)] {
                check_non_finite(&c, &on_tier(isa, r), at, bad).map_err(|e| format!("{isa} {what}: {e}")).unwrap();
            }
        }
    }
}

/// A NaN bias or weight makes its output channel NaN everywhere its taps reach real input.
#[test]
fn codegen_nan_weights_are_not_hidden_by_relu() {
    for (c, r) in [
        (case(6, 5, 8, 6, 3, 1, Padding::Same), rules()),
        (case(9, 9, 8, 8, 3, 1, Padding::Same), Rules { winograd: true, ..rules() }),
    ] {
        let c = ConvCase { relu: true, ..c };
        let x = rnd(c.h * c.w * c.cin, 1);
        let mut wt = rnd(9 * c.cin * c.cout, 2);
        let mut bias = rnd(c.cout, 3);
        bias[1] = f32::NAN;
        // Centre tap, channel 0 -> output channel 4: reaches every output.
        wt[(4 * c.cin) * c.cout + 4] = f32::NAN;
        let mut s = Session::with_options(opts()).unwrap();
        let k = compile_conv(&mut s, "c", &conv_op(&c), [c.h, c.w, c.cin], &r, &wt, Some(&bias)).unwrap();
        let code = s.finish().unwrap();
        let got = call(&code, &k, &x, None);
        for (i, g) in got.iter().enumerate() {
            let n = i % c.cout;
            assert_eq!(g.is_nan(), n == 1 || n == 4, "output {i} (channel {n}) is {g}");
        }
    }
}

#[test]
fn codegen_pools_propagate_nan_and_empty_windows_are_zero() {
    let shape = [6usize, 7, 9];
    let mut x = rnd(shape.iter().product(), 3);
    let (iy, ix, ch) = (2, 3, 5);
    x[(iy * 7 + ix) * 9 + ch] = f32::NAN;
    let pool = Pool { size: [3, 3], strides: [2, 2], padding: Padding::Same };
    for kind in [PoolKind::Max, PoolKind::Avg] {
        let mut s = Session::with_options(opts()).unwrap();
        let k = s.compile("p", &WindowPoolPlan::new(kind, &pool, shape).unwrap(), &LayerWeights::default()).unwrap();
        let gp = s.compile("g", &GlobalPoolPlan::new(kind, shape).unwrap(), &LayerWeights::default()).unwrap();
        let code = s.finish().unwrap();
        let (_, want) = naive_pool(kind, &pool, shape, &x);
        let got = call(&code, &k, &x, None);
        let ow = k.out_shape[1];
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let (oy, ox, c) = (i / 9 / ow, i / 9 % ow, i % 9);
            // Same padding: rows pad 0 top / 1 bottom (windows 2oy..2oy+2), columns 1 / 1 (2ox-1..2ox+1).
            let covers = c == ch && (2 * oy + 1).abs_diff(iy) <= 1 && (2 * ox).abs_diff(ix) <= 1;
            assert_eq!(g.is_nan(), covers, "{kind:?} output ({oy}, {ox}, {c}) is {g}");
            assert!(g.is_nan() || (g - w).abs() <= 1e-5, "{kind:?} output {i}: {g} vs {w}");
        }
        let g = call(&code, &gp, &x, None);
        assert!(g.iter().enumerate().all(|(c, v)| v.is_nan() == (c == ch)), "global {kind:?}: {g:?}");
    }
    // Explicit pads at least the window (a folded ZeroPadding2D): a window of padding only gives 0.
    let pool = Pool {
        size: [2, 2],
        strides: [2, 2],
        padding: Padding::Explicit(Pads { top: 2, bottom: 0, left: 0, right: 2 }),
    };
    let x: Vec<f32> = rnd(4 * 4 * 3, 4).iter().map(|v| v.abs() + 1.0).collect();
    let mut s = Session::with_options(opts()).unwrap();
    let plan = WindowPoolPlan::new(PoolKind::Max, &pool, [4, 4, 3]).unwrap();
    assert!(plan.empty_windows);
    let k = s.compile("p", &plan, &LayerWeights::default()).unwrap();
    let code = s.finish().unwrap();
    let (_, want) = naive_pool(PoolKind::Max, &pool, [4, 4, 3], &x);
    let got = call(&code, &k, &x, None);
    assert_eq!(&got[..9], &[0.0; 9], "the first output row lies in the padding");
    check_close(&got, &want.iter().map(|&v| if v == f32::NEG_INFINITY { 0.0 } else { v }).collect::<Vec<_>>(), "pads")
        .unwrap();
}

#[test]
fn codegen_dense_propagates_nan_through_relu_and_softmax() {
    let (cin, units) = (37, 10);
    let mut x = rnd(cin, 1);
    x[5] = f32::NAN;
    let wt = rnd(cin * units, 2);
    for act in [Activation::Relu, Activation::Softmax, Activation::Linear] {
        let mut s = Session::with_options(opts()).unwrap();
        let k = s
            .compile("fc", &DensePlan::new(cin, units, act, false).unwrap(), &LayerWeights::kernel(&wt, None))
            .unwrap();
        let code = s.finish().unwrap();
        let y = call(&code, &k, &x, None);
        assert!(y.iter().all(|v| v.is_nan()), "{act}: {y:?}");
    }
}

// ---- every CPU tier ----

/// `r` with the tile of tier `isa`.
fn on_tier(isa: x86::Isa, r: &Rules) -> Rules {
    let tile = gemm::Tile::of(isa);
    Rules { isa, gemm: GemmTiling { tile, mr_max: tile.mr, ..r.gemm.clone() }, ..r.clone() }
}

/// The tiers this machine runs; the others are named on stderr (never silently passed).
pub(crate) fn tiers() -> Vec<x86::Isa> {
    let have = x86::Isa::available();
    for isa in x86::Isa::ALL.into_iter().filter(|i| !have.contains(i)) {
        eprintln!("tier {isa} skipped: {}", isa.check_supported().unwrap_err());
    }
    have
}

/// Rules of tier `isa` on one thread, Winograd off (the GEMM family), with `f` applied to its GEMM tiling.
fn tier_rules(isa: x86::Isa, f: impl Fn(&mut GemmTiling)) -> Rules {
    let mut r = Rules { winograd: false, ..Rules::for_target(isa, 1) };
    f(&mut r.gemm);
    r
}

/// The GEMM convolution on every tier: edge cases (K blocking, channel chunks, partial row tiles, column
/// tails, streaming order, every epilogue), against the naive convolution.
#[test]
fn codegen_conv_every_tier_matches_naive() {
    let mut cases = vec![
        case(6, 8, 16, 8, 1, 1, Padding::Valid),
        case(7, 7, 64, 36, 1, 1, Padding::Same),
        case(5, 4, 300, 9, 1, 1, Padding::Valid),
        case(6, 5, 19, 5, 3, 2, Padding::Same),
        case(9, 11, 13, 70, 3, 1, Padding::Same),
        case(1, 1, 4, 4, 1, 1, Padding::Valid),
        case(7, 7, 512, 6, 1, 1, Padding::Valid),
        case(2, 2, 512, 70, 3, 1, Padding::Same),
        case(20, 18, 3, 64, 7, 2, Padding::Same),
        case(14, 14, 33, 100, 1, 2, Padding::Valid),
    ];
    for (i, c) in cases.iter_mut().enumerate() {
        (c.relu, c.residual, c.relu_after_add) = (i % 2 == 0, i % 3 == 0, i % 4 == 0);
    }
    for isa in tiers() {
        for c in &cases {
            run_conv_case(c, Some(tier_rules(isa, |_| {}))).map_err(|e| format!("{isa}: {e}")).unwrap();
            let small = tier_rules(isa, |t| (t.kc, t.mc_tiles, t.nc_panels, t.min_tasks) = (8, 1, 1, 1));
            run_conv_case(c, Some(small)).map_err(|e| format!("{isa}, small blocks: {e}")).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random convolutions on every wide tier (the f32x4 tier has its own proptests above).
    #[test]
    fn codegen_conv_wide_tiers_match_naive(c in conv_case_strategy(), small in any::<bool>()) {
        for isa in x86::Isa::available().into_iter().filter(|i| i.is_wide()) {
            let r = tier_rules(isa, |t| if small { (t.kc, t.mc_tiles, t.nc_panels, t.min_tasks) = (8, 1, 1, 1) });
            run_conv_case(&c, Some(r)).map_err(|e| TestCaseError::fail(format!("{isa}: {e}")))?;
        }
    }
}

// ---- batch groups: several items per call ----

/// Runs `c` on `items` items per call (as the rules with that group select: GEMM, Winograd or the stem),
/// all items in one call, against the naive convolution of each item.
fn run_conv_case_items(c: &ConvCase, r: &Rules, items: usize) -> Result<(), String> {
    let r = Rules { items, ..r.clone() };
    let in_len = c.h * c.w * c.cin;
    let x = rnd(items * in_len, 1);
    let wt = rnd(c.k[0] * c.k[1] * c.cin * c.cout, 2);
    let bias = rnd(c.cout, 3);
    let algo = select_conv(&conv_op(c), [c.h, c.w, c.cin], &r)?;
    let plan = crate::lower::KernelOp::Conv(algo);
    let out_len: usize = plan.family().out_shape().iter().product();
    let res = rnd(items * out_len, 4);
    let mut s = Session::with_options(opts()).map_err(|e| e.to_string())?;
    let k = s
        .compile("c", plan.family(), &LayerWeights::kernel(&wt, c.bias.then_some(&bias[..])))
        .map_err(|e| e.to_string())?;
    let code = s.finish().map_err(|e| e.to_string())?;
    let folds = plan.family().items();
    let mut got = Vec::new();
    // A kernel that does not fold the group (Strassen) is called once per item.
    for first in (0..items).step_by(folds) {
        let (xs, rs) = (&x[first * in_len..(first + folds) * in_len], &res[first * out_len..(first + folds) * out_len]);
        let mut k1 = k.clone();
        k1.out_shape = vec![folds * out_len];
        got.extend(call(&code, &k1, xs, c.residual.then_some(rs)));
    }
    for i in 0..items {
        let (_, want) =
            naive_conv(c, &x[i * in_len..(i + 1) * in_len], &wt, &bias, &res[i * out_len..(i + 1) * out_len]);
        check_close(
            &got[i * out_len..(i + 1) * out_len],
            &want,
            &format!("{} item {i} of {items}: {c:?}", plan.algorithm()),
        )?;
    }
    Ok(())
}

/// Every convolution family with a batch group (GEMM direct and packed, streaming and K blocks, Winograd
/// F(2x2) and F(4x4), the stem) on every tier: tiles and rows that straddle items.
#[test]
fn codegen_batch_groups_match_naive_per_item() {
    let mut cases = vec![
        (case(6, 8, 16, 8, 1, 1, Padding::Valid), false),
        (case(7, 7, 40, 36, 3, 2, Padding::Same), false),
        (case(2, 2, 64, 20, 3, 1, Padding::Same), false),
        (case(5, 4, 300, 9, 1, 1, Padding::Valid), false),
        (case(9, 11, 13, 10, 3, 1, Padding::Same), true),
        (case(4, 5, 8, 12, 3, 1, Padding::Same), true),
        (case(23, 20, 3, 8, 7, 2, Padding::Same), true),
    ];
    for (i, (c, _)) in cases.iter_mut().enumerate() {
        (c.relu, c.residual, c.relu_after_add) = (i % 2 == 0, i % 3 != 1, i % 4 == 0);
        if c.k == [7, 7] {
            c.residual = false;
        }
    }
    for isa in tiers() {
        for (c, wino) in &cases {
            let r = Rules { winograd: *wino, ..on_tier(isa, &rules()) };
            for items in [2, 3, 5] {
                run_conv_case_items(c, &r, items).map_err(|e| format!("{isa}: {e}")).unwrap();
            }
        }
    }
}

/// Code that calls the prefetch stub (`rel32` calls) compiles and runs whatever the address space looks
/// like: each session's functions live in one reserved range (a reported panic: with many sessions, a
/// call landed more than 2 GiB from the stub). 48 sessions alive at once, with large allocations between
/// them, each compiling a streaming conv (which calls the stub) and running it.
#[test]
fn codegen_calls_to_session_helpers_are_always_in_reach() {
    let c = case(2, 2, 64, 20, 3, 1, Padding::Same);
    let x = rnd(c.h * c.w * c.cin, 1);
    let wt = rnd(9 * c.cin * c.cout, 2);
    let bias = rnd(c.cout, 3);
    let (_, want) = naive_conv(&c, &x, &wt, &bias, &[]);
    let mut keep = Vec::new();
    for i in 0..48 {
        let mut s = Session::with_options(opts()).unwrap();
        let k = compile_conv(&mut s, "c", &conv_op(&c), [c.h, c.w, c.cin], &rules(), &wt, Some(&bias)).unwrap();
        let code = s.finish().unwrap();
        check_close(&call(&code, &k, &x, None), &want, &format!("session {i}")).unwrap();
        keep.push((code, vec![0u8; 64 << 20]));
    }
}
