//! Images in, classes out: how a picture becomes the model's input, and the model's output a ranking of
//! named classes.
//!
//! In: an image file (JPEG, PNG, BMP or WebP, decoded by the `image` crate; [`read_image`]) or a decoded
//! [`DynamicImage`], and the spec's image fields ([`ImageIo`]). Out: the `[H, W, C]` float32 input Keras
//! would make from the same file — `keras.utils.load_img(path, target_size=(H, W))`, `img_to_array`, then
//! the model's `preprocess_input` — and, from an output row, the top classes ([`top_k`]) with the spec's labels.
//!
//! Each step reproduces what Keras's Python does, not an approximation of it:
//! - colour: PIL's `convert("RGB")` (alpha dropped, not composited; gray replicated; 16-bit channels keep
//!   their high byte, except 16-bit grayscale, which PIL clips to 255) or, for a 1-channel model, PIL's
//!   `convert("L")` (ITU-R 601 weights in 16-bit fixed point);
//! - resizing: PIL's NEAREST ([`resize_nearest`], `load_img`'s default) and BILINEAR ([`resize_bilinear`]:
//!   a triangle filter widened by the scale factor when shrinking, so it antialiases, with PIL's 22-bit
//!   fixed-point coefficients and rounding after each pass), and torchvision's `Resize(shorter)` +
//!   `CenterCrop` (PIL BILINEAR, then the crop), all on 8-bit pixels as PIL does;
//! - preprocessing: see [`Preprocess`] (float32 operations in numpy's order).
//!
//! JPEG is the exception: the `image` crate's decoder (zune-jpeg) and PIL's libjpeg-turbo may round some
//! pixels differently (README, "Classify images", gives the measured difference).

use crate::backend::Compiled;
use crate::spec::io::{ImageIo, Preprocess, Resize};
use crate::{Error, Model};
use image::{DynamicImage, ImageFormat};
use ndarray::{Array3, ArrayView1, ArrayViewMut3, Axis};
use std::io::Read;
use std::ops::Range;
use std::path::Path;

/// The largest image file read.
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;
/// The most memory a decoder may allocate for one image (the decoded pixels included).
pub const MAX_DECODED_BYTES: u64 = 512 << 20;

/// One ranked class of one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// Index in the model's output.
    pub class: usize,
    /// The spec's name for it, if the spec has `labels`.
    pub label: Option<String>,
    /// The model's output for it (a probability for models that end in softmax).
    pub score: f32,
}

/// Reads and decodes an image file. The format is recognized from the content, as PIL does, not from the
/// file name. The error says what is wrong with the file; the caller names it.
pub fn read_image(path: &Path) -> Result<DynamicImage, Error> {
    let fail = Error::Image;
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.len() > MAX_IMAGE_FILE_BYTES {
        return Err(fail(format!(
            "{} bytes, more than the limit of {MAX_IMAGE_FILE_BYTES} for an image file",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_IMAGE_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| fail(format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
        return Err(fail(format!("grew past the limit of {MAX_IMAGE_FILE_BYTES} bytes while being read")));
    }
    decode_image(&bytes).map_err(fail)
}

/// Decodes an encoded image held in memory; the error says why it cannot be decoded.
pub fn decode_image(bytes: &[u8]) -> Result<DynamicImage, String> {
    const READ: &str = "resnetc reads JPEG, PNG, BMP and WebP";
    let mut reader =
        image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Bmp | ImageFormat::WebP)) => f,
        Some(f) => {
            return Err(format!("a {} image; {READ}", f.extensions_str().first().unwrap_or(&"?").to_uppercase()))
        }
        None if bytes.is_empty() => return Err("the file is empty".into()),
        None => return Err(format!("not an image ({READ}; this file starts with none of their signatures)")),
    };
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err("this JPEG file ends before its end-of-image marker (truncated?)".into());
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    let name = match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::Bmp => "BMP",
        _ => "WebP",
    };
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => {
            format!("decoding this image would take more than {MAX_DECODED_BYTES} bytes (the limit)")
        }
        e => {
            // The decoders' messages come as `Format error decoding Jpeg: "line\nline"`: keep the lines.
            let e = e.to_string();
            let why =
                e.split_once(": ").filter(|(head, _)| head.starts_with("Format error")).map_or(e.as_str(), |p| p.1);
            format!(
                "cannot decode this {name} file (corrupt or truncated?): {}",
                why.trim_matches('"').replace("\\n", "; ")
            )
        }
    })?;
    if img.width() == 0 || img.height() == 0 {
        return Err("the image has no pixels".into());
    }
    Ok(img)
}

