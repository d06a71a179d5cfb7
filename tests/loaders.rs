//! The weights (safetensors) and input (.npy) loaders against hostile files: hand-made cases for each
//! class of damage, and mutation fuzzing (proptest) that must never panic, abort or allocate what a
//! header merely claims.
//!
//! The fuzz tests run `PROPTEST_CASES` mutated files each (default 400; CI's budget). A longer run:
//! `PROPTEST_CASES=200000 cargo test --release --test loaders fuzz -- --nocapture`. A file that ever made
//! a loader panic is kept below as a named regression case.

use ndarray::Array4;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use resnetc_compiler::weights::{load_safetensors, save_safetensors, Weights};
use resnetc_compiler::{npy, Model, Options};
use std::cell::Cell;
use std::path::{Path, PathBuf};

/// A small model with every weight kind: conv (kernel, bias), batch norm, dense.
const TINY: &str = "\
model: tiny
input: [8, 8, 3]
layers:
  - {op: conv, name: c1, filters: 4, kernel: 3, padding: same}
  - {op: batch_norm, name: bn1}
  - {op: relu}
  - {op: global_avg_pool}
  - {op: dense, name: fc, units: 5}
";

fn tiny() -> Model {
    Model::from_str("tiny.yaml", TINY, &Options { seed: 3, ..Default::default() }).unwrap()
}

/// A scratch file path for this test process.
fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("resnetc-loaders-{}-{name}", std::process::id()))
}

/// A safetensors file written by hand: `(name, dtype, shape, data)` in order, names as given (duplicates
/// included), then the data, optionally with a header length that lies.
fn safetensors(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut header = String::from("{");
    let mut offset = 0;
    for (i, (name, dtype, shape, data)) in tensors.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        header += &format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{offset},{}]}}",
            offset + data.len()
        );
        offset += data.len();
    }
    header.push('}');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for (_, _, _, data) in tensors {
        out.extend_from_slice(data);
    }
    out
}

/// The tiny model's tensors as (key, shape, f32 little-endian bytes), sorted by key.
fn tiny_tensors(w: &Weights) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let mut keys: Vec<&String> = w.tensors.keys().collect();
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let t = &w.tensors[k];
            (k.clone(), t.shape().to_vec(), t.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect()
}

/// Loads `bytes` as the tiny model's weights; returns the weights or the error text.
fn load(name: &str, bytes: &[u8]) -> Result<Weights, String> {
    let p = scratch(name);
    std::fs::write(&p, bytes).unwrap();
    let r = load_path(&p);
    let _ = std::fs::remove_file(&p);
    r
}

fn load_path(p: &Path) -> Result<Weights, String> {
    let m = tiny();
    match load_safetensors(p, &m.graph) {
        (Some(w), _) => Ok(w),
        (None, d) => Err(d.to_string()),
    }
}

#[test]
fn keras_3_and_tf_keras_2_names_load_the_same_weights() {
    let w = tiny().weights;
    let tensors = tiny_tensors(&w);
    let as_file = |rename: &dyn Fn(&str) -> String| {
        let named: Vec<(String, &str, Vec<usize>, Vec<u8>)> =
            tensors.iter().map(|(k, s, d)| (rename(k), "F32", s.clone(), d.clone())).collect();
        let refs: Vec<(&str, &str, Vec<usize>, Vec<u8>)> =
            named.iter().map(|(k, t, s, d)| (k.as_str(), *t, s.clone(), d.clone())).collect();
        safetensors(&refs)
    };
    assert_eq!(load("keras3", &as_file(&|k| k.to_string())).unwrap(), w);
    // tf.keras 2: `c1/kernel:0`; Keras 3 paths `c1/kernel`; the README's loop on tf.keras 2: `c1.kernel:0`.
    assert_eq!(load("tf2", &as_file(&|k| format!("{}:0", k.replacen('.', "/", 1)))).unwrap(), w);
    assert_eq!(load("path", &as_file(&|k| k.replacen('.', "/", 1))).unwrap(), w);
    assert_eq!(load("suffix", &as_file(&|k| format!("{k}:0"))).unwrap(), w);
    // The round trip through save_safetensors, and float64 tensors converted.
    let p = scratch("saved");
    save_safetensors(&w, &p).unwrap();
    assert_eq!(load_path(&p).unwrap(), w);
    let _ = std::fs::remove_file(&p);
    let f64s: Vec<(String, Vec<usize>, Vec<u8>)> = w
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.shape().to_vec(), t.iter().flat_map(|v| (*v as f64).to_le_bytes()).collect()))
        .collect();
    let refs: Vec<(&str, &str, Vec<usize>, Vec<u8>)> =
        f64s.iter().map(|(k, s, d)| (k.as_str(), "F64", s.clone(), d.clone())).collect();
    assert_eq!(load("f64", &safetensors(&refs)).unwrap(), w);
}

