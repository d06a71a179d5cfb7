//! Model weights: loaded from a safetensors file in Keras names and layouts, or initialized as the
//! Keras notebook does (glorot_uniform kernels, zero biases, identity BatchNorm).
//!
//! Tensors are keyed `<node name>.<weight>` (e.g. `res2a_branch2a.kernel`, `bn_conv1.moving_mean`), with
//! the shapes [`Op::weights`](crate::ops::Op::weights) lists. Loading checks every tensor a node needs
//! (present, f32 or convertible, right shape, moving variances neither negative nor NaN) and reports all
//! problems at once; tensors no node uses are warnings. Names from tf.keras 2 exports (`conv1/kernel:0`)
//! are understood too ([`weights_key`]). A hostile file is refused before its data is touched: it must be a
//! regular file of at most [`MAX_WEIGHTS_FILE_BYTES`] with a header of at most [`MAX_HEADER_BYTES`], unique
//! tensor names, and sizes and offsets that agree with the file's length. The result, [`Weights`], maps keys to ndarray tensors and is what the interpreter, the
//! optimizer's folding passes and the back end read.

use crate::diag::{Diagnostic, Diagnostics};
use crate::graph::Graph;
use crate::ops::fmt_shape;
use crate::report::thousands;
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Weight tensors by `<node>.<weight>` key. Tensors are shared (`Arc`), so copying a `Weights` — as the
/// optimizer does to keep the caller's untouched — costs no tensor data.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Weights {
    pub tensors: HashMap<String, Arc<ArrayD<f32>>>,
}

impl Weights {
    pub fn get(&self, node: &str, weight: &str) -> Option<&ArrayD<f32>> {
        self.tensors.get(&format!("{node}.{weight}")).map(|t| &**t)
    }

    pub fn insert(&mut self, key: String, t: ArrayD<f32>) {
        self.tensors.insert(key, Arc::new(t));
    }

    /// A tensor to modify in place (copied first if another `Weights` shares it).
    pub fn get_mut(&mut self, key: &str) -> Option<&mut ArrayD<f32>> {
        self.tensors.get_mut(key).map(Arc::make_mut)
    }

    /// Bytes of f32 data held.
    pub fn bytes(&self) -> usize {
        self.tensors.values().map(|t| t.len() * 4).sum()
    }
}

/// The tensors a graph needs, as (key, shape, node).
pub fn required(graph: &Graph) -> Vec<(String, Vec<usize>, petgraph::stable_graph::NodeIndex)> {
    let mut v = vec![];
    for n in graph.topo() {
        let Some(&i) = graph.inputs(n).first() else { continue };
        let node = graph.node(n);
        for (w, shape) in node.op.weights(&graph.node(i).shape) {
            v.push((format!("{}.{w}", node.name), shape, n));
        }
    }
    v
}

/// Keras's glorot_uniform for every kernel (seeded), zeros for biases and betas, ones for gammas and
/// variances, zeros for means: what a freshly built notebook model holds.
pub fn init_glorot(graph: &Graph, seed: u64) -> Weights {
    let req = required(graph);
    // Each tensor draws from its own stream (seed, position), so the values do not depend on how the
    // work is split; the kernels (~25M values for ResNet-50) are generated on all cores.
    let make = |i: usize, key: &str, shape: &[usize]| -> ArrayD<f32> {
        let wname = key.rsplit('.').next().unwrap_or("");
        match wname {
            "kernel" => {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(i as u64);
                // fan_in/fan_out as Keras computes them: receptive field × channels.
                let rf: usize = shape[..shape.len() - 2].iter().product();
                let (fi, fo) = (rf * shape[shape.len() - 2], rf * shape[shape.len() - 1]);
                let limit = (6.0 / (fi + fo) as f64).sqrt() as f32;
                ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.random_range(-limit..limit))
            }
            "gamma" | "moving_variance" => ArrayD::ones(IxDyn(shape)),
            _ => ArrayD::zeros(IxDyn(shape)),
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let made: Vec<Vec<(usize, ArrayD<f32>)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = vec![];
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((key, shape, _)) = req.get(i) else { break };
                        out.push((i, make(i, key, shape)));
                    }
                    out
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("initialization thread")).collect()
    });
    let mut tensors = HashMap::new();
    for (i, t) in made.into_iter().flatten() {
        tensors.insert(req[i].0.clone(), Arc::new(t));
    }
    Weights { tensors }
}

