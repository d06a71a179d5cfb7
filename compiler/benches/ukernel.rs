//! The wide micro-kernels (`codegen::x86`) measured per tier: FMA peak, each candidate tile with its data in
//! L1, ResNet-50's 1x1 convolutions of stages 2-4 as GEMMs driven by the kernels, and the call overhead.
//!
//! Single thread on the calling CPU: run it pinned, `taskset -c 1 cargo bench -p resnetc-compiler --bench
//! ukernel`. Every figure is sampled `UKERNEL_REPS` times (default 7, ~50 ms each) and printed as
//! min / median / max GFLOP/s by the thread's CPU time (the machine is shared: see `sample`); read medians
//! and repeat the whole run.
//! `UKERNEL_FILTER=substr` keeps the lines whose label contains it; `UKERNEL_KC` / `UKERNEL_MC` set the GEMM
//! driver's K block (floats, default 256) and M block (in row tiles, default 4: best of 4, 7, 16 here),
//! `UKERNEL_PREFETCH=bytes` makes its kernels prefetch B that far ahead.
//!
//! The GEMM driver is the simplest blocked loop over the kernels: B packed once into 64-byte aligned panels
//! `nr` wide (`b_k_stride = 4*nr`), A read in place (`a_row_stride = 4*K`, as a 1x1 convolution reads its
//! NHWC input), C = relu(A*B + bias) with K blocks accumulating and the epilogue on the last. Loops: K block,
//! M block, panel, row tile; the calls are listed once and replayed, so the time is the kernels' plus the
//! indirect calls'. Beside it, the existing cranelift f32x4 convolution of the same layer (one thread; on the
//! 14x14 layers it runs as one level of Strassen, 7/8 of the multiplications, and is credited the nominal
//! FLOPs).

use resnetc_compiler::codegen::x86::{assemble_gemm, fma_peak_gflops, CodeRegion, Epilogue, GemmFn, GemmUkernel, Isa};
use resnetc_compiler::codegen::{LayerWeights, Session, SessionOptions};
use resnetc_compiler::lower::{select_conv, KernelOp, Rules};
use resnetc_compiler::ops::{Conv, Padding};
use resnetc_runtime::{AlignedBuf, KernelArgs};
use std::time::{Duration, Instant};