/// Whether a JPEG file reaches its end-of-image marker (FF D9). The `image` crate's decoder fills a truncated
/// file's missing rows with gray; PIL (and so Keras) refuses it ("image file is truncated"), and so do we. The
/// markers are followed from the start: segments are skipped by their length (an EXIF thumbnail's markers
/// inside them are not seen), entropy-coded data up to the next marker (FF then neither 00 nor a restart
/// marker), so that data appended after the image (a motion photo's video) is never looked at. Stricter than
/// PIL in one case: a baseline file that lacks only its final FF D9, which PIL decodes.
fn jpeg_is_complete(b: &[u8]) -> bool {
    let mut i = 2; // after SOI, which format detection saw
    loop {
        // Skip to the next marker (libjpeg tolerates stray bytes before one), then over fill bytes.
        while i < b.len() && b[i] != 0xFF {
            i += 1;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&m) = b.get(i) else { return false };
        i += 1;
        match m {
            0xD9 => return true,
            // Restart markers and TEM have no length.
            0xD0..=0xD7 | 0x01 => continue,
            _ => {
                let Some(len) = b.get(i..i + 2).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize) else {
                    return false;
                };
                i += len.max(2);
                if m == 0xDA {
                    // A scan's entropy-coded data: FF 00 is a data byte, FF D0-D7 a restart marker.
                    while i + 1 < b.len() && !(b[i] == 0xFF && b[i + 1] != 0x00 && !(0xD0..=0xD7).contains(&b[i + 1])) {
                        i += 1;
                    }
                }
            }
        }
    }
}

/// The image's pixels as PIL's `convert("RGB")` (`channels` 3) or `convert("L")` (`channels` 1) gives them:
/// interleaved 8-bit values, row by row.
fn pil_pixels(img: &DynamicImage, channels: usize) -> Result<Vec<u8>, Error> {
    use DynamicImage as D;
    // PIL opens 16-bit RGB(A) and gray+alpha PNGs as 8-bit modes keeping the high byte, and 16-bit
    // grayscale as "I;16", which `convert("RGB")` clips to 0-255.
    let rgb: Vec<u8> = match img {
        D::ImageLuma8(b) if channels == 1 => return Ok(b.as_raw().clone()),
        D::ImageLumaA8(b) if channels == 1 => return Ok(b.as_raw().chunks_exact(2).map(|p| p[0]).collect()),
        D::ImageLuma16(_) if channels == 1 => {
            // Keras keeps "I;16" as it is for color_mode="grayscale": 16-bit values no 8-bit path can give.
            return Err(Error::Image(
                "a 16-bit grayscale image cannot feed a 1-channel model (Keras would keep its 16-bit values); \
                 convert it to 8 bits"
                    .into(),
            ));
        }
        D::ImageLuma8(b) => b.as_raw().iter().flat_map(|&g| [g, g, g]).collect(),
        D::ImageLumaA8(b) => b.as_raw().chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        D::ImageRgb8(b) => b.as_raw().clone(),
        D::ImageRgba8(b) => b.as_raw().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        D::ImageLuma16(b) => b.as_raw().iter().flat_map(|&g| [g.min(255) as u8; 3]).collect(),
        D::ImageLumaA16(b) => b.as_raw().chunks_exact(2).flat_map(|p| [(p[0] >> 8) as u8; 3]).collect(),
        D::ImageRgb16(b) => b.as_raw().iter().map(|&v| (v >> 8) as u8).collect(),
        D::ImageRgba16(b) => {
            b.as_raw().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]].map(|v| (v >> 8) as u8)).collect()
        }
        // Float images come from none of the decoders used here; for library callers, the `image` crate's
        // conversion.
        other => other.to_rgb8().into_raw(),
    };
    Ok(match channels {
        3 => rgb,
        // PIL's rgb2l: ITU-R 601-2 luma in 16-bit fixed point, rounded.
        _ => rgb
            .chunks_exact(3)
            .map(|p| ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8)
            .collect(),
    })
}

