//! One compiled model shared by many threads gives bit-identical outputs to one thread running alone: the
//! runtime's arenas, per-thread work buffers and thread pool keep concurrent runs apart.
//!
//! The fixture tiny_resnet (the notebook model in miniature, with Keras weights) compiled for 2 threads;
//! 8 threads x 200 runs, each thread with its own inputs (so runs that shared memory would differ).

use resnetc_compiler::backend::BackendOptions;
use resnetc_compiler::{Model, Options};
use std::path::Path;

mod common;

#[test]
fn eight_threads_times_200_runs_match_one_thread_bit_for_bit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let opts = Options { weights: Some(root.join("tests/fixtures/tiny_resnet.safetensors")), ..Default::default() };
    let model = Model::from_file(root.join("tests/fixtures/tiny_resnet.yaml"), &opts).unwrap();
    for pool_threads in [1, 2] {
        let compiled = model.compile(&BackendOptions { threads: pool_threads, ..Default::default() }).unwrap();
        // Batches of 1 to 3 items, one per caller thread; their outputs from one thread, alone.
        let inputs: Vec<_> = (0..8).map(|t| common::input(model.input_shape(), 1 + t % 3, 100 + t as u64)).collect();
        let alone: Vec<_> = inputs.iter().map(|x| compiled.run(x.view()).unwrap()).collect();
        std::thread::scope(|s| {
            for (t, (x, want)) in inputs.iter().zip(&alone).enumerate() {
                let compiled = &compiled;
                s.spawn(move || {
                    for run in 0..200 {
                        let y = compiled.run(x.view()).unwrap();
                        let same = y.iter().zip(want.iter()).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "pool of {pool_threads}: caller thread {t}, run {run}: {y} != {want}");
                    }
                });
            }
        });
    }
}