#[test]
fn duplicate_names_are_errors() {
    let w = tiny().weights;
    let mut t: Vec<(String, Vec<usize>, Vec<u8>)> = tiny_tensors(&w);
    let first = t[0].clone();
    t.push(first);
    let refs: Vec<(&str, &str, Vec<usize>, Vec<u8>)> =
        t.iter().map(|(k, s, d)| (k.as_str(), "F32", s.clone(), d.clone())).collect();
    let e = load("dup", &safetensors(&refs)).unwrap_err();
    assert!(e.contains("the header names tensor `bn1.beta` twice; which one is meant is ambiguous"), "{e}");
    // Two spellings of one weight.
    let mut t = tiny_tensors(&w);
    t.push(("c1/kernel:0".into(), t.iter().find(|x| x.0 == "c1.kernel").unwrap().1.clone(), vec![0; 432]));
    let refs: Vec<(&str, &str, Vec<usize>, Vec<u8>)> =
        t.iter().map(|(k, s, d)| (k.as_str(), "F32", s.clone(), d.clone())).collect();
    let e = load("two-spellings", &safetensors(&refs)).unwrap_err();
    assert!(e.contains("tensors `c1.kernel` and `c1/kernel:0` both stand for the weight `c1.kernel`"), "{e}");
}

#[test]
fn bad_moving_variances_are_errors_naming_the_tensor() {
    let w = tiny().weights;
    for (bad, what) in
        [(-0.5f32, "a negative variance (-0.5) at index 2"), (f32::NAN, "a NaN variance (NaN) at index 2")]
    {
        let mut t = tiny_tensors(&w);
        let var = t.iter_mut().find(|x| x.0 == "bn1.moving_variance").unwrap();
        var.2[8..12].copy_from_slice(&bad.to_le_bytes());
        let refs: Vec<(&str, &str, Vec<usize>, Vec<u8>)> =
            t.iter().map(|(k, s, d)| (k.as_str(), "F32", s.clone(), d.clone())).collect();
        let e = load("var", &safetensors(&refs)).unwrap_err();
        assert!(e.contains(&format!("tensor `bn1.moving_variance` has {what}: a BatchNorm moving variance")), "{e}");
    }
}

