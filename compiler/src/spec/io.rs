//! The spec's image fields: how an image becomes the model's input (`preprocess`, `resize`) and what the
//! model's outputs are called (`labels`).
//!
//! In: the spec's top-level YAML mapping. Out: an [`ImageIo`] (defaults when a field is absent) and located
//! diagnostics for every field that is wrong. A `labels` file is read here, relative to the spec's directory,
//! and its own lines are the locations of errors in it. What needs the graph — the label count against the
//! output size, per-channel lists against the input's channels — is checked by [`ImageIo::check`] once the
//! graph exists. Applying these fields to an image is [`crate::images`]'s job.

use crate::diag::{did_you_mean, Diagnostic, Diagnostics, Loc};
use crate::ops::fmt_shape;
use crate::yaml::{YNode, YValue};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The largest labels file read (ImageNet's 1000 names take 10 KB).
pub const MAX_LABELS_FILE_BYTES: u64 = 4 << 20;
/// The most labels a spec may declare, inline or in a file.
pub const MAX_LABELS: usize = 1_000_000;

/// How pixel values (0-255, channels in RGB order) become the model's input, in this order:
/// reverse the channels if `bgr`, multiply by `scale`, subtract `mean`, divide by `std`. The products are
/// rounded to f32 once; the subtraction and division are f32 operations, as numpy does them in Keras's
/// `preprocess_input`, so the result is bit-identical to Keras's for the named modes.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// Reverse the channel order (RGB -> BGR) first.
    pub bgr: bool,
    pub scale: f64,
    /// Per channel, in the order after `bgr`; empty: nothing subtracted.
    pub mean: Vec<f32>,
    /// Per channel, in the order after `bgr`; empty: nothing divided.
    pub std: Vec<f32>,
}

impl Default for Preprocess {
    /// No preprocessing: the raw 0-255 values, as `img_to_array` gives them.
    fn default() -> Self {
        Preprocess { bgr: false, scale: 1.0, mean: vec![], std: vec![] }
    }
}

impl Preprocess {
    /// keras.applications' `preprocess_input` modes: `caffe` (ResNet50/101/152, VGG: BGR, ImageNet means
    /// subtracted), `torch` (x/255, ImageNet mean and std), `tf` (x/127.5 - 1).
    pub fn named(name: &str) -> Option<Preprocess> {
        Some(match name {
            "caffe" => Preprocess { bgr: true, scale: 1.0, mean: vec![103.939, 116.779, 123.68], std: vec![] },
            "torch" => Preprocess {
                bgr: false,
                scale: 1.0 / 255.0,
                mean: vec![0.485, 0.456, 0.406],
                std: vec![0.229, 0.224, 0.225],
            },
            "tf" => Preprocess { bgr: false, scale: 1.0 / 127.5, mean: vec![1.0], std: vec![] },
            _ => return None,
        })
    }
}

/// How an image of another size is brought to the input's height and width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Resize {
    /// PIL's NEAREST to the input size (Keras `load_img(target_size=...)`'s default).
    #[default]
    Nearest,
    /// PIL's BILINEAR to the input size (antialiased when shrinking, as PIL does).
    Bilinear,
    /// torchvision's `Resize(shorter)` (PIL BILINEAR, aspect ratio kept) then `CenterCrop` to the input size;
    /// `None`: the shorter side is [`Resize::default_shorter`].
    CenterCrop { shorter: Option<usize> },
}

impl Resize {
    /// The shorter side `center_crop` resizes to by default: the input size / 0.875 (224 -> 256, as
    /// torchvision's and timm's ImageNet evaluation do), rounded down.
    pub fn default_shorter(h: usize, w: usize) -> usize {
        h.max(w) * 8 / 7
    }
}

/// Where each image field was written, for the checks made once the graph exists.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IoLocs {
    pub preprocess: Option<Loc>,
    pub mean: Option<Loc>,
    pub std: Option<Loc>,
    pub resize: Option<Loc>,
    pub labels: Option<Loc>,
}

/// The spec's image fields, defaults filled in.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageIo {
    pub preprocess: Preprocess,
    pub resize: Resize,
    /// One name per output class.
    pub labels: Option<Vec<String>>,
    pub locs: IoLocs,
}

