//! `resnetc._resnetc`: the compiler and runtime behind `import resnetc`.
//!
//! What enters: spec and weights paths, Keras config JSON, numpy arrays (float32, NHWC, any batch size).
//! What leaves: [`Model`] and [`CompiledModel`] objects, numpy arrays, spec text, safetensors files.
//! Every error is a Python exception: a bad spec, weights file or Keras config `resnetc.SpecError` (with
//! its `.diagnostics`), a bad array or option `ValueError` (`TypeError` when it is not an array at all), a
//! missing file an `OSError` of the matching kind, and a Rust panic `resnetc.InternalError` — never an
//! abort. Long work (loading, compiling, running) releases the GIL, so Python threads run in parallel.
//!
//! The pure Python half (python/resnetc/) defines the exception and diagnostic classes, `from_keras`, the
//! docstrings users read and the type stubs.

use numpy::{IntoPyArray, PyArrayDescrMethods, PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{
    PyFileNotFoundError, PyIsADirectoryError, PyOSError, PyPermissionError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use resnetc_compiler::backend::{BackendOptions, Compiled, MAX_BATCH_GROUP};
use resnetc_compiler::codegen::x86::Isa;
use resnetc_compiler::diag::{Diagnostic, Diagnostics, Severity};
use resnetc_compiler::{keras, ops, passes, report, weights, Error, Options};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The most threads `compile(threads=...)` accepts.
const MAX_THREADS: usize = 1024;

// ---- errors ----

/// The Python module with the exception and diagnostic classes (python/resnetc/_errors.py).
fn errors(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    py.import("resnetc._errors")
}

/// One diagnostic as a `resnetc.Diagnostic` (file, line, column, message; severity).
fn diagnostic<'py>(py: Python<'py>, d: &Diagnostic) -> PyResult<Bound<'py, PyAny>> {
    let mut message = d.message.clone();
    for n in &d.notes {
        message.push_str("\n  = note: ");
        message.push_str(n);
    }
    let severity = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Omitted { .. } => "note",
    };
    let (file, line, col) = match &d.loc {
        Some(l) => (Some(l.file.to_string()), Some(l.line), Some(l.col)),
        None => (None, None, None),
    };
    errors(py)?.getattr("Diagnostic")?.call1((file, line, col, message, severity))
}

fn diagnostics<'py>(py: Python<'py>, ds: &Diagnostics) -> PyResult<Bound<'py, PyList>> {
    let items: Vec<Bound<'py, PyAny>> = ds.0.iter().map(|d| diagnostic(py, d)).collect::<PyResult<_>>()?;
    PyList::new(py, items)
}

/// `resnetc.SpecError` with the located text (as `resnetc check` prints it) and the diagnostics.
fn spec_error(py: Python<'_>, ds: &Diagnostics) -> PyErr {
    let make = || -> PyResult<PyErr> {
        let exc = errors(py)?.getattr("SpecError")?.call1((ds.to_string(), diagnostics(py, ds)?))?;
        Ok(PyErr::from_value(exc))
    };
    make().unwrap_or_else(|e| e)
}

fn internal_error(py: Python<'_>, message: String) -> PyErr {
    let make = || -> PyResult<PyErr> {
        let exc = errors(py)?.getattr("InternalError")?.call1((message.clone(),))?;
        Ok(PyErr::from_value(exc))
    };
    make().unwrap_or_else(|e| e)
}

/// An `OSError` of the kind Python would raise, with errno and file name.
fn io_error(path: &Path, e: &std::io::Error) -> PyErr {
    // The OS's own text ("No such file or directory"), as Python's own OSErrors carry it.
    let text = e.to_string();
    let text = text.rfind(" (os error ").map_or(text.as_str(), |i| &text[..i]).to_string();
    let Some(errno) = e.raw_os_error() else {
        // Refused by resnetc itself (a directory, a device, a file over a size limit): no errno to give.
        return PyOSError::new_err(format!("{}: {text}", path.display()));
    };
    let args = (errno, text, path.display().to_string());
    match e.kind() {
        std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(args),
        std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(args),
        std::io::ErrorKind::IsADirectory => PyIsADirectoryError::new_err(args),
        _ => PyOSError::new_err(args),
    }
}

fn to_py(py: Python<'_>, e: Error) -> PyErr {
    match e {
        Error::Invalid(d) => spec_error(py, &d),
        Error::Io { path, source } => io_error(&path, &source),
        Error::File { .. } => PyOSError::new_err(e.to_string()),
        Error::InputShape { .. } | Error::Option(_) | Error::Image(_) | Error::Unsupported(_) => {
            PyValueError::new_err(e.to_string())
        }
        Error::Runtime(_) => PyRuntimeError::new_err(e.to_string()),
        Error::Internal { .. } => internal_error(py, e.to_string()),
    }
}