fn env_usize(k: &str, default: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn wanted(label: &str) -> bool {
    std::env::var("UKERNEL_FILTER").map_or(true, |f| label.contains(&f))
}

/// Nanoseconds of CPU time this thread has used (elsewhere than Linux: of wall time).
#[cfg(target_os = "linux")]
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// GFLOP/s of one ~50 ms run of `run` (doing `flops` each call), divided by the CPU time the thread got (the
/// machine is shared: time spent waiting for a core does not count; cache lines other processes evicted
/// meanwhile still do).
fn one_sample(run: &dyn Fn(), flops: f64) -> f64 {
    let (t0, c0) = (Instant::now(), thread_cpu_ns());
    let mut n = 0u32;
    while t0.elapsed() < Duration::from_millis(50) {
        run();
        n += 1;
    }
    flops * n as f64 / (thread_cpu_ns() - c0).max(1) as f64
}

/// `UKERNEL_REPS` samples of each of `runs`, taken in turns (A B C A B C ...) so that the load other processes
/// put on the machine meanwhile falls on all of them alike.
fn sample_in_turns(runs: &[(&dyn Fn(), f64)]) -> Vec<Stats> {
    for (run, _) in runs {
        run();
    }
    let mut v = vec![Vec::new(); runs.len()];
    for _ in 0..env_usize("UKERNEL_REPS", 7) {
        for (i, (run, flops)) in runs.iter().enumerate() {
            v[i].push(one_sample(*run, *flops));
        }
    }
    v.into_iter()
        .map(|mut x| {
            x.sort_by(f64::total_cmp);
            Stats(x)
        })
        .collect()
}

fn sample(run: impl Fn(), flops: f64) -> Stats {
    sample_in_turns(&[(&run, flops)]).pop().unwrap()
}

struct Stats(Vec<f64>);

impl Stats {
    fn median(&self) -> f64 {
        self.0[self.0.len() / 2]
    }

    fn show(&self, peak: f64) -> String {
        let (min, med, max) = (self.0[0], self.median(), self.0[self.0.len() - 1]);
        format!("{min:7.1} {med:7.1} {max:7.1}  {:5.1} %", 100.0 * med / peak)
    }
}

const HEADER: &str = "    min  median     max  (GFLOP/s)  median / peak";

/// Candidate tiles (rows, nr) per tier, the preferred first.
fn candidates(isa: Isa) -> Vec<(usize, usize)> {
    match isa {
        Isa::Avx512 => vec![(14, 32), (12, 32), (8, 48), (6, 64), (28, 16)],
        Isa::Avx2 => vec![(6, 16), (4, 24), (12, 8)],
        Isa::F32x4 => vec![],
    }
}

fn filled(n: usize, seed: usize) -> AlignedBuf {
    AlignedBuf::from_slice(&(0..n).map(|i| ((i * 7 + seed) % 23) as f32 * 0.01 - 0.1).collect::<Vec<_>>())
}

fn get(region: &CodeRegion, uk: &GemmUkernel) -> GemmFn {
    let r = region.gemm(uk).unwrap_or_else(|e| panic!("{uk:?}: {e}"));
    region.seal().unwrap();
    region.gemm_fn(r).unwrap()
}

/// Each candidate tile, data in L1 (or L2 for the widest B panels), no epilogue; tiles sampled in turns.
fn l1(isa: Isa, region: &CodeRegion, peak: f64) {
    for k in [128, 256] {
        let tiles: Vec<(usize, usize)> =
            candidates(isa).into_iter().filter(|(r, n)| wanted(&format!("{isa} L1 {r}x{n} K={k}"))).collect();
        let benches: Vec<_> = tiles
            .iter()
            .map(|&(rows, nr)| {
                let uk = GemmUkernel::dense(isa, rows, nr, nr, k);
                let f = get(region, &uk);
                let (a, b, c) = (filled(rows * k, 1), filled(k * nr, 2), AlignedBuf::zeroed(rows * nr));
                // Writes through a shared buffer's pointer: the closures must be `Fn` to be sampled in turns.
                let run = move || {
                    for _ in 0..100 {
                        unsafe {
                            f(a.as_ptr(), b.as_ptr(), c.as_ptr() as *mut f32, std::ptr::null(), std::ptr::null())
                        };
                    }
                };
                (run, 100.0 * uk.flops() as f64)
            })
            .collect();
        let runs: Vec<(&dyn Fn(), f64)> = benches.iter().map(|(r, f)| (r as &dyn Fn(), *f)).collect();
        for ((rows, nr), s) in tiles.iter().zip(sample_in_turns(&runs)) {
            let label = format!("{isa} L1 {rows}x{nr} K={k}");
            println!("{label:<40} {}  (B panel {} KB)", s.show(peak), k * nr * 4 / 1024);
        }
    }
}

/// Remainder tiles (fewer rows, split into interleaved partial sums when short), data in L1, K = 256.
fn partial_tiles(isa: Isa, region: &CodeRegion, peak: f64) {
    let tiles: &[(usize, usize, usize)] = match isa {
        Isa::Avx512 => &[(7, 32, 32), (4, 32, 32), (1, 32, 32), (4, 64, 64), (1, 64, 64), (14, 32, 17)],
        _ => &[(4, 16, 16), (1, 16, 16), (6, 16, 9)],
    };
    for &(rows, nr, lanes) in tiles {
        let label = format!("{isa} L1 {rows}x{nr} lanes={lanes} K=256");
        if !wanted(&label) {
            continue;
        }
        let uk = GemmUkernel::dense(isa, rows, nr, lanes, 256);
        let f = get(region, &uk);
        let (a, b, c) = (filled(rows * 256, 1), filled(256 * nr, 2), AlignedBuf::zeroed(rows * nr));
        let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_ptr() as *mut f32);
        let st = sample(
            || {
                for _ in 0..100 {
                    unsafe { f(ap, bp, cp, std::ptr::null(), std::ptr::null()) };
                }
            },
            100.0 * uk.flops() as f64,
        );
        println!("{label:<40} {}", st.show(peak));
    }
}

