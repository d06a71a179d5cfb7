//! Images become the same input arrays as in Keras: every case of tests/fixtures/images/cases.json (made by
//! make_image_fixtures.py with Keras's `load_img`, `img_to_array` and `preprocess_input`) is decoded,
//! resized and preprocessed here and compared with Keras's array. PNG, BMP and WebP must match to 1e-6 (they
//! match exactly); JPEG, whose decoders differ, within the measured tolerance.

use ndarray::ArrayD;
use resnetc_compiler::images::{decode_image, read_image, resize_bilinear, resize_nearest};
use resnetc_compiler::spec::io::{ImageIo, Preprocess, Resize};
use serde_json::Value;

mod common;

fn fixtures() -> String {
    common::root("tests/fixtures/images")
}

fn io_of(case: &Value) -> ImageIo {
    let preprocess = match &case["preprocess"] {
        Value::Null => Preprocess::default(),
        Value::String(s) => Preprocess::named(s).unwrap(),
        Value::Object(m) => Preprocess { scale: m["scale"].as_f64().unwrap(), ..Preprocess::default() },
        v => panic!("preprocess {v}"),
    };
    let resize = match case["resize"].as_str().unwrap() {
        "nearest" => Resize::Nearest,
        "bilinear" => Resize::Bilinear,
        "center_crop" => Resize::CenterCrop { shorter: None },
        r => panic!("resize {r}"),
    };
    ImageIo { preprocess, resize, ..Default::default() }
}