/// Runs `f`, turning a Rust panic into `resnetc.InternalError` instead of unwinding into Python.
fn guard<T>(py: Python<'_>, f: impl FnOnce() -> T) -> PyResult<T> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        internal_error(py, format!("resnetc panicked: {what}"))
    })
}

// ---- arguments ----

/// A shape as Python writes a tuple: `(64, 64, 3)`, `(6,)`.
fn shape_text(s: &[usize]) -> String {
    let d: Vec<String> = s.iter().map(usize::to_string).collect();
    if d.len() == 1 {
        format!("({},)", d[0])
    } else {
        format!("({})", d.join(", "))
    }
}

/// `input_shape=(H, W, C)`: three positive sizes.
fn input_shape(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<usize>>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else { return Ok(None) };
    let dims: Option<Vec<i64>> = obj.extract().ok();
    match dims {
        Some(d) if d.len() == 3 && d.iter().all(|&x| x >= 1 && x <= ops::MAX_DIM as i64) => {
            Ok(Some(d.iter().map(|&x| x as usize).collect()))
        }
        _ => Err(PyValueError::new_err(format!(
            "input_shape must be (H, W, C) with sizes from 1 to {}, found {}",
            ops::MAX_DIM,
            obj.repr().map_or("?".into(), |r| r.to_string())
        ))),
    }
}

/// The back end's options from `compile`'s arguments: `isa` names the CPU tier ("auto", "avx512", "avx2",
/// "f32x4"; a tier this CPU lacks is a ValueError saying what it needs), `batch` the batch group.
fn backend_options(threads: i64, isa: &str, batch: i64) -> PyResult<BackendOptions> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 0 || threads as u64 > MAX_THREADS as u64 {
        return Err(PyValueError::new_err(format!(
            "threads must be 0 (one per core; this machine has {cores}) or a count up to {MAX_THREADS}, found {threads}"
        )));
    }
    let tier: Isa = isa.parse().map_err(|e| PyValueError::new_err(format!("isa={isa:?}: {e}")))?;
    tier.check_supported().map_err(|e| PyValueError::new_err(format!("isa={isa:?}: {e}")))?;
    if batch < 1 || batch as u64 > MAX_BATCH_GROUP as u64 {
        return Err(PyValueError::new_err(format!(
            "batch must be a batch group of 1 to {MAX_BATCH_GROUP} items, found {batch}"
        )));
    }
    Ok(BackendOptions { threads: threads as usize, isa: tier, batch: batch as usize, ..Default::default() })
}

/// A batch for the model: a C-contiguous, aligned, native float32 numpy array `[N, H, W, C]`.
///
/// A float32 array that is not contiguous, aligned or in native byte order is copied into one that is
/// (nothing is lost); any other dtype is refused, since converting it could lose what it holds.
fn batch<'py>(x: &Bound<'py, PyAny>, hwc: &[usize]) -> PyResult<PyReadonlyArrayDyn<'py, f32>> {
    let py = x.py();
    let want =
        format!("a float32 numpy array of shape (N, {}, {}, {}) (NHWC, any batch size N)", hwc[0], hwc[1], hwc[2]);
    let Ok(arr) = x.cast::<PyUntypedArray>() else {
        let t = x.get_type().name().map_or("?".into(), |n| n.to_string());
        return Err(PyTypeError::new_err(format!("expected {want}, found a {t} object")));
    };
    let dt = arr.dtype();
    if !(dt.kind() == b'f' && dt.itemsize() == 4) {
        let found = dt.str().map_or("?".into(), |s| s.to_string());
        return Err(PyValueError::new_err(format!(
            "expected {want}, found dtype {found}: convert it with x.astype(numpy.float32)"
        )));
    }
    let s = arr.shape();
    if s.len() != 4 || s[1..] != *hwc {
        let hint = if s == hwc { "; for one image add the batch axis: x[None]" } else { "" };
        return Err(PyValueError::new_err(format!("expected {want}, found shape {}{hint}", shape_text(s))));
    }
    let arr = py.import("numpy")?.call_method1("require", (arr, "float32", "CA"))?;
    arr.extract()
}

// ---- the model ----

/// A loaded, validated model: its graph with every shape inferred, and its weights.
#[pyclass(module = "resnetc", name = "Model", frozen)]
struct Model {
    m: Arc<resnetc_compiler::Model>,
}

#[pymethods]
impl Model {
    /// The model's name (the spec's `model`).
    #[getter]
    fn name(&self) -> String {
        self.m.graph.model.clone()
    }

