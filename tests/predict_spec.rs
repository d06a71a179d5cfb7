//! The spec's image fields (`preprocess`, `resize`, `labels`): what they parse to, and every mistake a located
//! error.

use resnetc_compiler::spec::io::{Preprocess, Resize};
use resnetc_compiler::{check, Options};

mod common;
use common::cli::scratch;

/// A classifier of 3 classes on 8x8 RGB images; `fields` go at the top level.
fn spec(fields: &str) -> String {
    format!(
        "model: tiny\ninput: [8, 8, 3]\n{fields}\nlayers:\n  - {{op: conv, filters: 4, kernel: 3}}\n  - {{op: global_avg_pool}}\n  - {{op: dense, units: 3, activation: softmax}}\n"
    )
}

/// The diagnostics of a spec text, one per line as the CLI prints them.
fn errors(name: &str, text: &str) -> String {
    let (ok, diags) = check(name, text.as_bytes(), &Options::default());
    assert!(ok.is_none(), "{name} was accepted:\n{text}");
    diags.to_string()
}

fn io(name: &str, text: &str) -> resnetc_compiler::spec::io::ImageIo {
    let (ok, diags) = check(name, text.as_bytes(), &Options::default());
    assert!(!diags.has_errors(), "{diags}");
    ok.unwrap().0.io
}

#[test]
fn defaults_are_keras_load_img() {
    let io = io("t.yaml", &spec(""));
    assert_eq!(io.preprocess, Preprocess::default());
    assert_eq!(io.resize, Resize::Nearest);
    assert_eq!(io.labels, None);
}

#[test]
fn named_and_explicit_preprocessing() {
    let caffe = io("t.yaml", &spec("preprocess: caffe"));
    assert!(caffe.preprocess.bgr);
    assert_eq!(caffe.preprocess.mean, [103.939, 116.779, 123.68]);
    assert_eq!(io("t.yaml", &spec("preprocess: torch")).preprocess, Preprocess::named("torch").unwrap());
    let p = io("t.yaml", &spec("preprocess: {scale: 0.5, mean: [1, 2, 3], std: 2, channels: bgr}")).preprocess;
    assert_eq!(p, Preprocess { bgr: true, scale: 0.5, mean: vec![1.0, 2.0, 3.0], std: vec![2.0] });
    assert_eq!(io("t.yaml", &spec("resize: bilinear")).resize, Resize::Bilinear);
    assert_eq!(io("t.yaml", &spec("resize: center_crop")).resize, Resize::CenterCrop { shorter: None });
    assert_eq!(io("t.yaml", &spec("resize: {center_crop: 10}")).resize, Resize::CenterCrop { shorter: Some(10) });
    assert_eq!(Resize::default_shorter(224, 224), 256);
}