impl ImageIo {
    /// Checks the fields against the graph's per-item input and output shapes.
    pub fn check(&self, input: &[usize], output: &[usize], diags: &mut Diagnostics) {
        let channels = input.last().copied().unwrap_or(0);
        let image_fields = self.locs.preprocess.as_ref().or(self.locs.resize.as_ref());
        if let Some(loc) = image_fields {
            if input.len() != 3 || !(channels == 1 || channels == 3) {
                diags.error(
                    Some(loc),
                    format!(
                        "images give 1 (grayscale) or 3 (RGB) channels, but the model's input is {}",
                        fmt_shape(input)
                    ),
                );
                return;
            }
        }
        for (what, list, loc) in
            [("mean", &self.preprocess.mean, &self.locs.mean), ("std", &self.preprocess.std, &self.locs.std)]
        {
            // One value applies to every channel.
            if list.len() > 1 && list.len() != channels {
                // A named mode (`caffe`, `torch`) has no `mean`/`std` of its own: point at `preprocess`.
                diags.error(
                    loc.as_ref().or(self.locs.preprocess.as_ref()),
                    format!(
                        "`{what}` has {} values but the input has {channels} channel(s) (input shape {}): give one \
                         value per channel, or one for all",
                        list.len(),
                        fmt_shape(input)
                    ),
                );
            }
        }
        if let (Resize::CenterCrop { shorter: Some(shorter) }, [h, w, _]) = (self.resize, input) {
            if shorter < *h.max(w) {
                diags.error(
                    self.locs.resize.as_ref(),
                    format!(
                        "`center_crop` resizes the shorter side to {shorter}, which is smaller than the input's \
                         {h}x{w}: the crop would not fit (give at least {})",
                        h.max(w)
                    ),
                );
            }
        }
        if let Some(labels) = &self.labels {
            match output {
                [n] if *n == labels.len() => {}
                [n] => diags.error(
                    self.locs.labels.as_ref(),
                    format!("`labels` names {} class(es), but the model has {n} outputs", labels.len()),
                ),
                _ => diags.error(
                    self.locs.labels.as_ref(),
                    format!(
                        "`labels` names the classes of a model with one output vector, but this model's output has \
                         shape {}",
                        fmt_shape(output)
                    ),
                ),
            }
        }
    }
}

const PREPROCESS_MODES: &[&str] = &["caffe", "torch", "tf"];
const PREPROCESS_KEYS: &[&str] = &["scale", "mean", "std", "channels"];
const RESIZE_MODES: &[&str] = &["nearest", "bilinear", "center_crop"];

/// Parses `preprocess`, `resize` and `labels` from the spec's top-level mapping `doc`. `file` is the spec's
/// path as given (a `labels` file is relative to its directory).
pub fn parse(doc: &YNode, file: &Arc<str>, diags: &mut Diagnostics) -> ImageIo {
    let mut io = ImageIo::default();
    if let Some(n) = doc.get("preprocess") {
        io.locs.preprocess = Some(n.loc.clone());
        if let Some(p) = preprocess(n, &mut io.locs, diags) {
            io.preprocess = p;
        }
    }
    if let Some(n) = doc.get("resize") {
        io.locs.resize = Some(n.loc.clone());
        if let Some(r) = resize(n, diags) {
            io.resize = r;
        }
    }
    if let Some(n) = doc.get("labels") {
        io.locs.labels = Some(n.loc.clone());
        io.labels = labels(n, file, diags);
    }
    io
}

fn choice_error(n: &YNode, what: &str, options: &[&str], diags: &mut Diagnostics) {
    let found = match n.as_str() {
        Some(s) => {
            let h = did_you_mean(s, options.iter().copied()).map(|g| format!(" (did you mean `{g}`?)"));
            format!("`{s}`{}", h.unwrap_or_default())
        }
        None => n.value.describe(),
    };
    diags.error(Some(&n.loc), format!("{what} must be one of {}, found {found}", options.join(", ")));
}

fn number(n: &YNode, what: &str, diags: &mut Diagnostics) -> Option<f64> {
    let x = match n.value {
        YValue::Int(i) => i as f64,
        YValue::Float(x) => x,
        ref v => {
            diags.error(Some(&n.loc), format!("{what} must be a number, found {}", v.describe()));
            return None;
        }
    };
    // f32 is what the model computes in: a value it cannot hold is a mistake.
    if !x.is_finite() || x.abs() > f32::MAX as f64 {
        diags.error(Some(&n.loc), format!("{what} must be a number within float32's range (±3.4e38), found {x:e}"));
        return None;
    }
    Some(x)
}