    /// The per-image input shape (H, W, C).
    #[getter]
    fn input_shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.m.input_shape())
    }

    /// The per-image output shape.
    #[getter]
    fn output_shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.m.output_shape())
    }

    /// Trainable and non-trainable parameters, as Keras counts them.
    #[getter]
    fn params(&self) -> usize {
        self.m.graph.params()
    }

    /// Multiply-accumulates per image.
    #[getter]
    fn macs(&self) -> u64 {
        self.m.graph.macs()
    }

    /// The shortcut projections resnetc inserted, one line each.
    #[getter]
    fn projections(&self) -> Vec<String> {
        self.m.projections.iter().map(|p| p.to_string()).collect()
    }

    /// Warnings found while loading (nodes that do not reach the output, unused weight tensors).
    #[getter]
    fn warnings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        diagnostics(py, &self.m.warnings)
    }

    /// A table like Keras's `model.summary()`.
    fn summary(&self) -> String {
        report::summary(&self.m.graph)
    }

    /// Graphviz DOT of the graph, or of the graph after the optimizer pass `after`.
    #[pyo3(signature = (after=None))]
    fn to_dot(&self, py: Python<'_>, after: Option<&str>) -> PyResult<String> {
        let Some(pass) = after else { return Ok(report::dot(&self.m.graph)) };
        if !passes::is_pass(pass) {
            let names: Vec<&str> = passes::PASSES.iter().map(|p| p.name).collect();
            return Err(PyValueError::new_err(format!("unknown pass {pass:?}; the passes are: {}", names.join(", "))));
        }
        let m = self.m.clone();
        let o = guard(py, || py.detach(|| m.optimize(Some(pass))))?.map_err(|e| to_py(py, e))?;
        Ok(report::dot(o.report.dump_graph.as_ref().unwrap_or(&o.graph)))
    }

    /// Runs the reference interpreter (plain ndarray code, the graph as written, no optimization) on a
    /// float32 NHWC batch (N, H, W, C); returns (N, *output_shape). Slow: for checking.
    fn run_reference<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let x = batch(x, self.m.input_shape())?;
        let v = x.as_array();
        let m = &self.m;
        let y = guard(py, || py.detach(|| m.run_reference(v)))?.map_err(|e| to_py(py, e))?;
        Ok(y.into_pyarray(py))
    }

    /// Optimizes, plans and JIT-compiles the model.
    ///
    /// threads: threads each kernel is split over (0: one per core). isa: the CPU tier of the kernels:
    /// "auto" (the widest this CPU runs), "avx512", "avx2" or "f32x4" (a tier the CPU lacks raises
    /// ValueError). batch: the batch group, 1 to 64: convolutions compute that many items per call, so a
    /// batch streams each weight once per group (calls run whole groups; a smaller batch runs padded).
    #[pyo3(signature = (threads=0, isa="auto", batch=1))]
    fn compile(&self, py: Python<'_>, threads: i64, isa: &str, batch: i64) -> PyResult<CompiledModel> {
        let opts = backend_options(threads, isa, batch)?;
        let m = &self.m;
        let c = guard(py, || py.detach(|| m.compile(&opts)))?.map_err(|e| to_py(py, e))?;
        Ok(CompiledModel {
            c: Arc::new(c),
            name: m.graph.model.clone(),
            input: m.input_shape().to_vec(),
            output: m.output_shape().to_vec(),
            isa: opts.isa.name(),
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "<resnetc.Model {:?}: {} -> {}, {} parameters>",
            self.m.graph.model,
            shape_text(self.m.input_shape()),
            shape_text(self.m.output_shape()),
            report::thousands(self.m.graph.params() as u64)
        )
    }
}

/// A JIT-compiled model: call it on batches, from any number of threads at once.
#[pyclass(module = "resnetc", name = "CompiledModel", frozen)]
struct CompiledModel {
    c: Arc<Compiled>,
    name: String,
    input: Vec<usize>,
    output: Vec<usize>,
    isa: &'static str,
}

#[pymethods]
impl CompiledModel {
    /// Runs the model on x of shape (N, H, W, C); returns a new float32 array (N, *output_shape).
    ///
    /// A float32 array that is not C-contiguous, aligned or native-endian is copied first; any other dtype
    /// (e.g. float64) raises ValueError (convert it with x.astype(np.float32)), and so does a wrong shape.
    /// The GIL is released while it runs: Python threads can call one compiled model at the same time.
    fn __call__<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let x = batch(x, &self.input)?;
        if x.shape()[0] == 0 {
            let shape: Vec<usize> = std::iter::once(0).chain(self.output.iter().copied()).collect();
            return Ok(ndarray::ArrayD::<f32>::zeros(shape).into_pyarray(py));
        }
        let v = x.as_array();
        let c = &self.c;
        let y = guard(py, || py.detach(|| c.run(v)))?.map_err(|e| to_py(py, e))?;
        Ok(y.into_pyarray(py))
    }

    #[getter]
    fn input_shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.input)
    }

    #[getter]
    fn output_shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.output)
    }

    /// Threads each kernel is split over.
    #[getter]
    fn threads(&self) -> usize {
        self.c.threads()
    }

    /// The CPU tier the kernels were compiled for.
    #[getter]
    fn isa(&self) -> &'static str {
        self.isa
    }

    /// Kernels the model runs as (after fusion).
    #[getter]
    fn kernels(&self) -> usize {
        self.c.kernels.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "<resnetc.CompiledModel {:?}: {} -> {}, {} kernels, {} thread(s), {}>",
            self.name,
            shape_text(&self.input),
            shape_text(&self.output),
            self.c.kernels.len(),
            self.c.threads(),
            self.isa
        )
    }
}