/// Weights files larger than this are refused before anything is read (ResNet-152's are 240 MB).
pub const MAX_WEIGHTS_FILE_BYTES: u64 = 16 << 30;
/// The JSON header of a safetensors file (names, dtypes, shapes, offsets) may be at most this long
/// (ResNet-50's is 30 KB).
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

/// The weights key a tensor name in a file stands for. Keras 3 names as the README's export writes them
/// (`conv1.kernel`) are keys already; tf.keras 2 names end in the variable suffix `:0` and put a `/` before
/// the weight (`conv1/kernel:0`, also Keras 3's `weight.path` form `conv1/kernel`): `conv1.kernel`.
pub fn weights_key(name: &str) -> String {
    let name = name.strip_suffix(":0").unwrap_or(name);
    match name.rsplit_once('/') {
        Some((layer, weight)) if !weight.contains('.') => format!("{layer}.{weight}"),
        _ => name.to_string(),
    }
}

/// A safetensors file whose header has been read and checked against the file's size. Tensor data is read
/// only when asked for, with positioned reads straight into the tensors' buffers: nothing is mapped, so a
/// file truncated while it is being loaded gives an error instead of killing the process with SIGBUS.
struct SafetensorsFile {
    file: std::fs::File,
    /// Offset of the data section (after the length field and the header).
    data_start: u64,
    /// The tensors by weights key ([`weights_key`]), each with its name as written in the file.
    tensors: HashMap<String, (String, safetensors::tensor::TensorInfo)>,
}

impl SafetensorsFile {
    /// Opens and checks `path`: a regular file of at most [`MAX_WEIGHTS_FILE_BYTES`], a header of at most
    /// [`MAX_HEADER_BYTES`] whose tensors have unique names, sizes that fit their shapes and dtypes, and
    /// offsets that tile exactly the rest of the file. Returns the reason it is refused.
    fn open(path: &Path) -> Result<SafetensorsFile, String> {
        use std::io::Read;
        let (mut file, len) = crate::files::open_regular(path, MAX_WEIGHTS_FILE_BYTES, "a weights file")?;
        let not_st = "not a safetensors file";
        if len < 8 {
            return Err(format!("{not_st}: it is {len} bytes long, shorter than the 8-byte header length"));
        }
        let mut n = [0u8; 8];
        file.read_exact(&mut n).map_err(|e| format!("cannot read the file: {e}"))?;
        let n = u64::from_le_bytes(n);
        if n > MAX_HEADER_BYTES {
            return Err(format!(
                "{not_st}: its first 8 bytes declare a header of {} bytes; at most {} are read",
                thousands(n),
                crate::files::human_bytes(MAX_HEADER_BYTES)
            ));
        }
        if n > len - 8 {
            return Err(format!(
                "{not_st}: its first 8 bytes declare a header of {} bytes, but only {} follow",
                thousands(n),
                thousands(len - 8)
            ));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header).map_err(|e| format!("cannot read the header: {e}"))?;
        let bad_header = |e: serde_json::Error| format!("{not_st}: its header is not valid: {e}");
        if let Some(name) = first_duplicate_key(&header).map_err(bad_header)? {
            return Err(format!("the header names tensor `{name}` twice; which one is meant is ambiguous"));
        }
        let meta: safetensors::tensor::Metadata = serde_json::from_slice(&header).map_err(bad_header)?;
        let data_len = meta.data_len() as u64;
        if data_len != len - 8 - n {
            return Err(format!(
                "the header describes {} bytes of tensor data, but the file holds {} after the header \
                 (was it truncated or appended to?)",
                thousands(data_len),
                thousands(len - 8 - n)
            ));
        }
        let mut named: Vec<(String, safetensors::tensor::TensorInfo)> =
            meta.tensors().into_iter().map(|(name, info)| (name, info.clone())).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tensors = HashMap::with_capacity(named.len());
        for (name, info) in named {
            let key = weights_key(&name);
            if let Some((other, _)) = tensors.insert(key.clone(), (name.clone(), info)) {
                return Err(format!("tensors `{other}` and `{name}` both stand for the weight `{key}`"));
            }
        }
        Ok(SafetensorsFile { file, data_start: 8 + n, tensors })
    }

