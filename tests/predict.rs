//! `resnetc predict` as a user runs it: a folder of images with a corrupt one, text/JSON/CSV outputs, the
//! library's `predict_images` giving the same answers, and the errors a user can cause.

use resnetc_compiler::backend::BackendOptions;
use resnetc_compiler::image::{ImageFormat, Rgb, RgbImage};
use resnetc_compiler::images::read_image;
use resnetc_compiler::{Model, Options};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::cli::*;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A seeded picture of `w`x`h`: smooth colour fields that differ from seed to seed.
fn picture(seed: u32, w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let v = |k: u32| ((x * (3 + seed % 5 + k) + y * (2 + seed % 7) + seed * 37 + k * 80) % 256) as u8;
        Rgb([v(0), v(1), v(2)])
    })
}

/// A small classifier of 8x8 RGB images into 4 named classes (labels that need quoting in CSV).
const TINY: &str = "\
model: tiny
input: [8, 8, 3]
preprocess: {scale: 0.00392156862745098}
labels: [\"cat\", \"dog, big\", 'say \"hi\"', bird]
layers:
  - {op: conv, name: c1, filters: 6, kernel: 3, padding: same}
  - {op: relu}
  - {op: global_avg_pool}
  - {op: dense, name: fc, units: 4, activation: softmax}
";

fn tiny(dir: &Path, labels: bool) -> String {
    let text = if labels {
        TINY.to_string()
    } else {
        TINY.lines().filter(|l| !l.starts_with("labels")).collect::<Vec<_>>().join("\n")
    };
    let p = dir.join(if labels { "tiny.yaml" } else { "tiny_nolabels.yaml" });
    std::fs::write(&p, text).unwrap();
    s(&p)
}

fn json_lines(o: &Output) -> Vec<Value> {
    stdout(o).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

#[test]
fn help_lists_the_options() {
    let o = resnetc(&["predict", "--help"]);
    assert_exit(&o, 0);
    let out = stdout(&o);
    for opt in [
        "<SPEC>",
        "<IMAGE_OR_DIR>...",
        "--weights",
        "--top",
        "--batch",
        "--threads",
        "--json",
        "--csv",
        "--recursive",
        "--seed",
    ] {
        assert!(out.contains(opt), "`predict --help` does not mention `{opt}`:\n{out}");
    }
    assert!(stdout(&resnetc(&["--help"])).contains("predict"));
}

/// The issue's acceptance case: 200 images (one corrupt) through the notebook model in batches, a CSV row per
/// image, the corrupt one reported and the other 199 classified, and the same classes as one at a time.
#[test]
fn a_folder_of_200_images_with_one_corrupt_file() {
    let d = scratch("folder");
    let images = d.join("photos");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..200u32 {
        let path = images.join(format!("img{i:03}.{}", if i % 2 == 0 { "png" } else { "jpg" }));
        if i == 117 {
            // A JPEG cut short.
            let mut bytes = vec![];
            picture(i, 64, 64).write_to(&mut std::io::Cursor::new(&mut bytes), ImageFormat::Jpeg).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
            continue;
        }
        // Sizes around the model's 64x64: resized as Keras's load_img does.
        let (w, h) = [(64, 64), (80, 60), (50, 70)][i as usize % 3];
        picture(i, w, h).save(&path).unwrap();
    }
    let csv = d.join("out.csv");
    let spec = "specs/notebook_resnet50.yaml";
    let o = resnetc(&["predict", spec, &s(&images), "--batch", "16", "--csv", &s(&csv), "--threads", "2"]);
    assert_exit(&o, 1);
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(err.contains("no --weights: random initialization, seed 0"), "{err}");
    assert!(
        err.contains(&format!(
            "{}: error: this JPEG file ends before its end-of-image marker",
            s(&images.join("img117.jpg"))
        )),
        "{err}"
    );
    assert!(err.contains("classified 199 image(s) in"), "{err}");
    assert!(err.contains("error: 1 of 200 image(s) could not be read"), "{err}");
    // Piped: no progress bar.
    assert!(!err.contains("images,") && !err.contains('\r'), "{err}");
    // Text: one line per classified image, the SIGNS labels with scores, in path order.
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 199, "{out}");
    assert!(lines[0].starts_with(&format!("{}: ", s(&images.join("img000.png")))), "{}", lines[0]);
    assert!(lines.iter().all(|l| l.matches(" (0.").count() == 5), "{out}");
    // CSV: a header and 200 rows, the corrupt one with its error.
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 201);
    assert_eq!(rows[0][..4], ["file", "class_1", "label_1", "score_1"]);
    assert_eq!(rows[0].len(), 1 + 3 * 5 + 1);
    let failed: Vec<&Vec<&str>> = rows[1..].iter().filter(|r| !r.last().unwrap().is_empty()).collect();
    assert_eq!(failed.len(), 1);
    assert!(failed[0][0].ends_with("img117.jpg") && failed[0][1].is_empty(), "{:?}", failed[0]);
    for r in rows[1..].iter().filter(|r| r.last().unwrap().is_empty()) {
        let class: usize = r[1].parse().unwrap();
        assert!(class < 6 && r[2] == class.to_string(), "{r:?}");
        let scores: Vec<f32> = (0..5).map(|k| r[3 + 3 * k].parse().unwrap()).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]) && scores[0] > 0.0 && scores[0] <= 1.0, "{r:?}");
    }
    // Batching changes nothing: a few images alone give the same classes and scores.
    let some: Vec<String> = [0, 1, 2, 199]
        .iter()
        .map(|i| s(&images.join(format!("img{i:03}.{}", if i % 2 == 0 { "png" } else { "jpg" }))))
        .collect();
    let mut args = vec!["predict", spec, "--json", "--batch", "1"];
    args.extend(some.iter().map(String::as_str));
    let alone = resnetc(&args);
    assert_exit(&alone, 0);
    for (j, line) in json_lines(&alone).iter().enumerate() {
        let row = rows[1..].iter().find(|r| r[0] == some[j]).unwrap();
        assert_eq!(line["top"][0]["class"].as_u64().unwrap().to_string(), row[1]);
        let (a, b) = (line["top"][0]["score"].as_f64().unwrap(), row[3].parse::<f64>().unwrap());
        assert!((a - b).abs() < 1e-6, "{}: {a} vs {b}", some[j]);
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn json_csv_and_labels() {
    let d = scratch("formats");
    let spec = tiny(&d, true);
    let (a, b) = (d.join("a.png"), d.join("b.bmp"));
    picture(1, 8, 8).save(&a).unwrap();
    picture(2, 12, 9).save(&b).unwrap();
    std::fs::write(d.join("c.jpg"), b"not a jpeg").unwrap();
    let csv = d.join("r.csv");
    let o =
        resnetc(&["predict", &spec, &s(&a), &s(&b), &s(&d.join("c.jpg")), "--json", "--top", "2", "--csv", &s(&csv)]);
    assert_exit(&o, 1);
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["file"], s(&a));
    let top = lines[0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 2);
    let names = ["cat", "dog, big", "say \"hi\"", "bird"];
    for t in top {
        assert_eq!(t["label"], names[t["class"].as_u64().unwrap() as usize]);
    }
    assert!(top[0]["score"].as_f64().unwrap() >= top[1]["score"].as_f64().unwrap());
    assert!(lines[2]["error"].as_str().unwrap().starts_with("not an image"), "{}", lines[2]);
    assert!(lines[2].get("top").is_none());
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().next().unwrap(), "file,class_1,label_1,score_1,class_2,label_2,score_2,error");
    assert_eq!(text.lines().count(), 4);
    // CSV quoting: with all four classes, every label is written, those with commas and quotes quoted.
    let o = resnetc(&["predict", &spec, &s(&a), "--top", "4", "--csv", &s(&csv)]);
    assert_exit(&o, 0);
    let row = std::fs::read_to_string(&csv).unwrap().lines().nth(1).unwrap().to_string();
    for quoted in [",cat,", ",\"dog, big\",", ",\"say \"\"hi\"\"\",", ",bird,"] {
        assert!(row.contains(quoted), "{quoted} not in {row}");
    }
    // --top beyond the classes gives them all.
    let o = resnetc(&["predict", &spec, &s(&a), "--json", "--top", "10"]);
    assert_exit(&o, 0);
    assert_eq!(json_lines(&o)[0]["top"].as_array().unwrap().len(), 4);
    // Without labels, classes are numbered.
    let o = resnetc(&["predict", &tiny(&d, false), &s(&a), "--top", "1"]);
    assert_exit(&o, 0);
    assert!(stdout(&o).starts_with(&format!("{}: class ", s(&a))), "{}", stdout(&o));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn directories_are_searched_in_order_and_recursively_with_r() {
    let d = scratch("dirs");
    let spec = tiny(&d, true);
    let top = d.join("pics");
    std::fs::create_dir_all(top.join("sub/deeper")).unwrap();
    for (i, p) in ["b.png", "A.PNG", "sub/c.jpg", "sub/deeper/d.webp", "z.bmp"].iter().enumerate() {
        let path = top.join(p);
        picture(i as u32, 8, 8).save_with_format(&path, ImageFormat::from_path(&path).unwrap()).unwrap();
    }
    std::fs::write(top.join("notes.txt"), "not an image, and not looked at").unwrap();
    let files =
        |o: &Output| -> Vec<String> { json_lines(o).iter().map(|l| l["file"].as_str().unwrap().to_string()).collect() };
    let o = resnetc(&["predict", &spec, &s(&top), "--json"]);
    assert_exit(&o, 0);
    assert_eq!(files(&o), [s(&top.join("A.PNG")), s(&top.join("b.png")), s(&top.join("z.bmp"))]);
    assert!(
        stderr(&o).contains(&format!("{}: note: 1 subdirectory not searched (-r searches them)", s(&top))),
        "{}",
        stderr(&o)
    );
    let o = resnetc(&["predict", &spec, &s(&top), "-r", "--json"]);
    assert_exit(&o, 0);
    // Sorted by path: subdirectories' images among the others.
    let want: Vec<String> =
        ["A.PNG", "b.png", "sub/c.jpg", "sub/deeper/d.webp", "z.bmp"].iter().map(|p| s(&top.join(p))).collect();
    assert_eq!(files(&o), want);
    // A directory without images is a warning; nothing to classify at all is an error.
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = resnetc(&["predict", &spec, &s(&empty)]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("warning: no images in this directory"), "{}", stderr(&o));
    assert!(stderr(&o).contains("error: no images to classify"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn unreadable_inputs_are_reported_and_skipped() {
    let d = scratch("bad");
    let spec = tiny(&d, true);
    let good = d.join("ok.png");
    picture(3, 10, 10).save(&good).unwrap();
    let missing = d.join("missing.png");
    let mut args = vec!["predict".to_string(), spec.clone(), s(&missing), s(&good)];
    if cfg!(unix) {
        args.push("/dev/zero".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = resnetc(&args);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(err.contains(&format!("{}: error: cannot read it: ", s(&missing))), "{err}");
    if cfg!(unix) {
        assert!(err.contains("/dev/zero: error: not a regular file"), "{err}");
    }
    assert!(stdout(&o).starts_with(&s(&good)), "{}", stdout(&o));
    // Usage errors: exit status 2.
    assert_exit(&resnetc(&["predict", &spec, &s(&good), "--top", "0"]), 2);
    assert_exit(&resnetc(&["predict", &spec, &s(&good), "--batch", "0"]), 2);
    assert_exit(&resnetc(&["predict", &spec]), 2);
    // A CSV that cannot be written fails before any work.
    let o = resnetc(&["predict", &spec, &s(&good), "--csv", &s(&d.join("no/such/dir.csv"))]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("error: cannot write the CSV file"), "{}", stderr(&o));
    // A model whose input no image can fill.
    let four = d.join("four.yaml");
    std::fs::write(&four, "input: [8, 8, 4]\nlayers:\n  - {op: global_avg_pool}\n").unwrap();
    let o = resnetc(&["predict", &s(&four), &s(&good)]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("images give 1 (grayscale) or 3 (RGB) channels, but the model's input is [8, 8, 4]"),
        "{}",
        stderr(&o)
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// The library gives what the CLI prints, and the same as preprocessing by hand and running the reference
/// interpreter.
#[test]
fn library_predict_images_matches_the_cli_and_the_reference() {
    let d = scratch("library");
    let spec = tiny(&d, true);
    let paths: Vec<PathBuf> = (0..3).map(|i| d.join(format!("p{i}.png"))).collect();
    for (i, p) in paths.iter().enumerate() {
        picture(10 + i as u32, 9 + i as u32, 7 + 2 * i as u32).save(p).unwrap();
    }
    let model = Model::from_file(&spec, &Options::default()).unwrap();
    let compiled = model.compile(&BackendOptions { threads: 1, ..Default::default() }).unwrap();
    let imgs: Vec<_> = paths.iter().map(|p| read_image(p).unwrap()).collect();
    let preds = compiled.predict_images(&imgs, 4).unwrap();
    assert_eq!(compiled.labels().unwrap().len(), 4);
    let mut args = vec!["predict".to_string(), spec.clone(), "--json".into(), "--top".into(), "4".into()];
    args.extend(paths.iter().map(|p| s(p)));
    let o = resnetc(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_exit(&o, 0);
    for ((pred, line), img) in preds.iter().zip(json_lines(&o)).zip(&imgs) {
        let x = model.preprocess(img).unwrap();
        assert_eq!(x, compiled.preprocess(img).unwrap());
        let y = model.run_reference(x.insert_axis(ndarray::Axis(0)).into_dyn().view()).unwrap();
        for (k, p) in pred.iter().enumerate() {
            assert_eq!(line["top"][k]["class"].as_u64().unwrap() as usize, p.class);
            assert_eq!(line["top"][k]["label"].as_str(), p.label.as_deref());
            assert!((line["top"][k]["score"].as_f64().unwrap() as f32 - p.score).abs() < 1e-6);
            assert!((y[[0, p.class]] - p.score).abs() < 1e-5, "reference {} vs {}", y[[0, p.class]], p.score);
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// The issue's acceptance check against Keras (ResNet-50, the peers' weights): needs the peers' venv with
/// Pillow and models (see tests/fixtures/images/check_predict_keras.py); run with `--ignored`.
#[test]
#[ignore]
fn resnet50_predictions_match_keras() {
    let python = std::env::var("HOME").map(|h| format!("{h}/.cache/resnetc-peers/venv/bin/python")).unwrap();
    let o = Command::new(&python)
        .arg(common::root("tests/fixtures/images/check_predict_keras.py"))
        .env("KERAS_BACKEND", "jax")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the peers' python runs");
    println!("{}{}", stdout(&o), stderr(&o));
    assert_exit(&o, 0);
}