// ---- functions ----

/// Loads and validates a YAML spec.
///
/// weights: a safetensors file keyed `<layer>.<weight>` in Keras layouts; without one the model is
/// initialized as the Keras notebook does (glorot-uniform kernels seeded by `seed`, zero biases, identity
/// BatchNorm). input_shape: (H, W, C) in place of the spec's. Raises resnetc.SpecError (every problem,
/// located), FileNotFoundError and other OSErrors, ValueError for a bad input_shape.
#[pyfunction]
#[pyo3(signature = (spec, weights=None, input_shape=None, seed=0))]
fn load(
    py: Python<'_>,
    spec: PathBuf,
    weights: Option<PathBuf>,
    input_shape: Option<&Bound<'_, PyAny>>,
    seed: u64,
) -> PyResult<Model> {
    let opts = Options { weights, input_shape: self::input_shape(input_shape)?, seed, ..Default::default() };
    let m = guard(py, || py.detach(|| resnetc_compiler::Model::from_file(&spec, &opts)))?.map_err(|e| to_py(py, e))?;
    Ok(Model { m: Arc::new(m) })
}

/// Checks a spec without loading weights; returns every error and warning (empty: the spec is fine).
#[pyfunction]
#[pyo3(signature = (spec, input_shape=None))]
fn check<'py>(py: Python<'py>, spec: PathBuf, input_shape: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyList>> {
    let opts = Options { input_shape: self::input_shape(input_shape)?, ..Default::default() };
    // Only a regular file within the spec size limit is read (the front end's bound, as `resnetc check`).
    let bytes = resnetc_compiler::read_spec(&spec, &opts).map_err(|e| to_py(py, e))?;
    let name = spec.display().to_string();
    let (_, diags) = guard(py, || py.detach(|| resnetc_compiler::check(&name, &bytes, &opts)))?;
    diagnostics(py, &diags)
}

/// A Keras model config (`model.to_json()`) → (spec text, notes). `name` names the config in messages.
#[pyfunction]
#[pyo3(signature = (config, name, input_shape=None))]
fn keras_to_spec(
    py: Python<'_>,
    config: &str,
    name: &str,
    input_shape: Option<&Bound<'_, PyAny>>,
) -> PyResult<(String, Vec<String>)> {
    let shape = self::input_shape(input_shape)?;
    let c = guard(py, || keras::convert(name, config.as_bytes(), shape.as_deref()))?.map_err(|d| spec_error(py, &d))?;
    Ok((c.spec, c.notes))
}

/// Writes float32 arrays as a safetensors file (keys as given, e.g. `conv1.kernel`).
#[pyfunction]
fn save_weights(py: Python<'_>, path: PathBuf, tensors: &Bound<'_, PyDict>) -> PyResult<()> {
    let mut w = weights::Weights::default();
    for (k, v) in tensors.iter() {
        let key: String = k.extract()?;
        let a: PyReadonlyArrayDyn<f32> = v.extract().map_err(|_| {
            PyTypeError::new_err(format!("weights[{key:?}]: expected a float32 numpy array, found {}", v.get_type()))
        })?;
        w.insert(key, a.as_array().to_owned());
    }
    guard(py, || py.detach(|| weights::save_safetensors(&w, &path)))?
        .map_err(|e| PyOSError::new_err(format!("{}: cannot write the weights: {e}", path.display())))
}

/// For the tests: panics, to show that a Rust panic reaches Python as `resnetc.InternalError`.
#[pyfunction]
fn _panic_for_tests(py: Python<'_>, message: &str) -> PyResult<()> {
    guard(py, || panic!("{message}"))
}

#[pymodule]
fn _resnetc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Model>()?;
    m.add_class::<CompiledModel>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(check, m)?)?;
    m.add_function(wrap_pyfunction!(keras_to_spec, m)?)?;
    m.add_function(wrap_pyfunction!(save_weights, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    Ok(())
}
