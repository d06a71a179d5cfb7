//! The JIT back end against the reference interpreter on every shipped spec (small inputs), and against
//! Keras on the committed fixtures.

use ndarray::{Array4, ArrayD};
use rand::{Rng, SeedableRng};
use resnetc_compiler::backend::BackendOptions;
use resnetc_compiler::weights::Weights;
use resnetc_compiler::{Model, Options};

fn root(p: &str) -> String {
    format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))
}

fn randomize(w: &mut Weights, seed: u64) {
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

fn input(shape: &[usize], n: usize, seed: u64) -> ArrayD<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array4::from_shape_simple_fn((n, shape[0], shape[1], shape[2]), || rng.random_range(-1.0f32..1.0)).into_dyn()
}

fn worst(a: &ArrayD<f32>, b: &ArrayD<f32>) -> (f32, f32) {
    assert_eq!(a.shape(), b.shape());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    (a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max), scale)
}

fn opts() -> BackendOptions {
    BackendOptions { threads: 2, keep_ir: false, verify: true }
}

#[test]
fn jit_matches_reference_on_every_shipped_spec() {
    for (name, hw) in [
        ("notebook_resnet50", 64),
        ("resnet18", 40),
        ("resnet34", 32),
        ("resnet50", 32),
        ("resnet101", 32),
        ("resnet152", 32),
    ] {
        let o = Options { input_shape: Some(vec![hw, hw, 3]), ..Default::default() };
        let mut m = Model::from_file(root(&format!("specs/{name}.yaml")), &o).unwrap();
        randomize(&mut m.weights, 11);
        let x = input(&[hw, hw, 3], 2, 3);
        let want = m.run_reference(x.view()).unwrap();
        let c = m.compile(&opts()).unwrap();
        let got = c.run(x.view()).unwrap();
        let (d, s) = worst(&got, &want);
        assert!(d <= 1e-4 * s + 1e-6, "{name}: JIT differs from the reference by {d} (scale {s})");
    }
}

#[test]
fn jit_matches_keras_on_fixtures() {
    for name in ["tiny_resnet", "tiny_apps"] {
        let o = Options { weights: Some(root(&format!("tests/fixtures/{name}.safetensors")).into()), ..Default::default() };
        let m = Model::from_file(root(&format!("tests/fixtures/{name}.yaml")), &o).unwrap();
        let x: ArrayD<f32> = ndarray_npy::read_npy(root(&format!("tests/fixtures/{name}_x.npy"))).unwrap();
        let y: ArrayD<f32> = ndarray_npy::read_npy(root(&format!("tests/fixtures/{name}_y.npy"))).unwrap();
        let c = m.compile(&opts()).unwrap();
        let (d, s) = worst(&c.run(x.view()).unwrap(), &y);
        assert!(d <= 1e-5 * s + 1e-6, "{name}: JIT differs from Keras by {d} (scale {s})");
    }
}

#[test]
fn jit_rejects_a_wrong_input_shape() {
    let m = Model::from_file(root("tests/fixtures/tiny_resnet.yaml"), &Options::default()).unwrap();
    let c = m.compile(&opts()).unwrap();
    let e = c.run(input(&[8, 8, 3], 1, 0).view()).unwrap_err();
    assert!(e.to_string().contains("expected [N, 36, 28, 3]"), "{e}");
}

#[test]
fn compiled_model_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<resnetc_compiler::backend::Compiled>();
    let m = Model::from_file(root("tests/fixtures/tiny_apps.yaml"), &Options::default()).unwrap();
    let c = m.compile(&opts()).unwrap();
    let x = input(&[35, 30, 3], 3, 9);
    let want = c.run(x.view()).unwrap();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..4).map(|_| s.spawn(|| c.run(x.view()).unwrap())).collect();
        for h in hs {
            assert_eq!(h.join().unwrap(), want);
        }
    });
}