/// A 1x1 layer: M pixels, K input channels, N output channels.
#[derive(Clone, Copy)]
struct Layer {
    name: &'static str,
    hw: usize,
    k: usize,
    n: usize,
}

const LAYERS: &[Layer] = &[
    Layer { name: "s2 56x56 64->256", hw: 56, k: 64, n: 256 },
    Layer { name: "s2 56x56 256->64", hw: 56, k: 256, n: 64 },
    Layer { name: "s3 28x28 128->512", hw: 28, k: 128, n: 512 },
    Layer { name: "s3 28x28 512->128", hw: 28, k: 512, n: 128 },
    Layer { name: "s4 14x14 256->1024", hw: 14, k: 256, n: 1024 },
    Layer { name: "s4 14x14 1024->256", hw: 14, k: 1024, n: 256 },
    // Stage 5 (not in the target): 49 rows, weights of 4 MB streamed from L3 (UKERNEL_PREFETCH).
    Layer { name: "s5 7x7 512->2048", hw: 7, k: 512, n: 2048 },
    Layer { name: "s5 7x7 2048->512", hw: 7, k: 2048, n: 512 },
];

/// One kernel call of the GEMM driver.
struct Call {
    f: GemmFn,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    bias: *const f32,
}

/// C = relu(A*B + bias) through the kernels (see the module docs), with its buffers and call list.
struct Gemm {
    calls: Vec<Call>,
    _bufs: (AlignedBuf, AlignedBuf, AlignedBuf, AlignedBuf),
    flops: f64,
}

impl Gemm {
    fn new(isa: Isa, region: &CodeRegion, (mr, nr): (usize, usize), m: usize, k: usize, n: usize) -> Gemm {
        let kc = env_usize("UKERNEL_KC", 256);
        let mc = env_usize("UKERNEL_MC", 4) * mr;
        // UKERNEL_A_OUTER=1: within an M block, row tiles outside and panels inside (the A tile stays in L1,
        // B panels come from L2) instead of panels outside (the B panel stays in L1).
        let a_outer = env_usize("UKERNEL_A_OUTER", 0) != 0;
        // UKERNEL_PREFETCH=bytes: the kernels prefetch B that far ahead.
        let prefetch = Some(env_usize("UKERNEL_PREFETCH", 0)).filter(|&d| d > 0);
        let panels = n.div_ceil(nr);
        let a = filled(m * k, 3);
        let w = filled(k * n, 4);
        let bias = filled(n, 5);
        // B: panel p, row kk, column j at ((p*k + kk)*nr + j); zero past N.
        let mut b = AlignedBuf::zeroed(panels * k * nr);
        for p in 0..panels {
            for kk in 0..k {
                for j in 0..nr.min(n - p * nr) {
                    b.as_mut_slice()[(p * k + kk) * nr + j] = w[kk * n + p * nr + j];
                }
            }
        }
        let mut c = AlignedBuf::zeroed(m * n);
        let mut calls = Vec::new();
        for k0 in (0..k).step_by(kc) {
            let kl = kc.min(k - k0);
            let last = k0 + kl == k;
            for m0 in (0..m).step_by(mc) {
                let tiles: Vec<(usize, usize)> = if a_outer {
                    (m0..(m0 + mc).min(m)).step_by(mr).flat_map(|i0| (0..panels).map(move |p| (p, i0))).collect()
                } else {
                    (0..panels).flat_map(|p| (m0..(m0 + mc).min(m)).step_by(mr).map(move |i0| (p, i0))).collect()
                };
                for (p, i0) in tiles {
                    let uk = GemmUkernel {
                        rows: mr.min(m - i0),
                        lanes: nr.min(n - p * nr),
                        a_row_stride: 4 * k,
                        c_row_stride: 4 * n,
                        accumulate: k0 > 0,
                        epilogue: if last {
                            Epilogue { bias: true, relu: true, ..Epilogue::NONE }
                        } else {
                            Epilogue::NONE
                        },
                        prefetch_b: prefetch,
                        ..GemmUkernel::dense(isa, mr, nr, nr, kl)
                    };
                    calls.push(Call {
                        f: get(region, &uk),
                        a: unsafe { a.as_ptr().add(i0 * k + k0) },
                        b: unsafe { b.as_ptr().add((p * k + k0) * nr) },
                        c: unsafe { c.as_mut_ptr().add(i0 * n + p * nr) },
                        bias: unsafe { bias.as_ptr().add(p * nr) },
                    });
                }
            }
        }
        Gemm { calls, _bufs: (a, b, c, bias), flops: 2.0 * (m * n * k) as f64 }
    }