#[test]
fn sizes_in_the_header_are_checked_against_the_file() {
    let w = tiny().weights;
    let t = tiny_tensors(&w);
    let refs: Vec<(&str, &str, Vec<usize>, Vec<u8>)> =
        t.iter().map(|(k, s, d)| (k.as_str(), "F32", s.clone(), d.clone())).collect();
    let good = safetensors(&refs);
    // Truncated: the data section is shorter than the header says.
    let e = load("truncated", &good[..good.len() - 7]).unwrap_err();
    assert!(e.contains("bytes of tensor data, but the file holds") && e.contains("truncated or appended"), "{e}");
    // Appended to.
    let mut longer = good.clone();
    longer.extend_from_slice(&[0; 3]);
    assert!(load("appended", &longer).unwrap_err().contains("truncated or appended to?"));
    // A header length beyond the file, beyond the bound, and a file shorter than the length field.
    let mut lie = good.clone();
    lie[..8].copy_from_slice(&(good.len() as u64).to_le_bytes());
    let e = load("header-past-end", &lie).unwrap_err();
    let follow = resnetc_compiler::report::thousands(good.len() as u64 - 8);
    assert!(e.contains(&format!("bytes, but only {follow} follow")), "{e}");
    lie[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = load("header-huge", &lie).unwrap_err();
    assert!(e.contains("declare a header of 18,446,744,073,709,551,615 bytes; at most 16 MiB are read"), "{e}");
    let e = load("tiny-file", b"\x10\0\0").unwrap_err();
    assert!(e.contains("not a safetensors file: it is 3 bytes long"), "{e}");
    // A shape whose size overflows, and one that disagrees with its offsets: no allocation, an error.
    let e = load("overflow", &safetensors(&[("c1.kernel", "F32", vec![1 << 40, 1 << 40, 1 << 40], vec![0; 4])]))
        .unwrap_err();
    assert!(e.contains("its header is not valid"), "{e}");
    let e = load("mismatch", &safetensors(&[("c1.kernel", "F32", vec![1 << 30, 3, 4, 4], vec![0; 16])])).unwrap_err();
    assert!(e.contains("its header is not valid"), "{e}");
    // A header that is not JSON, or not an object.
    let mut junk = 4u64.to_le_bytes().to_vec();
    junk.extend_from_slice(b"[1,2");
    assert!(load("junk", &junk).unwrap_err().contains("its header is not valid"));
}

#[test]
fn weights_paths_that_are_not_regular_files_are_refused() {
    for (p, what) in [("/dev/zero", "a character device"), ("/dev/urandom", "a character device"), ("/", "a directory")]
    {
        let e = load_path(Path::new(p)).unwrap_err();
        assert!(e.contains(&format!("{p}: a weights file must be a regular file, found {what}")), "{e}");
    }
    // Through the library's front door too.
    let opts = Options { weights: Some("/dev/zero".into()), ..Default::default() };
    let e = Model::from_str("tiny.yaml", TINY, &opts).unwrap_err().to_string();
    assert!(e.contains("a weights file must be a regular file"), "{e}");
}

/// Found while writing the .npy loader: a 140-byte header of nested lists kept the header parser
/// (py_literal, a PEG parser that backtracks) busy for hours and took a gigabyte (each level of nesting
/// doubles its time). The header's nesting is now checked before it is parsed.
#[test]
fn regression_npy_header_of_nested_lists_made_the_parser_hang() {
    let dict = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': {}1{}, }}",
        "[".repeat(30),
        "]".repeat(30)
    );
    let mut h = dict.into_bytes();
    h.push(b'\n');
    let mut f = b"\x93NUMPY\x01\x00".to_vec();
    f.extend_from_slice(&(h.len() as u16).to_le_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(&[0; 4]);
    let p = scratch("nested.npy");
    std::fs::write(&p, f).unwrap();
    let e = npy::read_batch(&p).unwrap_err().to_string();
    let _ = std::fs::remove_file(&p);
    assert!(e.ends_with("not a .npy file: the header nests brackets more than 4 levels deep"), "{e}");
}

/// Interesting numbers to splice into headers (lengths, offsets, shapes).
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "3",
    "4",
    "-1",
    "255",
    "65536",
    "2147483648",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "1.5",
    "99999999999999999999999999",
];