/// A number or a list of numbers (one per channel).
fn per_channel(n: &YNode, what: &str, nonzero: bool, diags: &mut Diagnostics) -> Option<Vec<f32>> {
    let items: Vec<&YNode> = match &n.value {
        YValue::Seq(s) if !s.is_empty() => s.iter().collect(),
        YValue::Int(_) | YValue::Float(_) => vec![n],
        v => {
            diags.error(
                Some(&n.loc),
                format!("`{what}` must be a number or a list of numbers (one per channel), found {}", v.describe()),
            );
            return None;
        }
    };
    let mut out = vec![];
    let mut ok = true;
    for it in items {
        match number(it, &format!("a `{what}` value"), diags) {
            Some(0.0) if nonzero => {
                diags.error(Some(&it.loc), format!("a `{what}` value must not be zero (the input is divided by it)"));
                ok = false;
            }
            Some(x) => out.push(x as f32),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn preprocess(n: &YNode, locs: &mut IoLocs, diags: &mut Diagnostics) -> Option<Preprocess> {
    if let Some(s) = n.as_str() {
        return match Preprocess::named(s) {
            Some(p) => Some(p),
            None => {
                choice_error(n, "`preprocess`", PREPROCESS_MODES, diags);
                None
            }
        };
    }
    let Some(m) = n.as_map() else {
        diags.error(
            Some(&n.loc),
            format!(
                "`preprocess` must be one of {} or a mapping with {}, found {}",
                PREPROCESS_MODES.join(", "),
                PREPROCESS_KEYS.join(", "),
                n.value.describe()
            ),
        );
        return None;
    };
    let errors = diags.errors().count();
    for (k, _) in m {
        let key = k.as_str().unwrap_or("");
        if !PREPROCESS_KEYS.contains(&key) {
            let h = did_you_mean(key, PREPROCESS_KEYS.iter().copied()).map(|g| format!(" (did you mean `{g}`?)"));
            diags.error(
                Some(&k.loc),
                format!(
                    "unknown field `{}` in `preprocess`{}; expected one of: {}",
                    k.as_str().map(str::to_string).unwrap_or_else(|| k.value.to_string()),
                    h.unwrap_or_default(),
                    PREPROCESS_KEYS.join(", ")
                ),
            );
        }
    }
    let mut p = Preprocess::default();
    if let Some(s) = n.get("scale") {
        match number(s, "`scale`", diags) {
            Some(x) if x > 0.0 => p.scale = x,
            Some(x) => diags.error(Some(&s.loc), format!("`scale` must be a positive number, found {x}")),
            None => {}
        }
    }
    if let Some(x) = n.get("mean") {
        locs.mean = Some(x.loc.clone());
        p.mean = per_channel(x, "mean", false, diags).unwrap_or_default();
    }
    if let Some(x) = n.get("std") {
        locs.std = Some(x.loc.clone());
        p.std = per_channel(x, "std", true, diags).unwrap_or_default();
    }
    if let Some(c) = n.get("channels") {
        match c.as_str() {
            Some("rgb") => p.bgr = false,
            Some("bgr") => p.bgr = true,
            _ => choice_error(c, "`channels`", &["rgb", "bgr"], diags),
        }
    }
    (diags.errors().count() == errors).then_some(p)
}

fn resize(n: &YNode, diags: &mut Diagnostics) -> Option<Resize> {
    match &n.value {
        YValue::Str(s) => match s.as_str() {
            "nearest" => Some(Resize::Nearest),
            "bilinear" => Some(Resize::Bilinear),
            "center_crop" => Some(Resize::CenterCrop { shorter: None }),
            _ => {
                choice_error(n, "`resize`", RESIZE_MODES, diags);
                None
            }
        },
        YValue::Map(m) if m.len() == 1 && m[0].0.as_str() == Some("center_crop") => {
            let v = &m[0].1;
            match v.value {
                YValue::Int(i) if i >= 1 && i <= crate::ops::MAX_DIM as i64 => {
                    Some(Resize::CenterCrop { shorter: Some(i as usize) })
                }
                _ => {
                    diags.error(
                        Some(&v.loc),
                        format!(
                            "`center_crop` is the size the shorter side is resized to before the crop, a positive \
                             integer up to {}; found {}",
                            crate::ops::MAX_DIM,
                            v.value.describe()
                        ),
                    );
                    None
                }
            }
        }
        v => {
            diags.error(
                Some(&n.loc),
                format!(
                    "`resize` must be one of {}, or {{center_crop: SIZE}} (the shorter side before the crop); found {}",
                    RESIZE_MODES.join(", "),
                    v.describe()
                ),
            );
            None
        }
    }
}

/// A label must be printable on one line and in CSV/JSON: no control characters, not empty.
fn bad_label(s: &str) -> Option<&'static str> {
    if s.trim().is_empty() {
        Some("is empty")
    } else if s.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    }
}

fn labels(n: &YNode, file: &Arc<str>, diags: &mut Diagnostics) -> Option<Vec<String>> {
    match &n.value {
        YValue::Seq(items) if !items.is_empty() => {
            if items.len() > MAX_LABELS {
                diags.error(
                    Some(&n.loc),
                    format!("`labels` has {} names, more than the limit of {MAX_LABELS}", items.len()),
                );
                return None;
            }
            let mut out = Vec::with_capacity(items.len());
            let mut ok = true;
            for it in items {
                let s = match &it.value {
                    YValue::Str(s) => s.clone(),
                    YValue::Int(i) => i.to_string(),
                    v => {
                        diags.error(Some(&it.loc), format!("a label must be a string, found {}", v.describe()));
                        ok = false;
                        continue;
                    }
                };
                if let Some(why) = bad_label(&s) {
                    diags.error(Some(&it.loc), format!("this label {why}"));
                    ok = false;
                }
                out.push(s);
            }
            ok.then_some(out)
        }
        YValue::Str(p) if !p.is_empty() => labels_file(p, n, file, diags),
        v => {
            diags.error(
                Some(&n.loc),
                format!(
                    "`labels` must be a list of class names or the path of a text file with one name per line, \
                     found {}",
                    v.describe()
                ),
            );
            None
        }
    }
}

/// Reads a labels file: UTF-8, one name per line; blank lines only at the end.
fn labels_file(p: &str, n: &YNode, file: &Arc<str>, diags: &mut Diagnostics) -> Option<Vec<String>> {
    let path: PathBuf = match Path::new(&**file).parent() {
        Some(dir) if Path::new(p).is_relative() => dir.join(p),
        _ => PathBuf::from(p),
    };
    let shown = path.display().to_string();
    let fail = |diags: &mut Diagnostics, why: String| {
        diags.error(Some(&n.loc), format!("`labels`: cannot read {shown}: {why}"));
        None
    };
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) => return fail(diags, e.to_string()),
    };
    if !meta.is_file() {
        return fail(diags, "not a regular file".into());
    }
    if meta.len() > MAX_LABELS_FILE_BYTES {
        return fail(diags, format!("{} bytes, more than the limit of {MAX_LABELS_FILE_BYTES}", meta.len()));
    }
    let mut bytes = vec![];
    let read = std::fs::File::open(&path).and_then(|f| f.take(MAX_LABELS_FILE_BYTES + 1).read_to_end(&mut bytes));
    if let Err(e) = read {
        return fail(diags, e.to_string());
    }
    if bytes.len() as u64 > MAX_LABELS_FILE_BYTES {
        return fail(diags, format!("it grew past the limit of {MAX_LABELS_FILE_BYTES} bytes while being read"));
    }
    let name: Arc<str> = shown.as_str().into();
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = good.iter().filter(|&&b| b == b'\n').count() as u32 + 1;
            diags.push(
                Diagnostic::error(Some(Loc::new(&name, line, 1)), "a labels file must be UTF-8 text")
                    .note(format!("labels file named at {}", n.loc)),
            );
            return None;
        }
    };
    let lines: Vec<&str> = text.lines().collect();
    let used = lines.len() - lines.iter().rev().take_while(|l| l.trim().is_empty()).count();
    if used == 0 {
        return fail(diags, "the file has no labels (expected one class name per line)".into());
    }
    if used > MAX_LABELS {
        return fail(diags, format!("{used} labels, more than the limit of {MAX_LABELS}"));
    }
    let mut ok = true;
    for (i, l) in lines[..used].iter().enumerate() {
        if let Some(why) = bad_label(l) {
            diags.push(
                Diagnostic::error(Some(Loc::new(&name, i as u32 + 1, 1)), format!("the label on this line {why}"))
                    .note(format!("labels file named at {}", n.loc)),
            );
            ok = false;
        }
    }
    ok.then(|| lines[..used].iter().map(|l| l.to_string()).collect())
}
