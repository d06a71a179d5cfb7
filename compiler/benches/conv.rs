//! Convolution kernel throughput on the conv shapes of ResNet-50 at 224x224.
//!
//! Prints, per shape, GFLOP/s (2 * M * N * K / time) and the share of the f32x4 FMA peak of one core
//! (58.6 GFLOP/s, see shared/notes/cranelift-kernels.md), single-threaded; one shape also on 2 threads.
//! `CONV_BENCH_FILTER=substr` picks shapes;
//! `CONV_RES=1` adds a fused residual add, `CONV_FLUSH_MB=n` runs cold (n MB of other memory touched before
//! every run). The cold mode overstates memory stalls: software prefetches of the residual, the output and
//! the next tile's A gained 3-11 % there but made the same layers 5-10 % slower inside ResNet-50.
//! `CONV_AB="CONV_MR=10 CONV_UNROLL=3"` compares two tilings run in turns (see `ab`); the stem shape runs as
//! the polyphase Winograd kernel unless `CONV_STEM_WINOGRAD=0` (`CONV_AB="CONV_STEM_WINOGRAD=0"`: 1.78x).

use resnetc_compiler::codegen::x86::Isa;
use resnetc_compiler::codegen::{JitCode, Kernel, LayerWeights, Session, SessionOptions};
use resnetc_compiler::lower::{select_conv, KernelOp, Rules};
use resnetc_compiler::ops::{Conv, Padding};
use resnetc_runtime::{AlignedBuf, KernelArgs, ThreadPool};
use std::time::{Duration, Instant};

struct Shape {
    name: &'static str,
    /// Input height; the width is `hw` too unless `w` is set.
    hw: usize,
    w: usize,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
}

const SHAPES: &[Shape] = &[
    // The micro-kernel alone: one 12-row tile, data in L1.
    Shape { name: "L1_micro_1x12_1x1_256to16", hw: 1, w: 12, cin: 256, cout: 16, k: 1, stride: 1 },
    Shape { name: "56x56_1x1_64to256", hw: 56, w: 0, cin: 64, cout: 256, k: 1, stride: 1 },
    Shape { name: "56x56_1x1_256to64", hw: 56, w: 0, cin: 256, cout: 64, k: 1, stride: 1 },
    Shape { name: "56x56_3x3_64to64", hw: 56, w: 0, cin: 64, cout: 64, k: 3, stride: 1 },
    Shape { name: "28x28_1x1_128to512", hw: 28, w: 0, cin: 128, cout: 512, k: 1, stride: 1 },
    Shape { name: "28x28_1x1_512to128", hw: 28, w: 0, cin: 512, cout: 128, k: 1, stride: 1 },
    Shape { name: "28x28_3x3_128to128", hw: 28, w: 0, cin: 128, cout: 128, k: 3, stride: 1 },
    Shape { name: "14x14_3x3_256to256", hw: 14, w: 0, cin: 256, cout: 256, k: 3, stride: 1 },
    Shape { name: "14x14_1x1_1024to256", hw: 14, w: 0, cin: 1024, cout: 256, k: 1, stride: 1 },
    Shape { name: "14x14_1x1_256to1024", hw: 14, w: 0, cin: 256, cout: 1024, k: 1, stride: 1 },
    Shape { name: "28x28_1x1s2_512to1024", hw: 28, w: 0, cin: 512, cout: 1024, k: 1, stride: 2 },
    Shape { name: "56x56_1x1s2_256to512", hw: 56, w: 0, cin: 256, cout: 512, k: 1, stride: 2 },
    Shape { name: "7x7_1x1_2048to512", hw: 7, w: 0, cin: 2048, cout: 512, k: 1, stride: 1 },
    Shape { name: "7x7_1x1_512to2048", hw: 7, w: 0, cin: 512, cout: 2048, k: 1, stride: 1 },
    Shape { name: "14x14_1x1s2_1024to2048", hw: 14, w: 0, cin: 1024, cout: 2048, k: 1, stride: 2 },
    Shape { name: "7x7_3x3_512to512", hw: 7, w: 0, cin: 512, cout: 512, k: 3, stride: 1 },
    Shape { name: "224_7x7s2_3to64_stem", hw: 224, w: 0, cin: 3, cout: 64, k: 7, stride: 2 },
];

fn width(s: &Shape) -> usize {
    if s.w == 0 {
        s.hw
    } else {
        s.w
    }
}

struct Bench {
    _code: JitCode,
    f: resnetc_runtime::KernelFn,
    kernel: Kernel,
    input: AlignedBuf,
    res: AlignedBuf,
    output: AlignedBuf,
    consts: AlignedBuf,
    work: Vec<AlignedBuf>,
    flops: f64,
}