/// PIL's NEAREST resize of interleaved 8-bit pixels (`Image.resize(size, Image.NEAREST)`): output pixel x
/// takes input pixel floor(scale * (x + 0.5)), the position accumulated in double precision step by step
/// as PIL does (so that the rare ties round the same way); a position past the edge stays 0, as in PIL.
pub fn resize_nearest(src: &[u8], (w, h): (usize, usize), c: usize, (ow, oh): (usize, usize)) -> Vec<u8> {
    if (w, h) == (ow, oh) {
        return src.to_vec();
    }
    let positions = |n_in: usize, n_out: usize| -> Vec<Option<usize>> {
        // (double)(box[2] - box[0]) / xsize, with the box in float.
        let a = (n_in as f32) as f64 / n_out as f64;
        let mut pos = a * 0.5;
        (0..n_out)
            .map(|_| {
                let i = if pos < 0.0 { None } else { Some(pos as usize) };
                pos += a;
                i.filter(|&i| i < n_in)
            })
            .collect()
    };
    let (xs, ys) = (positions(w, ow), positions(h, oh));
    let mut out = vec![0u8; ow * oh * c];
    for (y, sy) in ys.iter().enumerate() {
        let Some(sy) = *sy else { continue };
        for (x, sx) in xs.iter().enumerate() {
            if let Some(sx) = *sx {
                let (o, i) = ((y * ow + x) * c, (sy * w + sx) * c);
                out[o..o + c].copy_from_slice(&src[i..i + c]);
            }
        }
    }
    out
}

/// PIL's fixed-point precision for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's `precompute_coeffs` for the bilinear (triangle) filter, normalized to fixed point as
/// `normalize_coeffs_8bpc` does: for each output index in `range` (of `n_out`), the first input index and the
/// weights.
fn bilinear_coeffs(n_in: usize, n_out: usize, range: Range<usize>) -> Vec<(usize, Vec<i32>)> {
    let scale = (n_in as f32) as f64 / n_out as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the triangle's support, 1.0, widened when shrinking
    let inv = 1.0 / filterscale;
    let triangle = |x: f64| {
        let x = x.abs();
        if x < 1.0 {
            1.0 - x
        } else {
            0.0
        }
    };
    range
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) truncates toward zero; negative values are clamped to 0 right after.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(n_in as i64) as usize;
            let mut k: Vec<f64> = (xmin..xmax.max(xmin)).map(|x| triangle((x as f64 - center + 0.5) * inv)).collect();
            let ww: f64 = k.iter().sum();
            if ww != 0.0 {
                k.iter_mut().for_each(|w| *w /= ww);
            }
            let one = (1u32 << PRECISION_BITS) as f64;
            let fixed = k.iter().map(|&w| if w < 0.0 { (-0.5 + w * one) as i32 } else { (0.5 + w * one) as i32 });
            (xmin, fixed.collect())
        })
        .collect()
}

/// PIL's `clip8`: the fixed-point sum back to 0-255.
fn clip8(ss: i32) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One bilinear pass of interleaved 8-bit pixels along the rows (`horizontal`) or the columns, from `n_in`
/// to `n_out` pixels, of which only those in `range` are computed (PIL computes them all; each output pixel
/// depends only on its own coefficients, so a window of them is the same). Where the size does not change
/// PIL skips the pass: the window is copied.
fn bilinear_pass(
    src: &[u8],
    (w, h): (usize, usize),
    c: usize,
    n_out: usize,
    horizontal: bool,
    range: Range<usize>,
) -> Vec<u8> {
    let n = range.len();
    let (ow, oh) = if horizontal { (n, h) } else { (w, n) };
    let n_in = if horizontal { w } else { h };
    let coeffs = if n_in == n_out {
        range.map(|i| (i, vec![1 << PRECISION_BITS])).collect()
    } else {
        bilinear_coeffs(n_in, n_out, range)
    };
    let mut out = vec![0u8; ow * oh * c];
    for y in 0..oh {
        for x in 0..ow {
            let (start, k) = &coeffs[if horizontal { x } else { y }];
            for ch in 0..c {
                let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                for (i, &kv) in k.iter().enumerate() {
                    let (sx, sy) = if horizontal { (start + i, y) } else { (x, start + i) };
                    ss += src[(sy * w + sx) * c + ch] as i32 * kv;
                }
                out[(y * ow + x) * c + ch] = clip8(ss);
            }
        }
    }
    out
}