    fn run(&self) {
        for c in &self.calls {
            unsafe { (c.f)(c.a, c.b, c.c, c.bias, std::ptr::null()) };
        }
    }
}

/// The same layer as the existing cranelift f32x4 convolution (bias + relu), one thread: a closure running
/// it, with the code and buffers it needs.
fn f32x4_conv(l: &Layer) -> impl Fn() {
    let mut sess = Session::with_options(SessionOptions::default()).unwrap();
    let mut conv = Conv::new(l.n, [1, 1], [1, 1], Padding::Valid, true);
    conv.relu = true;
    // As the lowering selects it for the f32x4 tier on one thread (Strassen on the 14x14 layers).
    let algo = select_conv(&conv, [l.hw, l.hw, l.k], &Rules::for_target(Isa::F32x4, 1)).unwrap();
    let (wt, bias) = (filled(l.k * l.n, 4), filled(l.n, 5));
    let kernel = sess.compile(l.name, KernelOp::Conv(algo).family(), &LayerWeights::kernel(&wt, Some(&bias))).unwrap();
    let code = sess.finish().unwrap();
    let f = code.kernel(kernel.id);
    let (input, out) = (filled(l.hw * l.hw * l.k, 3), AlignedBuf::zeroed(l.hw * l.hw * l.n));
    let (consts, work) = (AlignedBuf::from_slice(&kernel.consts), AlignedBuf::zeroed(kernel.work_floats.max(16)));
    move || {
        let args = KernelArgs {
            input: input.as_ptr(),
            input2: std::ptr::null(),
            output: out.as_ptr() as *mut f32,
            consts: consts.as_ptr(),
        };
        let _keep = &code;
        unsafe { f(&args, work.as_ptr() as *mut f32, 0, kernel.ntasks) };
    }
}

/// Something to sample: the closure, its FLOPs per call, the peak it is measured against.
type Run = (Box<dyn Fn()>, f64, f64);

/// Each layer: every candidate tile of every wide tier and the f32x4 convolution, sampled in turns.
fn gemms(tiers: &[(Isa, f64)], f32x4_peak: Option<f64>, region: &CodeRegion) {
    for l in LAYERS {
        let mut labels = Vec::new();
        let mut runs: Vec<Run> = Vec::new();
        for &(isa, peak) in tiers {
            for tile in candidates(isa) {
                let label = format!("{isa} {} {}x{}", l.name, tile.0, tile.1);
                if wanted(&label) {
                    let g = Gemm::new(isa, region, tile, l.hw * l.hw, l.k, l.n);
                    labels.push((label, Some((isa, tile)), g.calls.len()));
                    let flops = g.flops;
                    runs.push((Box::new(move || g.run()), flops, peak));
                }
            }
        }
        let label = format!("f32x4 {} cranelift conv", l.name);
        if let (Some(peak), true) = (f32x4_peak, wanted(&label)) {
            labels.push((label, None, 0));
            runs.push((Box::new(f32x4_conv(l)), 2.0 * (l.hw * l.hw * l.k * l.n) as f64, peak));
        }
        let turns: Vec<(&dyn Fn(), f64)> = runs.iter().map(|(r, f, _)| (r.as_ref(), *f)).collect();
        let stats = sample_in_turns(&turns);
        let base = labels.iter().zip(&stats).find(|((_, t, _), _)| t.is_none()).map(|(_, s)| s.median());
        for (((label, tile, calls), s), (_, _, peak)) in labels.iter().zip(&stats).zip(&runs) {
            let vs = base.map_or(String::new(), |b| format!("  {:.2}x f32x4", s.median() / b));
            let preferred = tile.is_some_and(|(isa, t)| t == isa.preferred_tile());
            let calls = if *calls > 0 { format!("  {calls} calls") } else { String::new() };
            println!("{label:<40} {}{vs}{calls}{}", s.show(*peak), if preferred { "  (preferred)" } else { "" });
        }
    }
}

