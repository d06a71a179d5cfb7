//! The JIT back end against the reference interpreter on every shipped spec (small inputs), and against
//! Keras on the committed fixtures.

mod common;

use common::{input, randomize, root, tiers, worst};
use ndarray::ArrayD;
use resnetc_compiler::backend::BackendOptions;
use resnetc_compiler::lower::Algorithm;
use resnetc_compiler::{Model, Options};

fn opts() -> BackendOptions {
    BackendOptions { threads: 2, verify: true, ..Default::default() }
}

#[test]
fn jit_matches_reference_on_every_shipped_spec() {
    // Kernels of one plan share one compiled function, whichever worker compiles them. Bottleneck
    // models: stem, max pool, per stage 5 distinct convs (first block's 1x1 reduce, shortcut, 3x3, 1x1
    // expand + add; identity blocks' 1x1 reduce), pool, dense, and on two threads its softmax = 25 however
    // deep. Basic-block models: stem, max pool, stage 2's two 3x3 convs, per later stage 4 (strided 3x3,
    // shortcut, 3x3 + add, identity blocks' first 3x3), pool, dense, softmax = 19.
    for (name, hw, functions) in [
        ("notebook_resnet50", 64, 25),
        ("resnet18", 40, 19),
        ("resnet34", 32, 19),
        ("resnet50", 32, 25),
        ("resnet101", 32, 25),
        ("resnet152", 32, 25),
    ] {
        let o = Options { input_shape: Some(vec![hw, hw, 3]), ..Default::default() };
        let mut m = Model::from_file(root(&format!("specs/{name}.yaml")), &o).unwrap();
        randomize(&mut m.weights, 11);
        let x = input(&[hw, hw, 3], 2, 3);
        let want = m.run_reference(x.view()).unwrap();
        for isa in tiers() {
            let c = m.compile(&BackendOptions { isa, ..opts() }).unwrap();
            let n = c.kernels.len();
            assert_eq!(c.functions, functions, "{name} on {isa}: distinct functions compiled for {n} kernels");
            let stems = c.kernels.iter().filter(|k| k.algorithm == Algorithm::Stem).count();
            assert_eq!(stems, 1, "{name}: the 7x7 stride-2 stem runs as the polyphase Winograd kernel");
            let got = c.run(x.view()).unwrap();
            let (d, s) = worst(&got, &want);
            assert!(d <= 1e-4 * s + 1e-6, "{name} on {isa}: JIT differs from the reference by {d} (scale {s})");
        }
    }
}

/// `BackendOptions::winograd: false` turns off every Winograd kernel, the stem's too; both agree with
/// the reference.
#[test]
fn winograd_can_be_turned_off() {
    let o = Options { input_shape: Some(vec![40, 40, 3]), ..Default::default() };
    let mut m = Model::from_file(root("specs/notebook_resnet50.yaml"), &o).unwrap();
    randomize(&mut m.weights, 12);
    let x = input(&[40, 40, 3], 1, 4);
    let want = m.run_reference(x.view()).unwrap();
    for winograd in [false, true] {
        let c = m.compile(&BackendOptions { winograd, ..opts() }).unwrap();
        let tagged =
            c.kernels.iter().filter(|k| matches!(k.algorithm, Algorithm::Winograd(_) | Algorithm::Stem)).count();
        assert_eq!(tagged > 0, winograd, "{tagged} Winograd kernels with winograd = {winograd}");
        let (d, s) = worst(&c.run(x.view()).unwrap(), &want);
        assert!(d <= 1e-4 * s + 1e-6, "winograd = {winograd}: JIT differs from the reference by {d} (scale {s})");
    }
}

#[test]
fn jit_matches_keras_on_fixtures() {
    for name in ["tiny_resnet", "tiny_apps"] {
        let o =
            Options { weights: Some(root(&format!("tests/fixtures/{name}.safetensors")).into()), ..Default::default() };
        let m = Model::from_file(root(&format!("tests/fixtures/{name}.yaml")), &o).unwrap();
        let x: ArrayD<f32> = ndarray_npy::read_npy(root(&format!("tests/fixtures/{name}_x.npy"))).unwrap();
        let y: ArrayD<f32> = ndarray_npy::read_npy(root(&format!("tests/fixtures/{name}_y.npy"))).unwrap();
        for isa in tiers() {
            let c = m.compile(&BackendOptions { isa, ..opts() }).unwrap();
            let (d, s) = worst(&c.run(x.view()).unwrap(), &y);
            assert!(d <= 1e-5 * s + 1e-6, "{name} on {isa}: JIT differs from Keras by {d} (scale {s})");
        }
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

/// Asking for a tier the CPU lacks is an error that names the tier and what is missing; every tier it has
/// compiles and reports itself.
#[test]
fn isa_tiers_are_checked_and_reported() {
    use resnetc_compiler::codegen::x86::Isa;
    let m = Model::from_file(root("tests/fixtures/tiny_resnet.yaml"), &Options::default()).unwrap();
    for isa in Isa::ALL {
        match m.compile(&BackendOptions { isa, ..opts() }) {
            Ok(c) => assert_eq!(c.isa(), isa),
            Err(e) => {
                assert!(isa.check_supported().is_err(), "{isa}: {e}");
                let e = e.to_string();
                assert!(e.contains(isa.name()) && e.contains("needs"), "{e}");
            }
        }
    }
    assert!(m.compile(&BackendOptions { isa: Isa::F32x4, ..opts() }).is_ok());
}