/// PIL's BILINEAR resize of interleaved 8-bit pixels (`Image.resize(size, Image.BILINEAR)`, no
/// `reducing_gap`): a horizontal pass, then a vertical one (vertical first for an image more than 100 times
/// taller than wide that shrinks in height, as PIL does), each rounded to 8 bits; a pass is skipped where
/// the size does not change. Shrinking widens the filter (antialiasing) as PIL does.
pub fn resize_bilinear(src: &[u8], size: (usize, usize), c: usize, (ow, oh): (usize, usize)) -> Vec<u8> {
    resize_bilinear_window(src, size, c, (ow, oh), (0..ow, 0..oh))
}

/// The pixels in the window `(columns, rows)` of [`resize_bilinear`]'s result, computed without the rest.
fn resize_bilinear_window(
    src: &[u8],
    (w, h): (usize, usize),
    c: usize,
    (ow, oh): (usize, usize),
    (xs, ys): (Range<usize>, Range<usize>),
) -> Vec<u8> {
    let (nx, ny) = (xs.len(), ys.len());
    if h > w.saturating_mul(100) && oh < h {
        let v = bilinear_pass(src, (w, h), c, oh, false, ys);
        bilinear_pass(&v, (w, ny), c, ow, true, xs)
    } else {
        let t = bilinear_pass(src, (w, h), c, ow, true, xs);
        bilinear_pass(&t, (nx, h), c, oh, false, ys)
    }
}

/// torchvision's `Resize(shorter)` then `CenterCrop((oh, ow))` on a PIL image: the shorter side becomes
/// `shorter` and the other `int(shorter * long / short)` (PIL BILINEAR), then the crop starts at
/// `round((size - crop) / 2)` with Python's round (half to even). `shorter` must be at least `oh` and `ow`.
/// Only the crop is computed, so that a very elongated image does not make a huge intermediate one.
fn center_crop(src: &[u8], (w, h): (usize, usize), c: usize, shorter: usize, (ow, oh): (usize, usize)) -> Vec<u8> {
    let (rw, rh) = if w <= h {
        (shorter, (shorter as f64 * h as f64 / w as f64) as usize)
    } else {
        ((shorter as f64 * w as f64 / h as f64) as usize, shorter)
    };
    let start = |size: usize, crop: usize| {
        let d = size - crop;
        // d / 2 rounded half to even.
        if d.is_multiple_of(2) || (d / 2).is_multiple_of(2) {
            d / 2
        } else {
            d / 2 + 1
        }
    };
    let (top, left) = (start(rh, oh), start(rw, ow));
    resize_bilinear_window(src, (w, h), c, (rw, rh), (left..left + ow, top..top + oh))
}

impl Preprocess {
    /// Applies the preprocessing to one 8-bit value of input channel `ch` (after the channel swap).
    fn apply(&self, v: u8, ch: usize) -> f32 {
        let pick = |list: &[f32]| list.get(ch).or(list.first()).copied();
        let mut x = if self.scale == 1.0 { v as f32 } else { (v as f64 * self.scale) as f32 };
        if let Some(m) = pick(&self.mean) {
            x -= m;
        }
        if let Some(s) = pick(&self.std) {
            x /= s;
        }
        x
    }
}

