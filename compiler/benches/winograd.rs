//! Winograd vs direct (GEMM) convolution on the 3x3 stride-1 `same` shapes of ResNet-50 (224x224 input) and of
//! the notebook model (64x64 input), single-threaded.
//!
//! Prints, per shape, effective GFLOP/s (direct-convolution flops 2*H*W*Cout*9*Cin / time) of the GEMM kernel
//! (`codegen::conv`), of the Winograd kernel (`codegen::winograd`) with F(2x2,3x3) and with F(4x4,3x3), and
//! the speedups. Each figure is the best of
//! `WINO_BENCH_REPS` (default 5) runs of ~60 ms (the machine is shared: minimum times). `WINO_BENCH_FILTER=substr`
//! picks shapes, `WINO_MIN_TASKS=n` sets `WinogradTiling::min_tasks`. No criterion groups: the table is the result.

use resnetc_compiler::codegen::conv::{ConvPlan, GemmTiling};
use resnetc_compiler::codegen::winograd::{WinogradPlan, WinogradTile, WinogradTiling};
use resnetc_compiler::codegen::{JitCode, Kernel, LayerWeights, Session, SessionOptions};
use resnetc_compiler::ops::{Conv, Padding};
use resnetc_runtime::{AlignedBuf, KernelArgs};
use std::time::{Duration, Instant};

const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("r50_56x56_64", 56, 64, 64),
    ("r50_28x28_128", 28, 128, 128),
    ("r50_14x14_256", 14, 256, 256),
    ("r50_7x7_512", 7, 512, 512),
    ("nb_15x15_64", 15, 64, 64),
    ("nb_8x8_128", 8, 128, 128),
    ("nb_4x4_256", 4, 256, 256),
    ("nb_2x2_512", 2, 512, 512),
];

enum Which {
    Direct,
    Wino(WinogradTile),
}

struct Bench {
    _code: JitCode,
    f: resnetc_runtime::KernelFn,
    kernel: Kernel,
    input: AlignedBuf,
    res: AlignedBuf,
    output: AlignedBuf,
    consts: AlignedBuf,
    work: AlignedBuf,
}

impl Bench {
    fn new(hw: usize, cin: usize, cout: usize, which: &Which) -> Bench {
        let mut sess = Session::with_options(SessionOptions { verify: false, ..SessionOptions::default() }).unwrap();
        // A ResNet block's second conv: bias, residual add, relu after add.
        let mut conv = Conv::new(cout, [3, 3], [1, 1], Padding::Same, true);
        conv.residual = true;
        conv.relu_after_add = true;
        let wt: Vec<f32> = (0..9 * cin * cout).map(|i| ((i % 17) as f32 - 8.0) * 0.01).collect();
        let bias = vec![0.1f32; cout];
        let w = LayerWeights::kernel(&wt, Some(&bias));
        let kernel = match which {
            Which::Direct => {
                let plan = ConvPlan::new(&conv, [hw, hw, cin], &GemmTiling::default()).unwrap();
                sess.compile("direct", &plan, &w).unwrap()
            }
            Which::Wino(t) => {
                let min_tasks = std::env::var("WINO_MIN_TASKS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(WinogradTiling::default().min_tasks);
                // Tuning knobs: WINO_ROWS, WINO_ROW_BLOCKS, WINO_V_BUDGET (floats), WINO_COUT_PANELS.
                let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
                let d = WinogradTiling::default();
                let tiling = WinogradTiling {
                    tile: *t,
                    min_tasks,
                    rows: env("WINO_ROWS").unwrap_or(d.rows),
                    row_blocks: env("WINO_ROW_BLOCKS").unwrap_or(d.row_blocks),
                    v_budget: env("WINO_V_BUDGET").unwrap_or(d.v_budget),
                    cout_panels: env("WINO_COUT_PANELS").unwrap_or(d.cout_panels),
                    ..d
                };
                let plan = WinogradPlan::new(&conv, [hw, hw, cin], &tiling).unwrap();
                sess.compile("wino", &plan, &w).unwrap()
            }
        };
        let code = sess.finish().unwrap();
        let n = hw * hw * cout;
        Bench {
            f: code.kernel(kernel.id),
            _code: code,
            input: AlignedBuf::from_slice(&(0..hw * hw * cin).map(|i| (i % 13) as f32 * 0.1).collect::<Vec<_>>()),
            res: AlignedBuf::from_slice(&vec![0.5f32; n]),
            output: AlignedBuf::zeroed(n),
            consts: AlignedBuf::from_slice(&kernel.consts),
            work: AlignedBuf::zeroed(kernel.work_floats.max(16)),
            kernel,
        }
    }

    fn run(&mut self) {
        let a = KernelArgs {
            input: self.input.as_ptr(),
            input2: self.res.as_ptr(),
            output: self.output.as_mut_ptr(),
            consts: self.consts.as_ptr(),
        };
        unsafe { (self.f)(&a, self.work.as_mut_ptr(), 0, self.kernel.ntasks) };
    }

    /// Minimum seconds per call over `reps` runs of ~60 ms each.
    fn best_time(&mut self, reps: usize) -> f64 {
        self.run();
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let t0 = Instant::now();
            let mut n = 0u32;
            while t0.elapsed() < Duration::from_millis(60) {
                self.run();
                n += 1;
            }
            best = best.min(t0.elapsed().as_secs_f64() / n as f64);
        }
        best
    }
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let filt = std::env::var("WINO_BENCH_FILTER").unwrap_or_default();
    let reps = std::env::var("WINO_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    println!(
        "{:<16} {:>9} {:>9} {:>9} {:>7} {:>7} {:>10} {:>10}",
        "shape", "direct", "wino F2", "wino F4", "F2 x", "F4 x", "F2 work", "F4 work"
    );
    println!("{:<16} {:>9} {:>9} {:>9}", "", "GFLOP/s", "eff GF/s", "eff GF/s");
    for &(name, hw, cin, cout) in SHAPES.iter().filter(|s| s.0.contains(&filt)) {
        let flops = 2.0 * (hw * hw * cout) as f64 * (9 * cin) as f64;
        let mut d = Bench::new(hw, cin, cout, &Which::Direct);
        let mut w2 = Bench::new(hw, cin, cout, &Which::Wino(WinogradTile::F2));
        let mut w4 = Bench::new(hw, cin, cout, &Which::Wino(WinogradTile::F4));
        // Interleave the repetitions so that load changes hit all three alike.
        let (mut td, mut t2, mut t4) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
        for _ in 0..reps {
            td = td.min(d.best_time(1));
            t2 = t2.min(w2.best_time(1));
            t4 = t4.min(w4.best_time(1));
        }
        let g = |t: f64| flops / t / 1e9;
        println!(
            "{:<16} {:>9.1} {:>9.1} {:>9.1} {:>6.2}x {:>6.2}x {:>9}K {:>9}K",
            name,
            g(td),
            g(t2),
            g(t4),
            td / t2,
            td / t4,
            w2.kernel.work_floats * 4 / 1024,
            w4.kernel.work_floats * 4 / 1024
        );
    }
}