/// One change to a file.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    /// Replace the k-th run of ASCII digits with an interesting number.
    SpliceNumber(usize, usize),
    /// Overwrite the 8 bytes at a position with a little-endian u64 (safetensors' header length).
    SetU64(usize, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0..8u8).prop_map(|(p, b)| Mutation::FlipBit(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::SetByte(p, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(p, v)| Mutation::Insert(p, v)),
        (any::<usize>(), 1..64usize).prop_map(|(p, n)| Mutation::Remove(p, n)),
        (any::<usize>(), 0..NUMBERS.len()).prop_map(|(k, n)| Mutation::SpliceNumber(k, n)),
        (0..2usize, prop_oneof![Just(0u64), Just(7), Just(1 << 24), Just(u64::MAX), any::<u64>(), 0..4096u64])
            .prop_map(|(p, v)| Mutation::SetU64(p * 8, v)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len().max(1);
    match *m {
        Mutation::FlipBit(p, b) => {
            if !bytes.is_empty() {
                bytes[p % len] ^= 1 << b;
            }
        }
        Mutation::SetByte(p, b) => {
            if !bytes.is_empty() {
                bytes[p % len] = b;
            }
        }
        Mutation::Truncate(n) => bytes.truncate(n % len),
        Mutation::Insert(p, ref v) => {
            let at = p % (bytes.len() + 1);
            bytes.splice(at..at, v.iter().copied());
        }
        Mutation::Remove(p, n) => {
            let at = p % len;
            let end = (at + n).min(bytes.len());
            if at < end {
                bytes.drain(at..end);
            }
        }
        Mutation::SpliceNumber(k, n) => {
            let mut runs = vec![];
            let mut i = 0;
            while i < bytes.len().min(4096) {
                if bytes[i].is_ascii_digit() {
                    let start = i;
                    while i < bytes.len() && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                    runs.push((start, i));
                } else {
                    i += 1;
                }
            }
            if !runs.is_empty() {
                let (s, e) = runs[k % runs.len()];
                bytes.splice(s..e, NUMBERS[n].bytes());
            }
        }
        Mutation::SetU64(p, v) => {
            if bytes.len() >= p + 8 {
                bytes[p..p + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

fn fuzz_config() -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
    Config { cases, failure_persistence: None, ..Config::default() }
}

/// Mutated copies of a valid weights file: every one loads (with the right shapes and sane variances) or
/// is refused with a message; none panics.
/// The bytes of a file that `write` makes (at a scratch path, removed after).
fn file_bytes(name: &str, write: impl FnOnce(&Path)) -> Vec<u8> {
    let p = scratch(name);
    write(&p);
    let b = std::fs::read(&p).unwrap();
    let _ = std::fs::remove_file(&p);
    b
}

/// Writes mutated copies of `good` (1 to 5 mutations each) to `path` and runs `check` on each, which says
/// whether the loader accepted it (`Ok(true)`) or refused it (`Ok(false)`), or fails the case. Returns
/// (accepted, refused) and asserts that some were refused.
fn fuzz_mutants(good: &[u8], path: &Path, check: impl Fn(&[u8]) -> Result<bool, TestCaseError>) -> (usize, usize) {
    let mut runner = TestRunner::new(fuzz_config());
    let (accepted, refused) = (Cell::new(0usize), Cell::new(0usize));
    runner
        .run(&proptest::collection::vec(mutation(), 1..6), |muts| {
            let mut bytes = good.to_vec();
            for mu in &muts {
                apply(&mut bytes, mu);
            }
            std::fs::write(path, &bytes).unwrap();
            let counter = if check(&bytes)? { &accepted } else { &refused };
            counter.set(counter.get() + 1);
            Ok(())
        })
        .unwrap();
    let _ = std::fs::remove_file(path);
    assert!(refused.get() > 0);
    (accepted.get(), refused.get())
}

#[test]
fn fuzz_the_weights_loader() {
    let m = tiny();
    let good = file_bytes("fuzz-good.safetensors", |p| save_safetensors(&m.weights, p).unwrap());
    let path = scratch("fuzz.safetensors");
    let (loaded, refused) = fuzz_mutants(&good, &path, |_| match load_safetensors(&path, &m.graph) {
        (Some(w), _) => {
            for (key, shape, _) in resnetc_compiler::weights::required(&m.graph) {
                let t = w.tensors.get(&key).expect("every required tensor");
                prop_assert_eq!(t.shape(), shape.as_slice());
                if key.ends_with(".moving_variance") {
                    prop_assert!(t.iter().all(|v| *v >= 0.0), "{key}: {t}");
                }
            }
            Ok(true)
        }
        (None, d) => {
            prop_assert!(d.has_errors());
            prop_assert!(d.to_string().contains(&path.display().to_string()), "{d}");
            Ok(false)
        }
    });
    eprintln!("weights loader: {} mutated files, {loaded} loaded, {refused} refused", loaded + refused);
}

/// Mutated copies of a valid .npy batch: every one reads as at most the file's bytes of float32, or is
/// refused with a message naming the file; none panics.
#[test]
fn fuzz_the_npy_loader() {
    let x = Array4::<f32>::from_shape_fn((2, 4, 4, 3), |(a, b, c, d)| (a + b * 3 + c * 5 + d) as f32 * 0.5);
    let good = file_bytes("fuzz-good.npy", |p| ndarray_npy::write_npy(p, &x).unwrap());
    let path = scratch("fuzz.npy");
    let (read, refused) = fuzz_mutants(&good, &path, |bytes| match npy::read_batch(&path) {
        Ok(a) => {
            prop_assert!(a.len() * 4 <= bytes.len());
            Ok(true)
        }
        Err(e) => {
            prop_assert!(e.to_string().starts_with(&format!("{}: error: ", path.display())), "{e}");
            Ok(false)
        }
    });
    eprintln!(".npy loader: {} mutated files, {read} read, {refused} refused", read + refused);
}
