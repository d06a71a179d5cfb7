//! Helpers shared by the integration tests: paths, trained-looking weights, random inputs, comparison.
#![allow(dead_code)]

pub mod cli;

use ndarray::{Array4, ArrayD};
use rand::{Rng, SeedableRng};
use resnetc_compiler::weights::Weights;

/// A path under the repository root.
pub fn root(p: &str) -> String {
    format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))
}

/// Random BN statistics and biases, like a trained model's (the glorot initialization leaves BatchNorm an
/// identity, which would not exercise folding).
pub fn randomize(w: &mut Weights, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut keys: Vec<String> = w.tensors.keys().cloned().collect();
    keys.sort();
    for k in keys {
        let (lo, hi) = match k.rsplit('.').next().unwrap() {
            "gamma" => (0.5, 1.5),
            "moving_variance" => (0.5, 2.0),
            "beta" | "moving_mean" => (-0.2, 0.2),
            "bias" => (-0.1, 0.1),
            _ => continue,
        };
        w.get_mut(&k).unwrap().mapv_inplace(|_| rng.random_range(lo..hi));
    }
}

/// A seeded NHWC batch of `n` items of `shape` = [H, W, C], values in [-1, 1).
pub fn input(shape: &[usize], n: usize, seed: u64) -> ArrayD<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array4::from_shape_simple_fn((n, shape[0], shape[1], shape[2]), || rng.random_range(-1.0f32..1.0)).into_dyn()
}

/// Largest |got - want| (NaN counts as infinite) and max |want|.
pub fn worst(got: &ArrayD<f32>, want: &ArrayD<f32>) -> (f32, f32) {
    assert_eq!(got.shape(), want.shape());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let d = got.iter().zip(want).map(|(a, b)| if (a - b).is_nan() { f32::INFINITY } else { (a - b).abs() });
    (d.fold(0f32, f32::max), scale)
}

/// Asserts every element within `rel` of the largest magnitude of `want` (plus 1e-7 absolute).
pub fn assert_close(got: &ArrayD<f32>, want: &ArrayD<f32>, rel: f32, what: &str) {
    let (d, s) = worst(got, want);
    assert!(d <= rel * s + 1e-7, "{what}: worst difference {d} vs scale {s}");
}

/// The CPU tiers this machine runs, widest first; the tiers it lacks are named on stderr (never silently
/// passed).
pub fn tiers() -> Vec<resnetc_compiler::codegen::x86::Isa> {
    use resnetc_compiler::codegen::x86::Isa;
    let have = Isa::available();
    for isa in Isa::ALL.into_iter().filter(|i| !have.contains(i)) {
        eprintln!("tier {isa} skipped: {}", isa.check_supported().unwrap_err());
    }
    have
}