impl Bench {
    fn new(s: &Shape, threads: usize) -> Bench {
        Bench::with_overrides(s, threads, &[])
    }

    /// `overrides`: `(CONV_* variable, value)` pairs that take precedence over the environment (`CONV_AB`).
    fn with_overrides(s: &Shape, threads: usize, overrides: &[(String, usize)]) -> Bench {
        // Tuning knobs: CONV_UNROLL=n, CONV_MR=rows, CONV_FMA_B_FIRST=1, CONV_KC=n, CONV_MC=tiles, CONV_NC=panels,
        // CONV_PREFETCH=bytes (the weight prefetch distance), CONV_PREFETCH_MAX_M=pixels.
        let env = |k: &str| {
            overrides
                .iter()
                .find(|(o, _)| o == k)
                .map(|&(_, v)| v)
                .or_else(|| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok()))
        };
        // The lowering's rules for this thread count (3x3 stride-1 layers stay direct: `benches/winograd.rs`
        // compares them with Winograd), with the tuning knobs applied.
        // CONV_ISA=avx512|avx2|f32x4 picks the CPU tier (default: the widest this CPU runs).
        let isa = std::env::var("CONV_ISA").ok().and_then(|v| v.parse().ok()).unwrap_or_else(Isa::detect);
        let mut r = Rules { winograd_min_map: usize::MAX, ..Rules::for_target(isa, threads) };
        let t = &mut r.gemm;
        t.unroll = env("CONV_UNROLL").unwrap_or(t.unroll);
        t.mr_max = env("CONV_MR").unwrap_or(t.mr_max);
        t.fma_b_first = env("CONV_FMA_B_FIRST").map_or(t.fma_b_first, |v| v != 0);
        t.kc = env("CONV_KC").unwrap_or(t.kc);
        t.mc_tiles = env("CONV_MC").unwrap_or(t.mc_tiles);
        t.nc_panels = env("CONV_NC").unwrap_or(t.nc_panels);
        t.min_tasks = env("CONV_MIN_TASKS").unwrap_or(t.min_tasks);
        t.prefetch_distance = env("CONV_PREFETCH").unwrap_or(t.prefetch_distance);
        t.prefetch_max_m = env("CONV_PREFETCH_MAX_M").unwrap_or(t.prefetch_max_m);
        r.strassen_max_m = env("CONV_STRASSEN_MAX_M").unwrap_or(r.strassen_max_m);
        r.strassen_min_m = env("CONV_STRASSEN_MIN_M").unwrap_or(r.strassen_min_m);
        r.strassen_min_k = env("CONV_STRASSEN_MIN_K").unwrap_or(r.strassen_min_k);
        r.strassen_min_n = env("CONV_STRASSEN_MIN_N").unwrap_or(r.strassen_min_n);
        r.strassen.task_rows = env("CONV_STRASSEN_TASK_ROWS").unwrap_or(r.strassen.task_rows);
        r.strassen.min_tasks = env("CONV_STRASSEN_MIN_TASKS").unwrap_or(threads);
        // The stem runs as the polyphase Winograd kernel unless CONV_STEM_WINOGRAD=0.
        r.winograd = env("CONV_STEM_WINOGRAD").is_none_or(|v| v != 0);
        let mut sess = Session::with_options(SessionOptions::default()).unwrap();
        let mut conv = Conv::new(s.cout, [s.k, s.k], [s.stride, s.stride], Padding::Same, true);
        conv.relu = true;
        // CONV_RES=1: with a fused residual add (and relu after it), as ResNet's block ends.
        if env("CONV_RES").is_some_and(|v| v != 0) {
            conv.residual = true;
            conv.relu_after_add = true;
            conv.relu = false;
        }
        let wt: Vec<f32> = (0..s.k * s.k * s.cin * s.cout).map(|i| ((i % 17) as f32 - 8.0) * 0.01).collect();
        let bias = vec![0.1f32; s.cout];
        let algo = select_conv(&conv, [s.hw, width(s), s.cin], &r).unwrap();
        let kernel =
            sess.compile(s.name, KernelOp::Conv(algo).family(), &LayerWeights::kernel(&wt, Some(&bias))).unwrap();
        let code = sess.finish().unwrap();
        let [oh, ow, n] = [kernel.out_shape[0], kernel.out_shape[1], kernel.out_shape[2]];
        let flops = 2.0 * (oh * ow * n) as f64 * (s.k * s.k * s.cin) as f64;
        let input =
            AlignedBuf::from_slice(&(0..s.hw * width(s) * s.cin).map(|i| (i % 13) as f32 * 0.1).collect::<Vec<_>>());
        Bench {
            f: code.kernel(kernel.id),
            _code: code,
            output: AlignedBuf::zeroed(oh * ow * n),
            res: AlignedBuf::from_slice(&(0..oh * ow * n).map(|i| (i % 7) as f32 * 0.1).collect::<Vec<_>>()),
            consts: AlignedBuf::from_slice(&kernel.consts),
            work: (0..threads).map(|_| AlignedBuf::zeroed(kernel.work_floats.max(16))).collect(),
            kernel,
            input,
            flops,
        }
    }

    fn args(&mut self) -> KernelArgs {
        KernelArgs {
            input: self.input.as_ptr(),
            input2: self.res.as_ptr(),
            output: self.output.as_mut_ptr(),
            consts: self.consts.as_ptr(),
        }
    }

    fn run1(&mut self) {
        let a = self.args();
        unsafe { (self.f)(&a, self.work[0].as_mut_ptr(), 0, self.kernel.ntasks) };
    }

    fn run_pool(&mut self, pool: &ThreadPool) {
        let a = self.args();
        let (f, addr) = (self.f, &a as *const KernelArgs as usize);
        let work: Vec<usize> = self.work.iter_mut().map(|w| w.as_mut_ptr() as usize).collect();
        pool.parallel_for_indexed(self.kernel.ntasks, &|t, th| unsafe {
            f(addr as *const KernelArgs, work[th] as *mut f32, t, t + 1)
        });
    }
}