impl ImageIo {
    /// Brings `img` to the `[H, W, C]` input `shape` (C 1 or 3) as the spec says, into `out`.
    pub fn preprocess_into(
        &self,
        img: &DynamicImage,
        shape: &[usize],
        mut out: ArrayViewMut3<f32>,
    ) -> Result<(), Error> {
        let &[h, w, c] = shape else {
            return Err(Error::Image(format!("images feed models whose input is [H, W, C], not {shape:?}")));
        };
        if c != 1 && c != 3 {
            return Err(Error::Image(format!(
                "images give 1 (grayscale) or 3 (RGB) channels, but the model's input has {c}"
            )));
        }
        if out.shape() != shape {
            return Err(Error::Option(format!(
                "preprocess_into: an output of shape {:?} for images of shape {shape:?}",
                out.shape()
            )));
        }
        let pixels = pil_pixels(img, c)?;
        let size = (img.width() as usize, img.height() as usize);
        let pixels = match self.resize {
            Resize::Nearest => resize_nearest(&pixels, size, c, (w, h)),
            Resize::Bilinear => resize_bilinear(&pixels, size, c, (w, h)),
            Resize::CenterCrop { shorter } => {
                let s = shorter.unwrap_or_else(|| Resize::default_shorter(h, w));
                if s < h.max(w) {
                    return Err(Error::Image(format!(
                        "`center_crop` resizes the shorter side to {s}, smaller than the {h}x{w} crop"
                    )));
                }
                center_crop(&pixels, size, c, s, (w, h))
            }
        };
        let p = &self.preprocess;
        for ((y, x, ch), o) in out.indexed_iter_mut() {
            let src = if p.bgr { c - 1 - ch } else { ch };
            *o = p.apply(pixels[(y * w + x) * c + src], ch);
        }
        Ok(())
    }

    /// Brings `img` to the `[H, W, C]` input `shape` as the spec says.
    pub fn preprocess(&self, img: &DynamicImage, shape: &[usize]) -> Result<Array3<f32>, Error> {
        let &[h, w, c] = shape else {
            return Err(Error::Image(format!("images feed models whose input is [H, W, C], not {shape:?}")));
        };
        let mut out = Array3::zeros((h, w, c));
        self.preprocess_into(img, shape, out.view_mut())?;
        Ok(out)
    }
}

/// The `k` highest outputs of one item, highest first (ties in class order; NaN ranks last).
pub fn top_k(row: ArrayView1<f32>, k: usize, labels: Option<&[String]>) -> Vec<Prediction> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    let key = |i: usize| if row[i].is_nan() { f32::NEG_INFINITY } else { row[i] };
    idx.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(row[a].is_nan().cmp(&row[b].is_nan())).then(a.cmp(&b)));
    idx.into_iter()
        .take(k)
        .map(|i| Prediction { class: i, label: labels.and_then(|l| l.get(i).cloned()), score: row[i] })
        .collect()
}

impl Model {
    /// `img` as this model's input `[H, W, C]`, made as the spec's `resize` and `preprocess` say.
    pub fn preprocess(&self, img: &DynamicImage) -> Result<Array3<f32>, Error> {
        self.spec.io.preprocess(img, self.input_shape())
    }
}

impl Compiled {
    /// `img` as this model's input `[H, W, C]`, made as the spec's `resize` and `preprocess` say.
    pub fn preprocess(&self, img: &DynamicImage) -> Result<Array3<f32>, Error> {
        self.io.preprocess(img, self.program.input_shape())
    }

    /// The spec's class names, if it has `labels`.
    pub fn labels(&self) -> Option<&[String]> {
        self.io.labels.as_deref()
    }

    /// Preprocesses `images`, runs them as one batch and returns the top `k` classes of each, in order.
    pub fn predict_images(&self, images: &[DynamicImage], k: usize) -> Result<Vec<Vec<Prediction>>, Error> {
        let shape = self.program.input_shape().to_vec();
        if images.is_empty() {
            return Ok(vec![]);
        }
        let mut x = ndarray::Array4::<f32>::zeros((images.len(), shape[0], shape[1], shape[2]));
        for (img, out) in images.iter().zip(x.axis_iter_mut(Axis(0))) {
            self.io.preprocess_into(img, &shape, out)?;
        }
        let y = self.run(x.into_dyn().view())?;
        // A multi-dimensional output ranks its flattened values.
        let per_item: usize = self.program.output_shape().iter().product();
        let y = y
            .into_shape_with_order((images.len(), per_item))
            .map_err(|e| Error::internal("predict", format!("an output batch of unexpected shape: {e}")))?;
        Ok(y.axis_iter(Axis(0)).map(|row| top_k(row, k, self.labels())).collect())
    }
}
