//! Measures this machine's f32x4 FMA peak per core: what cranelift's 128-bit kernels can reach at most.
//!
//! Twelve independent `vfmadd` chains on xmm registers, timed for a few milliseconds, give FMAs per
//! second on one core; `resnetc bench` reports GFLOP/s against that (times the threads used) instead of
//! a frequency read from /proc/cpuinfo, which is the base clock and not what the core runs at.

/// Peak f32x4 GFLOP/s of one core (2 flops per FMA lane), measured; None where FMA is unavailable.
pub fn f32x4_fma_gflops_per_core() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports FMA (checked above).
            let best = (0..15).map(|_| unsafe { fma_loop() }).fold(0.0f64, f64::max);
            return Some(best);
        }
    }
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn fma_loop() -> f64 {
    use std::arch::x86_64::*;
    const ITERS: usize = 2_000_000;
    let b = _mm_set1_ps(0.999_999);
    let c = _mm_set1_ps(1e-7);
    let mut acc = [_mm_set1_ps(1.0); 12];
    let t = std::time::Instant::now();
    for _ in 0..ITERS {
        for a in acc.iter_mut() {
            *a = _mm_fmadd_ps(*a, b, c);
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let mut sum = _mm_setzero_ps();
    for a in acc {
        sum = _mm_add_ps(sum, a);
    }
    std::hint::black_box(sum);
    (ITERS * 12 * 4 * 2) as f64 / secs / 1e9
}