/// Nanoseconds this thread has spent on a CPU (from /proc/thread-self/schedstat), if available.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Best-of-5 GFLOP/s over runs of ~0.1 s: (by wall time, by this thread's CPU time). The CPU-time figure
/// discounts time the thread was descheduled (the machine is shared); it is meaningless for multi-threaded runs.
fn measure(mut run: impl FnMut(), flops: f64) -> (f64, f64) {
    if let Some(mb) = flush_mb() {
        return measure_cold(run, flops, mb);
    }
    run();
    let (mut best, mut best_cpu) = (0f64, 0f64);
    for _ in 0..5 {
        let c0 = thread_cpu_ns();
        let t0 = Instant::now();
        let mut n = 0u32;
        while t0.elapsed() < Duration::from_millis(100) {
            run();
            n += 1;
        }
        best = best.max(flops * n as f64 / t0.elapsed().as_secs_f64() / 1e9);
        if let (Some(c0), Some(c1)) = (c0, thread_cpu_ns()) {
            best_cpu = best_cpu.max(flops * n as f64 / (c1 - c0).max(1) as f64);
        }
    }
    (best, best_cpu)
}

/// `CONV_FLUSH_MB`: megabytes of other memory to touch before every run (cold runs).
fn flush_mb() -> Option<usize> {
    std::env::var("CONV_FLUSH_MB").ok().and_then(|v| v.parse::<usize>().ok())
}

/// Other memory, touched to push a kernel's data out to L3 or memory before a run.
struct Junk(Vec<u64>);

impl Junk {
    fn new(mb: usize) -> Junk {
        Junk(vec![0u64; mb << 17])
    }

    /// Writes and reads one word per 64-byte line; returns a sum to keep the reads alive.
    fn touch(&mut self, salt: u64) -> u64 {
        let mut sink = 0u64;
        for (i, x) in self.0.iter_mut().enumerate().step_by(8) {
            *x = x.wrapping_add(i as u64 ^ salt);
            sink = sink.wrapping_add(*x);
        }
        sink
    }
}

/// Like `measure`, but writes and reads `mb` MB of other memory before every run (not timed), so weights,
/// input and output start in L3 or memory as they do inside a network: GFLOP/s by the best of 5 sums of
/// (at most 20) runs.
fn measure_cold(mut run: impl FnMut(), flops: f64, mb: usize) -> (f64, f64) {
    let mut junk = Junk::new(mb);
    let mut sink = 0u64;
    let mut best = 0f64;
    for round in 0..5u64 {
        let (mut t, mut n) = (Duration::ZERO, 0u32);
        while t < Duration::from_millis(100) && n < 20 {
            sink = sink.wrapping_add(junk.touch(round));
            let t0 = Instant::now();
            run();
            t += t0.elapsed();
            n += 1;
        }
        best = best.max(flops * n as f64 / t.as_secs_f64() / 1e9);
    }
    std::hint::black_box(sink);
    (best, best)
}

fn selected() -> Vec<&'static Shape> {
    let filt = std::env::var("CONV_BENCH_FILTER").unwrap_or_default();
    SHAPES.iter().filter(|s| s.name.contains(&filt)).collect()
}

