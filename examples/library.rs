use resnetc_compiler::backend::BackendOptions;
use resnetc_compiler::{npy, Model, Options};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A spec and its Keras weights from the repository's test fixtures: 36x28x3 images, 3 classes.
    let opts = Options { weights: Some("tests/fixtures/tiny_resnet.safetensors".into()), ..Default::default() };
    let model = Model::from_file("tests/fixtures/tiny_resnet.yaml", &opts)?;
    let x = npy::read_batch("tests/fixtures/tiny_resnet_x.npy")?; // float32 NHWC [N, 36, 28, 3], any N >= 1
    let y_ref = model.run_reference(x.view())?; // the reference interpreter: [N, 3]
    let compiled = model.compile(&BackendOptions { threads: 2, ..Default::default() })?;
    let y = compiled.run(x.view())?; // the JIT kernels; `compiled` is Send + Sync: share it between threads
    let worst = (&y - &y_ref).iter().fold(0f32, |m, d| m.max(d.abs()));
    println!("{y:.4}\nlargest difference from the reference interpreter: {worst:e}");
    Ok(())
}