    /// Reads the data of `info` into `buf` (exactly its size).
    fn read(&self, info: &safetensors::tensor::TensorInfo, buf: &mut [u8]) -> std::io::Result<()> {
        read_exact_at(&self.file, buf, self.data_start + info.data_offsets.0 as u64)
    }
}

/// The first key a JSON object holds twice (`serde_json`, like the safetensors crate, keeps the last one
/// silently), reading the whole object.
fn first_duplicate_key(json: &[u8]) -> Result<Option<String>, serde_json::Error> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
            let (mut seen, mut twice) = (std::collections::HashSet::new(), None);
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if twice.is_none() && !seen.insert(key.clone()) {
                    twice = Some(key);
                }
            }
            Ok(twice)
        }
    }
    serde_json::Deserializer::from_slice(json).deserialize_map(Keys)
}

#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &std::fs::File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(k) => {
                buf = &mut buf[k..];
                offset += k as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads one tensor (f32 or f64 in the file) as f32 and checks what its values must satisfy.
fn read_tensor(
    file: &SafetensorsFile,
    key: &str,
    shape: &[usize],
    info: &safetensors::tensor::TensorInfo,
) -> Result<ArrayD<f32>, String> {
    let len: usize = shape.iter().product();
    let eof = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "the file ended before its data did: was it truncated while being loaded?".to_string()
        } else {
            format!("cannot read its data: {e}")
        }
    };
    let data = if info.dtype == safetensors::Dtype::F32 {
        let mut data = vec![0f32; len];
        // SAFETY: any bytes are a valid f32; the slice covers exactly the vector's elements.
        let bytes = unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr() as *mut u8, len * 4) };
        file.read(info, bytes).map_err(eof)?;
        for v in &mut data {
            *v = f32::from_bits(u32::from_le(v.to_bits()));
        }
        data
    } else {
        let mut bytes = vec![0u8; len * 8];
        file.read(info, &mut bytes).map_err(eof)?;
        bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect()
    };
    if key.ends_with(".moving_variance") {
        if let Some((i, v)) = data.iter().enumerate().find(|(_, v)| !(**v >= 0.0)) {
            let what = if v.is_nan() { "NaN" } else { "negative" };
            return Err(format!(
                "has a {what} variance ({v}) at index {i}: a BatchNorm moving variance is never negative or NaN \
                 (is this tensor a variance?)"
            ));
        }
    }
    ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|e| e.to_string())
}