/// `CONV_AB="CONV_MR=10 CONV_UNROLL=3"`: each selected shape compiled twice, as the environment says (A)
/// and with these overrides (B), timed in turns, one run each, for ~2 s (6 s with `CONV_FLUSH_MB`): on a
/// shared host whose speed changes by 2x from second to second, only runs taken side by side compare.
/// Prints both medians and minimums and the median of the per-pair ratios B/A (below 1: B faster).
/// `THREADS=2` among the overrides runs B on two threads (A on `CONV_AB_THREADS`, default 1): the ratio is
/// then the inverse of the speedup.
fn ab(spec: &str) {
    let overrides: Vec<(String, usize)> = spec
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("CONV_AB: KEY=VALUE pairs");
            (k.to_string(), v.parse().expect("CONV_AB: numeric values"))
        })
        .collect();
    println!("A/B: B = {spec}");
    // THREADS=n among the overrides: B runs on n threads (A on CONV_AB_THREADS, default 1).
    let ta_threads = std::env::var("CONV_AB_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let tb_threads = overrides.iter().find(|(k, _)| k == "THREADS").map_or(ta_threads, |&(_, v)| v);
    let pools = [ThreadPool::new(ta_threads), ThreadPool::new(tb_threads)];
    for s in selected() {
        let mut a = Bench::new(s, ta_threads);
        let mut b = Bench::with_overrides(s, tb_threads, &overrides);
        let (mut ta, mut tb) = (Vec::new(), Vec::new());
        // CONV_FLUSH_MB as in `measure_cold`: other memory touched before every run (not timed).
        let mb = flush_mb().unwrap_or(0);
        let mut junk = Junk::new(mb);
        let mut flush = || {
            std::hint::black_box(junk.touch(0));
        };
        let run = |x: &mut Bench, pool: &ThreadPool| {
            if pool.threads() == 1 {
                x.run1()
            } else {
                x.run_pool(pool)
            }
        };
        let t0 = Instant::now();
        run(&mut a, &pools[0]);
        run(&mut b, &pools[1]);
        let secs = if mb > 0 { 6 } else { 2 };
        while t0.elapsed() < Duration::from_secs(secs) {
            flush();
            let t = Instant::now();
            run(&mut a, &pools[0]);
            ta.push(t.elapsed().as_secs_f64());
            flush();
            let t = Instant::now();
            run(&mut b, &pools[1]);
            tb.push(t.elapsed().as_secs_f64());
        }
        let mut ratios: Vec<f64> = ta.iter().zip(&tb).map(|(x, y)| y / x).collect();
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let r = med(&mut ratios);
        let (ma, mb) = (med(&mut ta), med(&mut tb));
        println!(
            "{:<24} A {:>7.3} ms (min {:.3})  B {:>7.3} ms (min {:.3})  B/A median of {} pairs {:.3}",
            s.name,
            ma * 1e3,
            ta[0] * 1e3,
            mb * 1e3,
            tb[0] * 1e3,
            ratios.len(),
            r
        );
    }
}

fn main() {
    if let Ok(spec) = std::env::var("CONV_AB") {
        return ab(&spec);
    }
    let isa = std::env::var("CONV_ISA").ok().and_then(|v| v.parse().ok()).unwrap_or_else(Isa::detect);
    let peak = resnetc_compiler::codegen::x86::fma_peak_gflops(isa).unwrap_or(f64::NAN);
    println!("{isa} tier: FMA peak measured on this machine {peak:.1} GFLOP/s per core (thread CPU time)");
    println!("{:<24} {:>6} {:>10} {:>13} {:>10}", "shape", "tasks", "GFLOP/s", "cpu-time GF/s", "% peak");
    for s in selected() {
        let mut b = Bench::new(s, 1);
        let fl = b.flops;
        let (g, gc) = measure(|| b.run1(), fl);
        println!(
            "{:<24} {:>6} {:>10.1} {:>13.1} {:>9.0}%  (1 thread)",
            s.name,
            b.kernel.ntasks,
            g,
            gc,
            100.0 * gc / peak
        );
    }
    let pool = ThreadPool::new(2);
    for s in selected().into_iter().filter(|s| s.name.starts_with("28x28_3x3") || s.name.starts_with("7x7_1x1")) {
        let mut b = Bench::new(s, 2);
        let fl = b.flops;
        let (g, _) = measure(|| b.run_pool(&pool), fl);
        println!(
            "{:<24} {:>6} {:>10.1} {:>9.0}%   (2 threads; % of the 2-core peak)",
            s.name,
            b.kernel.ntasks,
            g,
            100.0 * g / (2.0 * peak)
        );
    }
}
