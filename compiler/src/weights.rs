//! Model weights: loaded from a safetensors file in Keras names and layouts, or initialized as the
//! Keras notebook does (glorot_uniform kernels, zero biases, identity BatchNorm).
//!
//! Tensors are keyed `<node name>.<weight>` (e.g. `res2a_branch2a.kernel`, `bn_conv1.moving_mean`), with
//! the shapes [`Op::weights`](crate::ops::Op::weights) lists. Loading checks every tensor a node needs
//! (present, f32 or convertible, right shape) and reports all problems at once; tensors no node uses are
//! warnings. The result, [`Weights`], maps keys to ndarray tensors and is what the interpreter, the
//! optimizer's folding passes and the back end read.

use crate::diag::{Diagnostic, Diagnostics};
use crate::graph::Graph;
use crate::ops::fmt_shape;
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

/// A file's contents: mapped read-only where possible (ResNet-50's 100 MB of weights are then converted
/// straight from the page cache instead of being read into a buffer first), read otherwise.
enum FileBytes {
    #[cfg(target_os = "linux")]
    Mapped(*const u8, usize),
    Read(Vec<u8>),
}

impl FileBytes {
    fn open(path: &Path) -> std::io::Result<FileBytes> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(path)?;
            let len = f.metadata()?.len() as usize;
            if len > 0 {
                // SAFETY: a private read-only mapping of a file we opened; checked for failure; the mapping
                // outlives the descriptor by design (mmap keeps its own reference to the file).
                let p = unsafe {
                    libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, f.as_raw_fd(), 0)
                };
                if p != libc::MAP_FAILED {
                    return Ok(FileBytes::Mapped(p as *const u8, len));
                }
            }
        }
        std::fs::read(path).map(FileBytes::Read)
    }
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            // SAFETY: mapped in `open` with this length, unmapped only on drop.
            #[cfg(target_os = "linux")]
            FileBytes::Mapped(p, len) => unsafe { std::slice::from_raw_parts(*p, *len) },
            FileBytes::Read(v) => v,
        }
    }
}

impl Drop for FileBytes {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let FileBytes::Mapped(p, len) = *self {
            // SAFETY: mapped in `open` with this length.
            unsafe { libc::munmap(p as *mut libc::c_void, len) };
        }
    }
}

/// Loads a safetensors file and checks it against the graph. Returns the weights, or every problem.
/// Warnings (unused tensors) come back in the diagnostics either way.
pub fn load_safetensors(path: &Path, graph: &Graph) -> (Option<Weights>, Diagnostics) {
    let mut diags = Diagnostics::default();
    let p = path.display().to_string();
    let bytes = match FileBytes::open(path) {
        Ok(b) => b,
        Err(e) => {
            diags.push(Diagnostic::error(None, format!("{p}: cannot read the weights file: {e}")));
            return (None, diags);
        }
    };
    let st = match safetensors::SafeTensors::deserialize(&bytes) {
        Ok(s) => s,
        Err(e) => {
            diags.push(Diagnostic::error(None, format!("{p}: not a valid safetensors file: {e}")));
            return (None, diags);
        }
    };
    let mut tensors = HashMap::new();
    let mut used = std::collections::HashSet::new();
    let mut jobs = Vec::new();
    for (key, shape, n) in required(graph) {
        let node = graph.node(n);
        let at = node
            .loc
            .as_ref()
            .map(|l| format!(" (node `{}` at {l})", node.name))
            .unwrap_or_else(|| format!(" (node `{}`)", node.name));
        let t = match st.tensor(&key) {
            Ok(t) => t,
            Err(_) => {
                diags.push(Diagnostic::error(
                    None,
                    format!("{p}: missing tensor `{key}`, expected shape {}{at}", fmt_shape(&shape)),
                ));
                continue;
            }
        };
        used.insert(key.clone());
        if t.shape() != shape.as_slice() {
            diags.push(Diagnostic::error(
                None,
                format!("{p}: tensor `{key}` has shape {}, expected {}{at}", fmt_shape(t.shape()), fmt_shape(&shape)),
            ));
            continue;
        }
        match t.dtype() {
            safetensors::Dtype::F32 | safetensors::Dtype::F64 => jobs.push((key, shape, t)),
            other => diags.push(Diagnostic::error(
                None,
                format!("{p}: tensor `{key}` has dtype {other:?}, expected F32 (or F64){at}"),
            )),
        }
    }
    // Converting ~100 MB of little-endian bytes is the bulk of loading: split it over the cores, largest
    // tensors first, each thread taking the next when it is free.
    jobs.sort_by_key(|(_, _, t)| std::cmp::Reverse(t.data().len()));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    type Converted = (usize, Result<ArrayD<f32>, String>);
    let converted: Vec<Vec<Converted>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let (jobs, next) = (&jobs, &next);
                sc.spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((_, shape, t)) = jobs.get(j) else { break };
                        let data: Vec<f32> = if t.dtype() == safetensors::Dtype::F32 {
                            t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
                        } else {
                            t.data()
                                .chunks_exact(8)
                                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                                .collect()
                        };
                        out.push((j, ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|e| e.to_string())));
                    }
                    out
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("weight conversion thread")).collect()
    });
    let mut results: Vec<Converted> = converted.into_iter().flatten().collect();
    results.sort_by_key(|(j, _)| *j);
    for (j, r) in results {
        let key = &jobs[j].0;
        match r {
            Ok(a) => {
                tensors.insert(key.clone(), Arc::new(a));
            }
            Err(e) => diags.push(Diagnostic::error(None, format!("{p}: tensor `{key}` is malformed: {e}"))),
        }
    }
    let mut unused: Vec<String> = st.names().into_iter().filter(|n| !used.contains(*n)).map(str::to_string).collect();
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
    safetensors::serialize_to_file(views, None, path).map_err(|e| e.to_string())
}