/// (largest |difference|, mean |difference|, share of elements that differ) between our array and Keras's
/// for one case.
fn compare(case: &Value) -> (f32, f64, f64) {
    let dir = fixtures();
    let name = case["name"].as_str().unwrap();
    let image = read_image(format!("{dir}/{}", case["image"].as_str().unwrap()).as_ref()).unwrap();
    let t: Vec<usize> = case["target"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let c = if case["color"] == "grayscale" { 1 } else { 3 };
    let got = io_of(case).preprocess(&image, &[t[0], t[1], c]).unwrap().into_dyn();
    let want: ArrayD<f32> = ndarray_npy::read_npy(format!("{dir}/{name}.npy")).unwrap();
    assert_eq!(got.shape(), want.shape(), "{name}");
    let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let mean = got.iter().zip(&want).map(|(a, b)| (a - b).abs() as f64).sum::<f64>() / got.len() as f64;
    let differing = got.iter().zip(&want).filter(|(a, b)| a != b).count() as f64 / got.len() as f64;
    (d, mean, differing)
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{}/cases.json", fixtures())).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

#[test]
fn png_bmp_and_webp_match_keras_exactly() {
    let mut n = 0;
    for case in cases().iter().filter(|c| c["exact"] == true) {
        let (d, _, _) = compare(case);
        assert!(d <= 1e-6, "{}: largest difference from Keras {d}", case["name"]);
        n += 1;
    }
    assert!(n >= 40, "only {n} exact cases");
}

/// zune-jpeg (the `image` crate's decoder) and libjpeg-turbo (PIL's) round some pixels differently, most
/// where chroma is subsampled (4:2:0, Pillow's default; libjpeg-turbo's "fancy" upsampling): measured on
/// these files, decoded whole, at most 3 levels of 255 and 0.36 on average, 25 % of the values (4:2:0); 2 and
/// 0.013, 1.1 % (4:4:4); 1 and 0.012, 1.2 % (grayscale). `cargo test --release --test predict_images -- --nocapture` prints each case.
#[test]
fn jpeg_is_within_a_few_levels_of_keras() {
    let mut n = 0;
    for case in cases().iter().filter(|c| c["exact"] == false) {
        let (d, mean, share) = compare(case);
        println!(
            "{}: largest difference {d}, mean {mean:.3}, {:.1} % of the values differ",
            case["name"],
            100.0 * share
        );
        // Raw 0-255 values: no preprocessing in these cases.
        assert_eq!(case["preprocess"], Value::Null);
        assert!(d <= 3.0 && mean <= 0.5, "{}: largest difference {d}, mean {mean}", case["name"]);
        n += 1;
    }
    assert!(n >= 10, "only {n} JPEG cases");
}

/// The fixtures cover every preprocessing mode on every 8-bit value; this checks the scale step's rounding
/// on its own: the f64 product rounded once equals numpy's float32 division for the named modes.
#[test]
fn scale_equals_float32_division() {
    for (mode, div) in [("torch", 255f32), ("tf", 127.5f32)] {
        let p = Preprocess { mean: vec![], std: vec![], ..Preprocess::named(mode).unwrap() };
        for v in 0..=255u8 {
            assert_eq!((v as f64 * p.scale) as f32, v as f32 / div, "{mode} {v}");
        }
    }
    let notebook = 0.00392156862745098f64;
    for v in 0..=255u8 {
        assert_eq!((v as f64 * notebook) as f32, v as f32 / 255.0, "x/255 {v}");
    }
}

#[test]
fn resizing_to_the_same_size_is_the_identity() {
    let src: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
    assert_eq!(resize_nearest(&src, (5, 4), 3, (5, 4)), src);
    assert_eq!(resize_bilinear(&src, (5, 4), 3, (5, 4)), src);
}

#[test]
fn bilinear_averages_when_shrinking() {
    // 4 -> 1 pixel: PIL's antialiasing filter (the triangle widened 4x) covers all four input pixels, where
    // a 2-tap bilinear interpolation would read only the middle two (and give 128 for the second case too).
    let src = [0u8, 0, 255, 255];
    let out = resize_bilinear(&src, (4, 1), 1, (1, 1));
    assert_eq!(out, vec![128]);
    // Weights (0.625, 0.875, 0.875, 0.625) / 3: PIL gives 53 for this one (checked with Pillow 13).
    let src = [255u8, 0, 0, 0];
    assert_eq!(resize_bilinear(&src, (4, 1), 1, (1, 1)), vec![53]);
}

/// A JPEG cut short is refused, as PIL refuses it ("image file is truncated"), instead of being classified
/// with its missing rows filled in; bytes after the end marker are ignored, as PIL ignores them, and an EXIF
/// thumbnail's end marker is not taken for the image's.
#[test]
fn truncated_jpeg_is_an_error() {
    let full = std::fs::read(format!("{}/q90.jpg", fixtures())).unwrap();
    let e = decode_image(&full[..full.len() - 10]).unwrap_err();
    assert_eq!(e, "this JPEG file ends before its end-of-image marker (truncated?)");
    assert!(decode_image(&full[..full.len() / 3]).is_err());
    // Data after the end marker (a motion photo's video), markers included, is not looked at.
    let mut trailing = full.clone();
    trailing.extend_from_slice(b"\xff\xda\x00\x08 video \xff\xda");
    assert_eq!(decode_image(&trailing).unwrap(), decode_image(&full).unwrap());
    // A complete thumbnail inside an APP1 segment does not make a truncated image complete.
    let thumb = std::fs::read(format!("{}/gray.jpg", fixtures())).unwrap();
    let mut with_thumb = full[..2].to_vec();
    with_thumb.extend_from_slice(&[0xFF, 0xE1]);
    with_thumb.extend_from_slice(&((thumb.len() + 8) as u16).to_be_bytes());
    with_thumb.extend_from_slice(b"Exif\0\0");
    with_thumb.extend_from_slice(&thumb);
    with_thumb.extend_from_slice(&full[2..]);
    assert_eq!(decode_image(&with_thumb).unwrap(), decode_image(&full).unwrap());
    assert!(decode_image(&with_thumb[..with_thumb.len() - 100]).is_err());
    assert_eq!(decode_image(b"").unwrap_err(), "the file is empty");
    assert!(decode_image(b"GIF89a\x01\x00\x01\x00").unwrap_err().contains("resnetc reads JPEG, PNG, BMP and WebP"));
}

/// CRC-32 (PNG's) of `bytes`, to write a PNG header by hand.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// Hostile images get a named limit, not an allocation of their declared size: a 60000x60000 PNG (10 GB of
/// pixels) declared in a 60-byte file, and a 1x3000 image center-cropped after resizing its shorter side to
/// 10000 (a 10000x30000000 intermediate image PIL would make; only the crop is computed).
#[test]
fn size_bombs_are_refused_or_never_materialized() {
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        let body: Vec<u8> = kind.iter().chain(data).copied().collect();
        c.extend_from_slice(&body);
        c.extend_from_slice(&crc32(&body).to_be_bytes());
        c
    };
    let mut ihdr = 60000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&60000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
    png.extend(chunk(b"IEND", &[]));
    let e = decode_image(&png).unwrap_err();
    assert!(e.contains("would take more than 536870912 bytes (the limit)"), "{e}");

    let tall = resnetc_compiler::image::RgbImage::from_fn(1, 3000, |_, y| {
        resnetc_compiler::image::Rgb([(y % 256) as u8, 7, 9])
    });
    let io = ImageIo { resize: Resize::CenterCrop { shorter: Some(10000) }, ..Default::default() };
    let x = io.preprocess(&tall.into(), &[8, 8, 3]).unwrap();
    assert_eq!(x.shape(), [8, 8, 3]);
}

/// Every file in tests/fixtures/images is an image or array a case uses, cases.json or a script, and together
/// they stay small.
#[test]
fn image_fixtures_are_complete_and_small() {
    let cases = cases();
    let mut used: Vec<String> =
        vec!["cases.json".into(), "make_image_fixtures.py".into(), "check_predict_keras.py".into()];
    for c in &cases {
        used.push(c["image"].as_str().unwrap().into());
        used.push(format!("{}.npy", c["name"].as_str().unwrap()));
        assert!(std::path::Path::new(&format!("{}/{}.npy", fixtures(), c["name"].as_str().unwrap())).is_file());
    }
    let mut total = 0;
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let entry = entry.unwrap();
        if !entry.metadata().unwrap().is_file() {
            continue; // e.g. a __pycache__
        }
        let file = entry.file_name().to_string_lossy().into_owned();
        assert!(used.contains(&file), "tests/fixtures/images/{file} is used by no case");
        total += entry.metadata().unwrap().len();
    }
    assert!(total <= 400_000, "tests/fixtures/images holds {total} bytes, over the 400 KB budget");
}
