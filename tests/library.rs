//! The library as a user sees it: the README's example (examples/library.rs, included here and run), and
//! errors that read the same through `?` and `Box<dyn Error>` as on the command line.

mod example {
    include!("../examples/library.rs");
    pub fn run() -> Result<(), Box<dyn std::error::Error>> {
        main()
    }
}

#[test]
fn the_readme_example_is_the_example_file_and_runs() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/library.rs")).unwrap();
    assert!(
        readme.contains(&format!("```rust\n{example}```")),
        "README.md's library example differs from examples/library.rs"
    );
    example::run().unwrap();
}

#[test]
fn errors_debug_as_they_display() {
    let spec = "input: [8, 8, 3]\nlayers:\n  - {op: conv, filters: 4, kernel: 3}\n  - {op: relu, inputs: nowhere}\n";
    let e = resnetc_compiler::Model::from_str("bad.yaml", spec, &Default::default()).unwrap_err();
    let debug = format!("{e:?}");
    assert_eq!(debug, e.to_string());
    assert!(debug.contains("bad.yaml:4:24: error: "), "{debug}");
    assert!(!debug.contains("Diagnostic"), "{debug}");
    // What `fn main() -> Result<(), Box<dyn Error>>` prints on failure: `Error: {:?}`.
    let boxed: Box<dyn std::error::Error> = Box::new(e);
    assert!(format!("Error: {boxed:?}").starts_with("Error: bad.yaml:4:24: error: "), "{boxed:?}");
    // Other variants too.
    let e = resnetc_compiler::npy::read_batch("/dev/zero").unwrap_err();
    assert_eq!(format!("{e:?}"), "/dev/zero: error: an input batch must be a regular file, found a character device");
}

#[test]
fn large_batches_run_on_the_reference_interpreter_in_chunks() {
    // 10.5 MB of activations per item: 25 items per 256 MiB chunk, so 27 items run as two chunks.
    let spec = "input: [256, 256, 16]\nlayers:\n  - {op: relu}\n  - {op: max_pool, pool: 2}\n  - {op: relu}\n  \
                - {op: global_avg_pool}\n  - {op: dense, units: 3}\n";
    let m = resnetc_compiler::Model::from_str("big.yaml", spec, &Default::default()).unwrap();
    let x = ndarray::Array4::<f32>::from_shape_fn((27, 256, 256, 16), |(n, h, w, c)| {
        ((n * 7 + h * 3 + w * 5 + c) % 13) as f32 - 6.0
    })
    .into_dyn();
    let y = m.run_reference(x.view()).unwrap();
    assert_eq!(y.shape(), &[27, 3]);
    for (n, row) in y.outer_iter().enumerate() {
        let alone = m.run_reference(x.slice(ndarray::s![n..n + 1, .., .., ..]).into_dyn()).unwrap();
        assert_eq!(row, alone.index_axis(ndarray::Axis(0), 0), "item {n}");
    }
}

#[test]
fn more_threads_than_the_machine_allows_is_an_error() {
    let spec = "input: [8, 8, 3]\nlayers:\n  - {op: conv, filters: 4, kernel: 3}\n";
    let m = resnetc_compiler::Model::from_str("t.yaml", spec, &Default::default()).unwrap();
    let max = resnetc_runtime::pool::max_threads();
    let o = resnetc_compiler::backend::BackendOptions { threads: max + 1, ..Default::default() };
    let e = m.compile(&o).err().expect("refused");
    assert!(matches!(e, resnetc_compiler::Error::Runtime(_)), "{e}");
    assert!(e
        .to_string()
        .starts_with(&format!("error: {} threads requested; this machine allows at most {max}", max + 1)));
}