#[test]
fn labels_inline_and_from_a_file_relative_to_the_spec() {
    let io1 = io("t.yaml", &spec("labels: [cat, dog, 7]"));
    assert_eq!(io1.labels.unwrap(), ["cat", "dog", "7"]);
    let d = scratch("file");
    std::fs::create_dir_all(d.join("names")).unwrap();
    // CRLF line ends and a trailing blank line are fine.
    std::fs::write(d.join("names/three.txt"), "tiger cat\r\njack-o'-lantern\r\ncrane\r\n\r\n").unwrap();
    let path = d.join("m.yaml");
    let io2 = io(&path.display().to_string(), &spec("labels: names/three.txt"));
    assert_eq!(io2.labels.unwrap(), ["tiger cat", "jack-o'-lantern", "crane"]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn shipped_specs_have_labels() {
    for (name, n, first) in [("notebook_resnet50", 6, "0"), ("resnet50", 1000, "tench"), ("resnet18", 1000, "tench")] {
        let path = common::root(&format!("specs/{name}.yaml"));
        let io = io(&path, &std::fs::read_to_string(&path).unwrap());
        let labels = io.labels.unwrap();
        assert_eq!((labels.len(), labels[0].as_str()), (n, first), "{name}");
    }
    let labels = std::fs::read_to_string(common::root("specs/labels/imagenet.txt")).unwrap();
    let labels: Vec<&str> = labels.lines().collect();
    // Keras's names, duplicates included (two cranes, two maillots).
    assert_eq!(&labels[281..=285], ["tabby", "tiger_cat", "Persian_cat", "Siamese_cat", "Egyptian_cat"]);
    assert_eq!((labels[134], labels[517], labels[638], labels[639]), ("crane", "crane", "maillot", "maillot"));
}

#[test]
fn a_label_count_that_differs_from_the_outputs_is_an_error_at_the_labels_line() {
    let e = errors("t.yaml", &spec("labels: [a, b]"));
    assert_eq!(e, "t.yaml:3:9: error: `labels` names 2 class(es), but the model has 3 outputs");
    let d = scratch("count");
    std::fs::write(d.join("l.txt"), "a\nb\nc\nd\n").unwrap();
    let path = d.join("m.yaml").display().to_string();
    let e = errors(&path, &spec("preprocess: caffe\nlabels: l.txt"));
    assert_eq!(e, format!("{path}:4:9: error: `labels` names 4 class(es), but the model has 3 outputs"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn labels_of_an_output_that_is_not_a_vector() {
    let text = "input: [4, 4, 3]\nlabels: [a]\nlayers:\n  - {op: conv, filters: 2, kernel: 1}\n";
    let e = errors("t.yaml", text);
    assert!(e.starts_with("t.yaml:2:9: error: `labels` names the classes of a model with one output vector"), "{e}");
    assert!(e.contains("[4, 4, 2]"), "{e}");
}

#[test]
fn bad_labels_files_are_located() {
    let d = scratch("badfile");
    let path = d.join("m.yaml").display().to_string();
    let e = errors(&path, &spec("labels: missing.txt"));
    assert!(
        e.starts_with(&format!("{path}:3:9: error: `labels`: cannot read {}", d.join("missing.txt").display())),
        "{e}"
    );
    // A blank line in the middle and a control character: errors at the labels file's own lines.
    std::fs::write(d.join("l.txt"), "a\n\nb\tc\n").unwrap();
    let e = errors(&path, &spec("labels: l.txt"));
    let l = d.join("l.txt").display().to_string();
    assert!(e.contains(&format!("{l}:2:1: error: the label on this line is empty")), "{e}");
    assert!(e.contains(&format!("{l}:3:1: error: the label on this line contains a control character")), "{e}");
    assert!(e.contains(&format!("note: labels file named at {path}:3:9")), "{e}");
    std::fs::write(d.join("bin.txt"), b"a\nb\xff\n").unwrap();
    let e = errors(&path, &spec("labels: bin.txt"));
    assert!(
        e.contains(&format!("{}:2:1: error: a labels file must be UTF-8 text", d.join("bin.txt").display())),
        "{e}"
    );
    // A directory or a device is not read.
    let e = errors(&path, &spec(&format!("labels: {}", d.display())));
    assert!(e.contains("not a regular file"), "{e}");
    #[cfg(unix)]
    {
        let e = errors(&path, &spec("labels: /dev/zero"));
        assert!(e.contains("/dev/zero: not a regular file"), "{e}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_field_values_are_located() {
    let cases: &[(&str, &str)] = &[
        ("preprocess: cafe", "t.yaml:3:13: error: `preprocess` must be one of caffe, torch, tf, found `cafe` (did you mean `caffe`?)"),
        ("preprocess: 3", "t.yaml:3:13: error: `preprocess` must be one of caffe, torch, tf or a mapping with scale, mean, std, channels, found the integer 3"),
        ("preprocess: {scael: 2}", "t.yaml:3:14: error: unknown field `scael` in `preprocess` (did you mean `scale`?); expected one of: scale, mean, std, channels"),
        ("preprocess: {scale: -1}", "t.yaml:3:21: error: `scale` must be a positive number, found -1"),
        ("preprocess: {scale: 1e39}", "t.yaml:3:21: error: `scale` must be a number within float32's range (±3.4e38), found 1e39"),
        ("preprocess: {std: [1, 0, 1]}", "t.yaml:3:23: error: a `std` value must not be zero (the input is divided by it)"),
        ("preprocess: {mean: [1, x]}", "t.yaml:3:24: error: a `mean` value must be a number, found the string \"x\""),
        ("preprocess: {mean: [1, 2]}", "t.yaml:3:20: error: `mean` has 2 values but the input has 3 channel(s) (input shape [8, 8, 3]): give one value per channel, or one for all"),
        ("preprocess: {channels: brg}", "t.yaml:3:24: error: `channels` must be one of rgb, bgr, found `brg` (did you mean `bgr`?)"),
        ("resize: bilinar", "t.yaml:3:9: error: `resize` must be one of nearest, bilinear, center_crop, found `bilinar` (did you mean `bilinear`?)"),
        ("resize: {center_crop: 0}", "t.yaml:3:23: error: `center_crop` is the size the shorter side is resized to before the crop, a positive integer up to 1048576; found the integer 0"),
        ("resize: {center_crop: 7}", "t.yaml:3:9: error: `center_crop` resizes the shorter side to 7, which is smaller than the input's 8x8: the crop would not fit (give at least 8)"),
        ("resize: [1]", "t.yaml:3:9: error: `resize` must be one of nearest, bilinear, center_crop, or {center_crop: SIZE} (the shorter side before the crop); found the list [1]"),
        ("labels: []", "t.yaml:3:9: error: `labels` must be a list of class names or the path of a text file with one name per line, found an empty list"),
        ("labels: [a, '', c]", "t.yaml:3:13: error: this label is empty"),
        ("labels: [a, [b], c]", "t.yaml:3:13: error: a label must be a string, found the list [\"b\"]"),
        ("lables: [a, b, c]", "t.yaml:3:1: error: unknown field `lables` in the spec's top level (did you mean `labels`?)"),
    ];
    for (field, want) in cases {
        let e = errors("t.yaml", &spec(field));
        assert!(e.starts_with(want), "{field}:\n got: {e}\nwant: {want}");
    }
}

#[test]
fn images_need_one_or_three_channels() {
    let text = "input: [8, 8, 4]\npreprocess: torch\nlayers:\n  - {op: global_avg_pool}\n";
    let e = errors("t.yaml", text);
    assert_eq!(
        e,
        "t.yaml:2:13: error: images give 1 (grayscale) or 3 (RGB) channels, but the model's input is [8, 8, 4]"
    );
}

/// Found by the spec fuzzer: a named mode's per-channel means on a one-channel input were an unlocated
/// error; it points at `preprocess`.
#[test]
fn regression_named_mode_means_on_one_channel_are_located() {
    let text = spec("preprocess: caffe").replace("input: [8, 8, 3]", "input: [8, 8, 1]");
    let e = errors("gray.yaml", &text);
    assert!(e.contains("gray.yaml:3:13: error: `mean` has 3 values but the input has 1 channel(s)"), "{e}");
}