/// Nanoseconds per call of a one-FMA kernel through its function pointer.
fn call_overhead(isa: Isa, region: &CodeRegion) {
    let vw = isa.vector_floats();
    let f = std::hint::black_box(get(region, &GemmUkernel::dense(isa, 1, vw, vw, 1)));
    let (a, b, c) = (filled(1, 1), filled(vw, 2), AlignedBuf::zeroed(vw));
    let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_ptr() as *mut f32);
    // 1000 "flops" per run: the rate is calls per ns.
    let s = sample(
        || {
            for _ in 0..1000 {
                unsafe { f(a, b, c, std::ptr::null(), std::ptr::null()) };
            }
        },
        1000.0,
    );
    let ns: Vec<f64> = s.0.iter().rev().map(|x| 1.0 / x).collect();
    println!(
        "{isa} call overhead (1x{vw} K=1 kernel via fn pointer): {:.2} / {:.2} / {:.2} ns (min / median / max)",
        ns[0],
        ns[ns.len() / 2],
        ns[ns.len() - 1]
    );
}

/// Microseconds to assemble the preferred tile's kernel (K = 256, bias + relu): the compile-time cost per
/// distinct kernel.
fn assembly_time(isa: Isa) {
    let (mr, nr) = isa.preferred_tile();
    let uk = GemmUkernel {
        epilogue: Epilogue { bias: true, relu: true, ..Epilogue::NONE },
        ..GemmUkernel::dense(isa, mr, nr, nr, 256)
    };
    let mut times: Vec<f64> = (0..50)
        .map(|_| {
            let t = Instant::now();
            let bytes = assemble_gemm(&uk, 0).unwrap();
            std::hint::black_box(bytes);
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let len = assemble_gemm(&uk, 0).unwrap().len();
    println!(
        "{isa} assembling a {mr}x{nr} K=256 kernel ({len} bytes): {:.0} us median, {:.0} us min",
        times[25], times[0]
    );
}

/// The tier's FMA peak: min / median / max over `UKERNEL_REPS` runs of `fma_peak_gflops`; the median.
fn peak(isa: Isa) -> Option<f64> {
    let mut v: Vec<f64> = (0..env_usize("UKERNEL_REPS", 7)).filter_map(|_| fma_peak_gflops(isa).ok()).collect();
    v.sort_by(f64::total_cmp);
    let med = *v.get(v.len() / 2)?;
    println!(
        "{isa} FMA peak: {:.1} / {med:.1} / {:.1} GFLOP/s (min / median / max of {} best-of-15 runs)",
        v[0],
        v[v.len() - 1],
        v.len()
    );
    Some(med)
}

fn main() {
    let region = CodeRegion::new().unwrap();
    let mut tiers = Vec::new();
    for isa in [Isa::Avx512, Isa::Avx2] {
        match isa.check_supported() {
            Err(e) => println!("tier {isa} SKIPPED: {e}"),
            Ok(()) => tiers.extend(peak(isa).map(|p| (isa, p))),
        }
    }
    let f32x4_peak = peak(Isa::F32x4);
    println!("\n{:<40} {HEADER}", "micro-kernel alone");
    for &(isa, p) in &tiers {
        l1(isa, &region, p);
        partial_tiles(isa, &region, p);
    }
    println!("\n{:<40} {HEADER}", "1x1 layers as GEMMs (M = H*W)");
    gemms(&tiers, f32x4_peak, &region);
    println!();
    for &(isa, _) in &tiers {
        call_overhead(isa, &region);
    }
    for &(isa, _) in &tiers {
        assembly_time(isa);
    }
    println!("code region: {} kernels, {} bytes", region.gemm_count(), region.used_bytes());
}