/// Loads a safetensors file and checks it against the graph. Returns the weights, or every problem.
/// Warnings (unused tensors) come back in the diagnostics either way. Tensor names may be Keras 3's or
/// tf.keras 2's ([`weights_key`]).
pub fn load_safetensors(path: &Path, graph: &Graph) -> (Option<Weights>, Diagnostics) {
    let mut diags = Diagnostics::default();
    let p = path.display().to_string();
    let file = match SafetensorsFile::open(path) {
        Ok(f) => f,
        Err(reason) => {
            diags.push(Diagnostic::error(None, format!("{p}: {reason}")));
            return (None, diags);
        }
    };
    let mut used = std::collections::HashSet::new();
    let mut jobs = Vec::new();
    for (key, shape, n) in required(graph) {
        let node = graph.node(n);
        let at = node
            .loc
            .as_ref()
            .map(|l| format!(" (node `{}` at {l})", node.name))
            .unwrap_or_else(|| format!(" (node `{}`)", node.name));
        let Some((name, info)) = file.tensors.get(&key) else {
            diags.push(Diagnostic::error(
                None,
                format!("{p}: missing tensor `{key}`, expected shape {}{at}", fmt_shape(&shape)),
            ));
            continue;
        };
        used.insert(key.clone());
        let called = if *name == key { format!("`{key}`") } else { format!("`{name}` (`{key}`)") };
        if info.shape != shape {
            diags.push(Diagnostic::error(
                None,
                format!(
                    "{p}: tensor {called} has shape {}, expected {}{at}",
                    fmt_shape(&info.shape),
                    fmt_shape(&shape)
                ),
            ));
            continue;
        }
        match info.dtype {
            safetensors::Dtype::F32 | safetensors::Dtype::F64 => jobs.push((key, called, shape, info)),
            other => diags.push(Diagnostic::error(
                None,
                format!("{p}: tensor {called} has dtype {other:?}, expected F32 (or F64){at}"),
            )),
        }
    }
    // Reading and converting ~100 MB is the bulk of loading: split it over the cores, largest tensors
    // first, each thread taking the next when it is free.
    jobs.sort_by_key(|(_, _, shape, _)| std::cmp::Reverse(shape.iter().product::<usize>()));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    type Converted = (usize, Result<ArrayD<f32>, String>);
    let converted: Vec<Vec<Converted>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let (jobs, next, file) = (&jobs, &next, &file);
                sc.spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((key, _, shape, info)) = jobs.get(j) else { break };
                        out.push((j, read_tensor(file, key, shape, info)));
                    }
                    out
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("weight conversion thread")).collect()
    });
    let mut results: Vec<Converted> = converted.into_iter().flatten().collect();
    results.sort_by_key(|(j, _)| *j);
    let mut tensors = HashMap::new();
    for (j, r) in results {
        let (key, called, _, _) = &jobs[j];
        match r {
            Ok(a) => {
                tensors.insert(key.clone(), Arc::new(a));
            }
            Err(e) => diags.push(Diagnostic::error(None, format!("{p}: tensor {called} {e}"))),
        }
    }
    let mut unused: Vec<&str> =
        file.tensors.iter().filter(|(key, _)| !used.contains(*key)).map(|(_, (name, _))| name.as_str()).collect();
    unused.sort();
    if !unused.is_empty() {
        let shown: Vec<String> = unused.iter().take(10).map(|s| format!("`{s}`")).collect();
        diags.push(Diagnostic::warning(
            None,
            format!(
                "{p}: {} tensor(s) are not used by any node: {}{}",
                unused.len(),
                shown.join(", "),
                if unused.len() > 10 { ", ..." } else { "" }
            ),
        ));
    }
    if diags.has_errors() {
        (None, diags)
    } else {
        (Some(Weights { tensors }), diags)
    }
}

/// Writes weights as safetensors (f32, keys as given), e.g. to save an initialized model.
pub fn save_safetensors(w: &Weights, path: &Path) -> Result<(), String> {
    let mut keys: Vec<&String> = w.tensors.keys().collect();
    keys.sort();
    let bufs: Vec<(String, Vec<u8>, Vec<usize>)> = keys
        .iter()
        .map(|k| {
            let t = &w.tensors[*k];
            let bytes: Vec<u8> = t.iter().flat_map(|x| x.to_le_bytes()).collect();
            ((*k).clone(), bytes, t.shape().to_vec())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bufs
        .iter()
        .map(|(k, b, s)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).map(|v| (k.clone(), v))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let bytes = safetensors::serialize(views, None).map_err(|e| e.to_string())?;
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf_keras_names_become_keys() {
        assert_eq!(weights_key("conv1.kernel"), "conv1.kernel");
        assert_eq!(weights_key("conv1/kernel:0"), "conv1.kernel");
        assert_eq!(weights_key("conv1/kernel"), "conv1.kernel");
        assert_eq!(weights_key("conv1.kernel:0"), "conv1.kernel");
        assert_eq!(weights_key("bn_conv1/moving_variance:0"), "bn_conv1.moving_variance");
        // A `/` inside a node name stays when the weight follows a `.`.
        assert_eq!(weights_key("stage/2.kernel"), "stage/2.kernel");
        assert_eq!(weights_key("kernel:1"), "kernel:1");
    }

    #[test]
    fn a_file_truncated_while_it_is_loaded_is_an_error_not_sigbus() {
        let mut w = Weights::default();
        w.insert("a.kernel".into(), ArrayD::from_elem(IxDyn(&[64, 64]), 0.5));
        let p = std::env::temp_dir().join(format!("resnetc-truncated-{}.safetensors", std::process::id()));
        save_safetensors(&w, &p).unwrap();
        let file = SafetensorsFile::open(&p).unwrap();
        // Another process cuts the file between the header check and the data reads.
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(file.data_start + 100).unwrap();
        let (_, info) = &file.tensors["a.kernel"];
        let e = read_tensor(&file, "a.kernel", &info.shape, info).unwrap_err();
        assert_eq!(e, "the file ended before its data did: was it truncated while being loaded?");
        let _ = std::fs::remove_file(&p);
    }
}
