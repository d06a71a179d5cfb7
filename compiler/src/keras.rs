//! Keras models in: the JSON config that Keras's `model.to_json()` writes (Keras 3's format, and tf.keras
//! 2's) → the text of a resnetc spec (YAML) that computes the same function.
//!
//! Input is the config bytes (a Functional or Sequential model: its layers, how they connect, and their
//! settings; no weights). Output is a [`Conversion`]: readable spec text, one node per line in the order
//! Keras lists the layers, each node named as its Keras layer so that the Keras weights load as they are
//! (`<layer>.<weight>`, see the README's "Weights"), `add` nodes written with `shortcut:` edges. Every
//! supported layer becomes one node, except a `Conv2D` with an activation (a conv node, then the
//! activation's node) and layers that are identities at inference (`Dropout`, linear `Activation`, ...),
//! which are left out. Any other layer, or a setting resnetc does not implement (dilation, groups,
//! `channels_first`, BatchNormalization called with `training=True`, ...), is refused: every such problem
//! is reported at once, each naming its layer.
//!
//! The spec is not checked here; load it (or run `resnetc check`) to infer its shapes and verify it.

use crate::diag::{Diagnostic, Diagnostics, Loc};
use crate::ops::MAX_DIM;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

/// The largest config file accepted (keras.applications.ResNet152's is under 1 MB).
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// A converted model.
#[derive(Clone, Debug)]
pub struct Conversion {
    /// The spec, as YAML text.
    pub spec: String,
    /// The Keras model's name (the spec's `model`).
    pub model: String,
    /// Keras layers read (the input layer included).
    pub layers: usize,
    /// Nodes written to the spec (the input not included).
    pub nodes: usize,
    /// Things the user should know: layers left out as identities, BatchNormalization layers without
    /// `gamma` or `beta` weights.
    pub notes: Vec<String>,
}

/// Keras layers that are identities at inference, left out of the spec.
const IDENTITY_LAYERS: &[&str] = &["Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "Identity"];

/// The Keras layers converted, for the message that refuses any other.
const SUPPORTED: &str = "InputLayer, Conv2D, BatchNormalization, Activation (relu, softmax, linear), ReLU, Softmax, \
    Add, ZeroPadding2D, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, Flatten, Dense, \
    and as identities Dropout, SpatialDropout2D, GaussianNoise, GaussianDropout, Identity";

/// Reads a config file, refusing what is not a regular file of sane size before reading it.
pub fn read_config(path: &Path) -> Result<Vec<u8>, String> {
    let p = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{p}: error: cannot read the Keras config: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{p}: error: not a regular file; expected the JSON text of a Keras model config"));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(format!(
            "{p}: error: the file has {} bytes, more than the limit of {MAX_CONFIG_BYTES} for a Keras model config",
            meta.len()
        ));
    }
    std::fs::read(path).map_err(|e| format!("{p}: error: cannot read the Keras config: {e}"))
}

/// Converts a Keras model config (`file` names it in messages). `input_shape` (`[H, W, C]`) replaces the
/// model's input shape, which must be given when Keras leaves a size open (`Input((None, None, 3))`).
pub fn convert(file: &str, json: &[u8], input_shape: Option<&[usize]>) -> Result<Conversion, Diagnostics> {
    let mut cx = Cx { file, diags: Diagnostics::default(), notes: Vec::new() };
    let root = cx.parse(json)?;
    let model = cx.model(&root)?;
    let out = cx.emit(&model, input_shape);
    if cx.diags.has_errors() {
        return Err(cx.diags);
    }
    let (spec, nodes) = out.ok_or(cx.diags)?;
    Ok(Conversion { spec, model: model.name, layers: model.layers.len() + 1, nodes, notes: cx.notes })
}

/// A Keras shape: batch dimension included, `None` where Keras leaves a size open.
type KShape = Vec<Option<usize>>;

/// One call of a layer: the layers feeding it, its first input's shape (if recorded), its keyword arguments.
type Inbound<'a> = (Vec<String>, Option<KShape>, Option<&'a Map<String, Value>>);

/// One Keras layer, connections resolved to the names of the layers feeding it.
struct Layer<'a> {
    name: String,
    class: String,
    config: &'a Map<String, Value>,
    inputs: Vec<String>,
    /// The shape of the first input, batch dimension included, when the config records it (Keras 3).
    input_shape: Option<KShape>,
    /// Keyword arguments of the call (`training`).
    kwargs: Option<&'a Map<String, Value>>,
}

struct Model<'a> {
    name: String,
    input: String,
    /// `[batch, H, W, C]` as Keras declares it; `None` where a size is open.
    input_shape: KShape,
    layers: Vec<Layer<'a>>,
    output: String,
}

struct Cx<'f> {
    file: &'f str,
    diags: Diagnostics,
    notes: Vec<String>,
}

impl Cx<'_> {
    fn error(&mut self, msg: impl std::fmt::Display) {
        self.diags.push(Diagnostic::error(None, format!("{}: {msg}", self.file)));
    }

    fn fail<T>(&mut self, msg: impl std::fmt::Display) -> Result<T, Diagnostics> {
        self.error(msg);
        Err(std::mem::take(&mut self.diags))
    }

    fn parse(&mut self, json: &[u8]) -> Result<Value, Diagnostics> {
        if json.len() as u64 > MAX_CONFIG_BYTES {
            return self.fail(format_args!(
                "the config has {} bytes, more than the limit of {MAX_CONFIG_BYTES} for a Keras model config",
                json.len()
            ));
        }
        if json.starts_with(b"PK\x03\x04") {
            return self.fail(
                "this is a zip archive (a `.keras` file?), not a JSON config: pass the `config.json` inside it \
                 (`unzip -p model.keras config.json > config.json`), or use resnetc.from_keras in Python",
            );
        }
        if json.starts_with(b"\x89HDF") {
            return self.fail(
                "this is an HDF5 file (a `.h5` model?), not a JSON config: load it with Keras and write \
                 `model.to_json()`, or use resnetc.from_keras in Python",
            );
        }
        serde_json::from_slice(json).map_err(|e| {
            let full = e.to_string();
            let msg = full.rfind(" at line ").map_or(full.as_str(), |i| &full[..i]);
            let file: Arc<str> = self.file.into();
            let loc = Loc::new(&file, e.line() as u32, e.column() as u32);
            self.diags.push(Diagnostic::error(
                Some(loc),
                format!("not a Keras model config: invalid JSON: {msg} (expected what `model.to_json()` writes)"),
            ));
            std::mem::take(&mut self.diags)
        })
    }

    /// The model's name, input, layers and output, from a Functional or Sequential config.
    fn model<'a>(&mut self, root: &'a Value) -> Result<Model<'a>, Diagnostics> {
        let Some(obj) = root.as_object() else {
            return self.fail(format_args!(
                "not a Keras model config: expected a JSON object with `class_name` and `config` (what \
                 `model.to_json()` writes), found {}",
                describe(root)
            ));
        };
        // `model.to_json()` wraps the config in {class_name, config}; `get_config()` is the config itself.
        let (class, config) = match (obj.get("class_name").and_then(Value::as_str), obj.get("config")) {
            (Some(c), Some(Value::Object(cfg))) => (c, cfg),
            _ if obj.contains_key("layers") => ("Functional", obj),
            _ => {
                return self.fail(
                    "not a Keras model config: expected a JSON object with `class_name` and `config` (what \
                     `model.to_json()` writes)",
                )
            }
        };
        let name = config.get("name").and_then(Value::as_str).unwrap_or("keras_model").to_string();
        let Some(layers) = config.get("layers").and_then(Value::as_array) else {
            return self.fail(format_args!(
                "the {class} model `{name}` has no `layers` list: only Functional and Sequential models have a \
                 config resnetc can convert (a subclassed model has none)"
            ));
        };
        match class {
            "Functional" | "Model" => self.functional(name, config, layers),
            "Sequential" => self.sequential(name, config, layers),
            other => self.fail(format_args!(
                "the model `{name}` is a `{other}`: resnetc converts Functional and Sequential models"
            )),
        }
    }

    fn functional<'a>(
        &mut self,
        name: String,
        config: &'a Map<String, Value>,
        layers: &'a [Value],
    ) -> Result<Model<'a>, Diagnostics> {
        let ends = |key: &str| -> Vec<String> {
            // Keras 3 writes one endpoint as ["name", 0, 0], several as [[...], ...]; tf.keras always nests.
            match config.get(key).and_then(Value::as_array) {
                Some(v) if v.first().is_some_and(Value::is_string) => {
                    v.first().and_then(Value::as_str).map(str::to_string).into_iter().collect()
                }
                Some(v) => v
                    .iter()
                    .filter_map(|e| e.as_array().and_then(|e| e.first()).and_then(Value::as_str).map(str::to_string))
                    .collect(),
                None => Vec::new(),
            }
        };
        let (inputs, outputs) = (ends("input_layers"), ends("output_layers"));
        if inputs.len() != 1 || outputs.len() != 1 {
            return self.fail(format_args!(
                "the model `{name}` has {} input(s) and {} output(s): a resnetc spec has one of each",
                inputs.len(),
                outputs.len()
            ));
        }
        let mut input = None;
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for (i, l) in layers.iter().enumerate() {
            let Some((lname, class, cfg)) = self.layer_head(i, l) else { continue };
            if !seen.insert(lname.clone()) {
                self.error(format_args!("layer {i} `{lname}` ({class}): a second layer of the same name"));
                continue;
            }
            if class == "InputLayer" {
                if lname == inputs[0] {
                    let shape = self.input_shape(&lname, cfg);
                    input = Some((lname, shape));
                }
                continue;
            }
            let nodes = l.get("inbound_nodes").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
            let (ins, shape, kwargs) = match nodes {
                [node] => self.inbound(&lname, &class, node),
                [] => {
                    self.error(format_args!("layer `{lname}` ({class}) is connected to nothing (no inbound nodes)"));
                    continue;
                }
                _ => {
                    self.error(format_args!(
                        "layer `{lname}` ({class}) is called {} times (a shared layer): resnetc names each node \
                         after its layer and its weights, so every call needs a layer of its own",
                        nodes.len()
                    ));
                    continue;
                }
            };
            for x in &ins {
                if !seen.contains(x) {
                    self.error(format_args!(
                        "layer `{lname}` ({class}) takes `{x}`, which no layer before it in the config defines"
                    ));
                }
            }
            out.push(Layer { name: lname, class, config: cfg, inputs: ins, input_shape: shape, kwargs });
        }
        let Some((input, input_shape)) = input else {
            return self.fail(format_args!("the model's input layer `{}` is not among its layers", inputs[0]));
        };
        if !seen.contains(&outputs[0]) {
            self.error(format_args!("the model's output layer `{}` is not among its layers", outputs[0]));
        }
        let input_shape = input_shape.ok_or_else(|| std::mem::take(&mut self.diags))?;
        Ok(Model { name, input, input_shape, layers: out, output: outputs[0].clone() })
    }

    fn sequential<'a>(
        &mut self,
        name: String,
        config: &'a Map<String, Value>,
        layers: &'a [Value],
    ) -> Result<Model<'a>, Diagnostics> {
        let mut input: Option<(String, Option<KShape>)> = None;
        let mut out: Vec<Layer> = Vec::new();
        let mut prev: Option<String> = None;
        for (i, l) in layers.iter().enumerate() {
            let Some((lname, class, cfg)) = self.layer_head(i, l) else { continue };
            if class == "InputLayer" {
                if input.is_none() && out.is_empty() {
                    let shape = self.input_shape(&lname, cfg);
                    input = Some((lname.clone(), shape));
                    prev = Some(lname);
                } else {
                    self.error(format_args!("layer {i} `{lname}`: an InputLayer after the first layer"));
                }
                continue;
            }
            if prev.is_none() {
                // No InputLayer: the first layer's declared input shape (tf.keras), or the model's build shape.
                let declared = ["batch_input_shape", "batch_shape"].iter().find_map(|k| cfg.get(*k)).cloned();
                let built = config.get("build_input_shape").cloned();
                let shape = match declared.or(built) {
                    Some(s) => self.shape_of(&format!("the input of layer `{lname}`"), &s),
                    None => {
                        self.error(format_args!(
                            "the Sequential model `{name}` declares no input shape: build it with \
                             `keras.Input((H, W, C))` as its first layer"
                        ));
                        None
                    }
                };
                input = Some(("input".to_string(), shape));
                prev = Some("input".to_string());
            }
            let ins = prev.iter().cloned().collect();
            out.push(Layer { name: lname.clone(), class, config: cfg, inputs: ins, input_shape: None, kwargs: None });
            prev = Some(lname);
        }
        let Some((input, Some(input_shape))) = input else {
            if !self.diags.has_errors() {
                self.error(format_args!("the Sequential model `{name}` has no layers"));
            }
            return Err(std::mem::take(&mut self.diags));
        };
        let output = prev.unwrap_or_else(|| input.clone());
        Ok(Model { name, input, input_shape, layers: out, output })
    }

    /// A layer's name, class and config object, or `None` (reported) if it has none.
    fn layer_head<'a>(&mut self, i: usize, l: &'a Value) -> Option<(String, String, &'a Map<String, Value>)> {
        let class = l.get("class_name").and_then(Value::as_str);
        let cfg = l.get("config").and_then(Value::as_object);
        let name = l.get("name").or_else(|| cfg.and_then(|c| c.get("name"))).and_then(Value::as_str);
        match (class, cfg, name) {
            (Some(c), Some(cfg), Some(n)) => {
                if n.is_empty() || n.chars().any(|c| c.is_control() || c == '{' || c == '}') {
                    self.error(format_args!(
                        "layer {i} ({c}) has the name {n:?}: names with control characters or braces (`{{...}}` \
                         is a template in specs), or none, cannot name spec nodes; rename the layer in Keras"
                    ));
                    return None;
                }
                Some((n.to_string(), c.to_string(), cfg))
            }
            _ => {
                self.error(format_args!(
                    "layer {i} is not a Keras layer config: expected `class_name`, `config` and a name, found {}",
                    describe(l)
                ));
                None
            }
        }
    }

    /// The shape an `InputLayer` declares (`batch_shape` in Keras 3, `batch_input_shape` in tf.keras).
    fn input_shape(&mut self, name: &str, cfg: &Map<String, Value>) -> Option<KShape> {
        match cfg.get("batch_shape").or_else(|| cfg.get("batch_input_shape")) {
            Some(s) => self.shape_of(&format!("the input layer `{name}`"), s),
            None => {
                self.error(format_args!("the input layer `{name}` declares no shape (`batch_shape`)"));
                None
            }
        }
    }

    fn shape_of(&mut self, what: &str, v: &Value) -> Option<KShape> {
        let dims = v.as_array().map(|a| a.iter().map(|d| if d.is_null() { Some(None) } else { dim(d).map(Some) }));
        match dims.map(|d| d.collect::<Option<Vec<_>>>()) {
            Some(Some(s)) => Some(s),
            _ => {
                self.error(format_args!("{what} has the shape {v}, expected a list of sizes or nulls"));
                None
            }
        }
    }

    /// The producers feeding one call of a layer, its first input's shape (Keras 3 records it) and its
    /// keyword arguments. Keras 3: `{"args": [...], "kwargs": {...}}` with `__keras_tensor__` objects
    /// anywhere in the args; tf.keras: `[["name", node, tensor, {kwargs}], ...]`.
    fn inbound<'a>(&mut self, lname: &str, class: &str, node: &'a Value) -> Inbound<'a> {
        fn tensors<'v>(v: &'v Value, out: &mut Vec<&'v Map<String, Value>>) {
            match v {
                Value::Object(o) if o.get("class_name").and_then(Value::as_str) == Some("__keras_tensor__") => {
                    if let Some(c) = o.get("config").and_then(Value::as_object) {
                        out.push(c);
                    }
                }
                Value::Array(a) => a.iter().for_each(|x| tensors(x, out)),
                _ => {}
            }
        }
        let mut ins = Vec::new();
        let mut shape = None;
        let mut kwargs = None;
        match node {
            Value::Object(o) => {
                let mut ts = Vec::new();
                if let Some(a) = o.get("args") {
                    tensors(a, &mut ts);
                }
                for t in &ts {
                    let hist = t.get("keras_history").and_then(Value::as_array);
                    match hist.and_then(|h| h.first()).and_then(Value::as_str) {
                        Some(n) => ins.push(n.to_string()),
                        None => self.error(format_args!("layer `{lname}` ({class}): an input without `keras_history`")),
                    }
                    if let Some(h) = hist.filter(|h| h.get(1).and_then(Value::as_u64).unwrap_or(0) != 0) {
                        self.error(format_args!(
                            "layer `{lname}` ({class}) takes output {} of a shared layer: resnetc needs every \
                             layer called once",
                            Value::Array(h.clone())
                        ));
                    }
                }
                shape = ts.first().and_then(|t| t.get("shape")).and_then(|s| {
                    s.as_array()?.iter().map(|d| if d.is_null() { Some(None) } else { dim(d).map(Some) }).collect()
                });
                kwargs = o.get("kwargs").and_then(Value::as_object);
            }
            Value::Array(entries) => {
                for e in entries {
                    match e.as_array().and_then(|e| e.first()).and_then(Value::as_str) {
                        Some(n) => ins.push(n.to_string()),
                        None => {
                            self.error(format_args!("layer `{lname}` ({class}): an inbound entry {e} names no layer"))
                        }
                    }
                    kwargs = kwargs.or_else(|| e.get(3).and_then(Value::as_object));
                }
            }
            other => self.error(format_args!("layer `{lname}` ({class}): unreadable inbound node {}", describe(other))),
        }
        if ins.is_empty() {
            self.error(format_args!("layer `{lname}` ({class}) has no input tensor"));
        }
        (ins, shape, kwargs)
    }

    /// Writes the spec. Returns its text and node count (`None` if the input shape is unusable).
    fn emit(&mut self, m: &Model, shape_override: Option<&[usize]>) -> Option<(String, usize)> {
        let input_shape = self.resolve_input(m, shape_override);
        // Names taken by Keras layers: a node resnetc adds (a conv's activation) must not collide.
        let mut taken: HashSet<String> = m.layers.iter().map(|l| l.name.clone()).collect();
        taken.insert(m.input.clone());
        // The spec node holding each Keras layer's output (a dropped identity layer: its input's).
        let mut node_of: HashMap<&str, String> = HashMap::new();
        node_of.insert(&m.input, m.input.clone());
        let mut lines: Vec<String> = Vec::new();
        let mut prev = m.input.clone();
        let mut nodes = 0;
        let (order, depth) = order(m);
        let written: HashSet<usize> = order.iter().copied().collect();
        for (_, l) in m.layers.iter().enumerate().filter(|(i, _)| !written.contains(i)) {
            self.notes
                .push(format!("layer `{}` ({}) does not reach the output `{}`: left out", l.name, l.class, m.output));
        }
        for &i in &order {
            let l = &m.layers[i];
            let ins: Vec<String> =
                l.inputs.iter().map(|x| node_of.get(x.as_str()).cloned().unwrap_or_else(|| x.clone())).collect();
            if let Some(true) = l.kwargs.and_then(|k| k.get("training")).and_then(Value::as_bool) {
                self.error(format_args!(
                    "layer `{}` ({}) is called with training=True, so Keras runs it in training mode even in \
                     predict(); resnetc runs inference mode only: call it without `training`",
                    l.name, l.class
                ));
            }
            let fields = match self.node(l, &ins) {
                Some(Node::Identity) if ins.len() != 1 => {
                    self.error(format_args!("layer `{}` ({}) takes {} inputs, expected 1", l.name, l.class, ins.len()));
                    continue;
                }
                Some(Node::Identity) => {
                    lines.push(format!("  # `{}` ({}): an identity at inference, left out", l.name, l.class));
                    self.notes.push(format!("layer `{}` ({}) is an identity at inference: left out", l.name, l.class));
                    node_of.insert(&l.name, ins[0].clone());
                    continue;
                }
                Some(Node::Op(f, act)) => (f, act),
                None => continue,
            };
            let (fields, activation) = fields;
            let mut line = format!("  - {{op: {}, name: {}", fields.0, yaml_name(&l.name));
            if fields.0 == "add" {
                // Of two operands the deeper is the main path, the other the shortcut (a sum of two is the
                // same in either order); more operands are listed in Keras's order.
                let d = |x: &str| depth.get(x).copied().unwrap_or(0);
                match ins.as_slice() {
                    [a, b] => {
                        let (main, sc) = if d(&l.inputs[1]) > d(&l.inputs[0]) { (b, a) } else { (a, b) };
                        if *main == prev {
                            write!(line, ", shortcut: {}", yaml_name(sc))
                        } else {
                            write!(line, ", inputs: [{}], shortcut: {}", yaml_name(main), yaml_name(sc))
                        }
                    }
                    many => {
                        write!(line, ", inputs: [{}]", many.iter().map(|x| yaml_name(x)).collect::<Vec<_>>().join(", "))
                    }
                }
                .expect("write to String");
            } else if ins.len() != 1 {
                self.error(format_args!("layer `{}` ({}) takes {} inputs, expected 1", l.name, l.class, ins.len()));
                continue;
            } else if ins[0] != prev {
                write!(line, ", inputs: {}", yaml_name(&ins[0])).expect("write to String");
            }
            for (k, v) in &fields.1 {
                write!(line, ", {k}: {v}").expect("write to String");
            }
            line.push('}');
            lines.push(line);
            nodes += 1;
            prev = l.name.clone();
            if let Some(act) = activation {
                let mut an = format!("{}_{act}", l.name);
                let mut k = 2;
                while taken.contains(&an) {
                    an = format!("{}_{act}_{k}", l.name);
                    k += 1;
                }
                taken.insert(an.clone());
                lines.push(format!("  - {{op: {act}, name: {}}}", yaml_name(&an)));
                nodes += 1;
                prev = an.clone();
                node_of.insert(&l.name, an);
            } else {
                node_of.insert(&l.name, l.name.clone());
            }
        }
        let input_shape = input_shape?;
        let output = node_of.get(m.output.as_str()).cloned().unwrap_or_else(|| m.output.clone());
        if nodes == 0 {
            self.error(format_args!("the model `{}` computes nothing: no layer becomes a spec node", m.name));
            return None;
        }
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# The Keras model `{}`, converted from its config by resnetc import-keras: one node per Keras layer,\n\
             # named as the layer, so that its weights load as they are (`<layer>.<weight>`, README \"Weights\").",
            m.name.replace('\n', " ")
        );
        let _ = writeln!(s, "model: {}", yaml_name(&m.name));
        let dims: Vec<String> = input_shape.iter().map(usize::to_string).collect();
        let _ = writeln!(s, "input: {{shape: [{}], name: {}}}", dims.join(", "), yaml_name(&m.input));
        let _ = writeln!(s, "\nlayers:");
        for l in &lines {
            let _ = writeln!(s, "{l}");
        }
        if output != prev {
            let _ = writeln!(s, "output: {}", yaml_name(&output));
        }
        Some((s, nodes))
    }

    fn resolve_input(&mut self, m: &Model, shape_override: Option<&[usize]>) -> Option<Vec<usize>> {
        let declared = &m.input_shape;
        let fmt = |s: &[Option<usize>]| -> String {
            let d: Vec<String> = s.iter().map(|d| d.map_or("None".to_string(), |d| d.to_string())).collect();
            format!("({})", d.join(", "))
        };
        if declared.len() != 4 {
            self.error(format_args!(
                "the input `{}` has shape {}: resnetc models take a batch of images, (None, H, W, C)",
                m.input,
                fmt(declared)
            ));
            return None;
        }
        if let Some(o) = shape_override {
            let open_ok = o.len() == 3 && declared[3].is_none_or(|c| c == o[2]);
            if !open_ok || o.iter().any(|&d| d == 0 || d > MAX_DIM) {
                self.error(format_args!(
                    "the input shape override {o:?} does not fit the input `{}` of shape {}: expected H,W,C with \
                     positive sizes and the model's channel count",
                    m.input,
                    fmt(declared)
                ));
                return None;
            }
            return Some(o.to_vec());
        }
        match declared[1..].iter().copied().collect::<Option<Vec<usize>>>() {
            Some(s) if s.iter().all(|&d| d > 0 && d <= MAX_DIM) => Some(s),
            _ => {
                self.error(format_args!(
                    "the input `{}` has shape {}: resnetc compiles for one image size; give it \
                     (`--input-shape H,W,C`, or input_shape=(H, W, C) in Python)",
                    m.input,
                    fmt(declared)
                ));
                None
            }
        }
    }

    /// The spec node for a layer: op name and fields, plus an activation node to add after it.
    fn node(&mut self, l: &Layer, ins: &[String]) -> Option<Node> {
        let mut f = Fields { cx: self, l, ok: true, out: Vec::new() };
        let class = l.class.as_str();
        if IDENTITY_LAYERS.contains(&class) {
            return Some(Node::Identity);
        }
        f.dtype_policy();
        let mut activation = None;
        let op = match class {
            "Conv2D" => {
                f.channels_last();
                let filters = f.size("filters");
                let kernel = f.pair("kernel_size");
                let strides = f.pair("strides");
                let padding = f.padding();
                if f.pair_or("dilation_rate", 1) != Some([1, 1]) {
                    f.refuse("dilation_rate", "resnetc convolutions have dilation 1");
                }
                if f.get("groups").is_some_and(|g| g.as_u64() != Some(1)) {
                    f.refuse("groups", "resnetc convolutions have groups 1");
                }
                activation = f.activation(&["linear", "relu", "softmax"]).filter(|a| *a != "linear");
                let bias = f.flag("use_bias", true);
                f.put("filters", filters.map(|x| x.to_string()));
                f.put("kernel", kernel.map(pair_text));
                if strides != Some([1, 1]) {
                    f.put("strides", strides.map(pair_text));
                }
                if padding == Some("same") {
                    f.put("padding", Some("same".into()));
                }
                if bias == Some(false) {
                    f.put("bias", Some("false".into()));
                }
                "conv"
            }
            "BatchNormalization" => {
                let rank = l.input_shape.as_ref().map(Vec::len);
                let axis = f.get("axis").cloned();
                let ok = match axis.as_ref().map(|a| a.as_array().and_then(|a| a.first()).unwrap_or(a).as_i64()) {
                    Some(Some(-1)) => true,
                    Some(Some(a)) => rank.map_or(a == 3, |r| a == r as i64 - 1),
                    _ => false,
                } && axis.as_ref().and_then(Value::as_array).is_none_or(|a| a.len() == 1);
                if !ok {
                    let found = axis.map_or("none".to_string(), |a| a.to_string());
                    f.refuse_found(
                        "axis",
                        &found,
                        "resnetc normalizes over the last (channel) axis: expected -1 or the last axis",
                    );
                }
                let eps = f.get("epsilon").and_then(Value::as_f64).unwrap_or(1e-3);
                if !(eps.is_finite() && eps > 0.0) {
                    f.refuse_found("epsilon", &eps.to_string(), "expected a positive number");
                } else if eps != 1e-3 {
                    f.put("epsilon", Some(float_text(eps)));
                }
                for (flag, weight, value) in [("center", "beta", "zeros"), ("scale", "gamma", "ones")] {
                    if f.flag(flag, true) == Some(false) {
                        f.cx.notes.push(format!(
                            "layer `{}` (BatchNormalization) has {flag}=False: its weights file needs `{}.{weight}` \
                             as {value} (resnetc.from_keras writes them)",
                            l.name, l.name
                        ));
                    }
                }
                "batch_norm"
            }
            "Activation" => match f.activation(&["linear", "relu", "softmax"]) {
                Some("linear") => return f.finish_identity(),
                Some(a) => a,
                None => "relu",
            },
            "ReLU" => {
                let plain = |k: &str, v: f64| f.get(k).is_none_or(|x| x.is_null() || x.as_f64() == Some(v));
                let (mv, ns, th) = (
                    f.get("max_value").is_none_or(Value::is_null),
                    plain("negative_slope", 0.0),
                    plain("threshold", 0.0),
                );
                if !(mv && ns && th) {
                    f.refuse(
                        "max_value/negative_slope/threshold",
                        "resnetc's relu is max(x, 0): no cap, slope or threshold",
                    );
                }
                "relu"
            }
            "Softmax" => {
                let rank = l.input_shape.as_ref().map(Vec::len);
                let axis = f.get("axis").cloned();
                let ok = match axis.as_ref().map(|a| a.as_array().and_then(|a| a.first()).unwrap_or(a).as_i64()) {
                    None | Some(Some(-1)) => true,
                    Some(Some(a)) => rank.is_some_and(|r| a == r as i64 - 1),
                    _ => false,
                };
                if !ok {
                    let found = axis.map_or("none".to_string(), |a| a.to_string());
                    f.refuse_found("axis", &found, "resnetc's softmax is over the last axis");
                }
                "softmax"
            }
            "Add" => {
                if ins.len() < 2 {
                    f.cx.error(format_args!(
                        "layer `{}` (Add) adds {} tensor(s), expected 2 or more",
                        l.name,
                        ins.len()
                    ));
                    f.ok = false;
                }
                "add"
            }
            "ZeroPadding2D" => {
                f.channels_last();
                let p = f.get("padding").cloned();
                match p.as_ref().and_then(padding4) {
                    Some([t, b, le, r]) => {
                        let text = if t == b && le == r && t == le {
                            t.to_string()
                        } else if t == b && le == r {
                            format!("[{t}, {le}]")
                        } else {
                            format!("[[{t}, {b}], [{le}, {r}]]")
                        };
                        f.put("padding", Some(text));
                    }
                    None => f.refuse_found(
                        "padding",
                        &p.map_or("none".to_string(), |p| p.to_string()),
                        "expected p, [ph, pw] or [[top, bottom], [left, right]] of sizes",
                    ),
                }
                "zero_padding"
            }
            "MaxPooling2D" | "AveragePooling2D" => {
                f.channels_last();
                let pool = f.pair("pool_size");
                let strides = if f.get("strides").is_none_or(Value::is_null) { pool } else { f.pair("strides") };
                let padding = f.padding();
                f.put("pool", pool.map(pair_text));
                if strides != pool {
                    f.put("strides", strides.map(pair_text));
                }
                if padding == Some("same") {
                    f.put("padding", Some("same".into()));
                }
                if class == "MaxPooling2D" {
                    "max_pool"
                } else {
                    "avg_pool"
                }
            }
            "GlobalAveragePooling2D" | "GlobalMaxPooling2D" => {
                f.channels_last();
                if f.flag("keepdims", false) == Some(true) {
                    f.refuse("keepdims", "resnetc's global pools output [C]");
                }
                if class == "GlobalMaxPooling2D" {
                    "global_max_pool"
                } else {
                    "global_avg_pool"
                }
            }
            "Flatten" => {
                f.channels_last();
                "flatten"
            }
            "Dense" => {
                if let Some(s) = &l.input_shape {
                    if s.len() != 2 {
                        f.cx.error(format_args!(
                            "layer `{}` (Dense) is applied to a rank-{} tensor: resnetc's dense takes vectors \
                             (flatten or pool before it)",
                            l.name,
                            s.len()
                        ));
                        f.ok = false;
                    }
                }
                let units = f.size("units");
                let act = f.activation(&["linear", "relu", "softmax"]);
                let bias = f.flag("use_bias", true);
                f.put("units", units.map(|u| u.to_string()));
                if let Some(a) = act.filter(|a| *a != "linear") {
                    f.put("activation", Some(a.to_string()));
                }
                if bias == Some(false) {
                    f.put("bias", Some("false".into()));
                }
                "dense"
            }
            "Functional" | "Sequential" | "Model" => {
                f.cx.error(format_args!(
                    "layer `{}` is a nested {} model: resnetc converts one model's own layers; build the model \
                     from the nested model's layers (e.g. keras.applications.ResNet50(input_tensor=...)) instead",
                    l.name, class
                ));
                return None;
            }
            other => {
                f.cx.error(format_args!("layer `{}` ({other}) is not supported: resnetc converts {SUPPORTED}", l.name));
                return None;
            }
        };
        let Fields { ok, out, .. } = f;
        ok.then_some(Node::Op((op, out), activation))
    }
}

/// The order to write the layers in, and each layer's depth (the longest path from the input, in layers).
///
/// Keras lists a model's layers breadth first, which interleaves the two branches of a residual block. The
/// spec is written depth first from the output instead, each node after all its inputs, and of a node's
/// inputs the deepest first: a block's main path reads top to bottom, then its shortcut branch (if it has
/// layers), then the `add`. Layers that do not reach the output are left out.
fn order<'m>(m: &'m Model) -> (Vec<usize>, HashMap<&'m str, usize>) {
    let index: HashMap<&str, usize> = m.layers.iter().enumerate().map(|(i, l)| (l.name.as_str(), i)).collect();
    let mut depth: HashMap<&str, usize> = HashMap::new();
    depth.insert(&m.input, 0);
    // Inputs come before their consumers in the config (checked when reading it).
    for l in &m.layers {
        let d = l.inputs.iter().map(|x| depth.get(x.as_str()).copied().unwrap_or(0)).max().unwrap_or(0) + 1;
        depth.insert(&l.name, d);
    }
    let children = |i: usize| -> Vec<usize> {
        let mut c: Vec<usize> = m.layers[i].inputs.iter().filter_map(|x| index.get(x.as_str()).copied()).collect();
        c.sort_by_key(|&j| std::cmp::Reverse(depth[m.layers[j].name.as_str()]));
        c
    };
    // Iterative post-order walk (a config may hold thousands of layers).
    let mut done = vec![false; m.layers.len()];
    let mut order = Vec::new();
    let mut stack: Vec<(usize, Vec<usize>)> = Vec::new();
    if let Some(&o) = index.get(m.output.as_str()) {
        done[o] = true;
        stack.push((o, children(o)));
    }
    while let Some((i, pending)) = stack.last_mut() {
        let i = *i;
        match pending.first().copied() {
            Some(c) => {
                pending.remove(0);
                if !done[c] {
                    done[c] = true;
                    stack.push((c, children(c)));
                }
            }
            None => {
                order.push(i);
                stack.pop();
            }
        }
    }
    (order, depth)
}

/// What a Keras layer becomes.
enum Node {
    /// Left out: its output is its input.
    Identity,
    /// A spec node (op, fields in order), and the activation node to put after it.
    Op((&'static str, Vec<(&'static str, String)>), Option<&'static str>),
}

/// Reads one layer's config fields; a missing or unsupported value is reported and marks the layer failed.
struct Fields<'a, 'c, 'f> {
    cx: &'c mut Cx<'f>,
    l: &'a Layer<'a>,
    ok: bool,
    out: Vec<(&'static str, String)>,
}

impl Fields<'_, '_, '_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.l.config.get(key)
    }

    fn refuse_found(&mut self, key: &str, found: &str, why: &str) {
        self.cx.error(format_args!("layer `{}` ({}): `{key}` is {found}: {why}", self.l.name, self.l.class));
        self.ok = false;
    }

    fn refuse(&mut self, key: &str, why: &str) {
        let found = self.get(key).map_or("set".to_string(), |v| v.to_string());
        self.refuse_found(key, &found, why);
    }

    fn put(&mut self, key: &'static str, v: Option<String>) {
        if let Some(v) = v {
            self.out.push((key, v));
        }
    }

    fn finish_identity(self) -> Option<Node> {
        self.ok.then_some(Node::Identity)
    }

    /// Quantized layers hold integer weights and scales that resnetc's float32 ops would misread: refused.
    /// Layers computing in another float type (mixed precision) are converted with a note: resnetc computes
    /// in float32, so it differs from Keras by that type's rounding.
    fn dtype_policy(&mut self) {
        let d = self.get("dtype");
        let class = d.and_then(|d| d.get("class_name")).and_then(Value::as_str).unwrap_or("");
        let name = match d {
            Some(Value::String(s)) => s.as_str(),
            Some(d) => d.get("config").and_then(|c| c.get("name")).and_then(Value::as_str).unwrap_or("float32"),
            None => "float32",
        };
        const WHY: &str =
            "a quantized layer: resnetc computes in float32 from float32 weights (convert the float model)";
        if let Some(q) = self.get("quantization_config").filter(|q| !q.is_null()) {
            let found = q.to_string();
            self.refuse_found("quantization_config", &found, WHY);
        } else if class.contains("Quantized") || ["int", "uint", "float8"].iter().any(|p| name.starts_with(p)) {
            let found = format!("\"{name}\"{}", if class.is_empty() { String::new() } else { format!(" ({class})") });
            self.refuse_found("dtype", &found, WHY);
        } else if name != "float32" {
            let (l, c) = (&self.l.name, &self.l.class);
            self.cx.notes.push(format!(
                "layer `{l}` ({c}) computes in {name} in Keras; resnetc computes in float32, so the outputs differ \
                 by {name} rounding"
            ));
        }
    }

    fn channels_last(&mut self) {
        if let Some(d) = self.get("data_format").and_then(Value::as_str) {
            if d != "channels_last" {
                let found = format!("\"{d}\"");
                self.refuse_found("data_format", &found, "resnetc tensors are NHWC (channels_last)");
            }
        }
    }

    fn size(&mut self, key: &str) -> Option<usize> {
        match self.get(key).and_then(dim) {
            Some(d) if (1..=MAX_DIM).contains(&d) => Some(d),
            _ => {
                let found = self.get(key).map_or("missing".to_string(), |v| v.to_string());
                self.refuse_found(key, &found, &format!("expected a size from 1 to {MAX_DIM}"));
                None
            }
        }
    }

    /// A `[a, b]` (or single number) field of positive sizes.
    fn pair(&mut self, key: &str) -> Option<[usize; 2]> {
        let v = self.get(key).cloned();
        let p = v.as_ref().and_then(|v| match v {
            Value::Array(a) if a.len() == 2 => Some([dim(&a[0])?, dim(&a[1])?]),
            Value::Array(a) if a.len() == 1 => Some([dim(&a[0])?; 2]),
            x => Some([dim(x)?; 2]),
        });
        match p {
            Some(p) if p.iter().all(|d| (1..=MAX_DIM).contains(d)) => Some(p),
            _ => {
                let found = v.map_or("missing".to_string(), |v| v.to_string());
                self.refuse_found(key, &found, &format!("expected [a, b] with sizes from 1 to {MAX_DIM}"));
                None
            }
        }
    }

    fn pair_or(&mut self, key: &str, default: usize) -> Option<[usize; 2]> {
        if self.get(key).is_none_or(Value::is_null) {
            return Some([default; 2]);
        }
        self.pair(key)
    }

    fn padding(&mut self) -> Option<&'static str> {
        match self.get("padding").and_then(Value::as_str) {
            None => Some("valid"),
            Some(p) if p.eq_ignore_ascii_case("valid") => Some("valid"),
            Some(p) if p.eq_ignore_ascii_case("same") => Some("same"),
            Some(p) => {
                self.refuse_found("padding", &format!("\"{p}\""), "expected \"valid\" or \"same\"");
                None
            }
        }
    }

    fn flag(&mut self, key: &str, default: bool) -> Option<bool> {
        match self.get(key) {
            None | Some(Value::Null) => Some(default),
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => {
                let found = v.to_string();
                self.refuse_found(key, &found, "expected true or false");
                None
            }
        }
    }

    /// The `activation` field (a name, or Keras 3's serialized function) if it is one of `allowed`.
    fn activation(&mut self, allowed: &[&'static str]) -> Option<&'static str> {
        let v = self.get("activation").cloned();
        let name = match &v {
            None | Some(Value::Null) => Some("linear".to_string()),
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o
                .get("config")
                .and_then(|c| c.as_str().or_else(|| c.get("name").and_then(Value::as_str)))
                .map(str::to_string),
            _ => None,
        };
        let name = name.map(|n| n.rsplit('.').next().unwrap_or_default().to_string());
        match name.as_deref().and_then(|n| allowed.iter().find(|a| **a == n)) {
            Some(a) => Some(a),
            None => {
                let found = match (&name, &v) {
                    (Some(n), _) => format!("\"{n}\""),
                    (None, Some(v)) => v.to_string(),
                    (None, None) => "missing".to_string(),
                };
                self.refuse_found("activation", &found, &format!("resnetc supports {}", allowed.join(", ")));
                None
            }
        }
    }
}

/// A non-negative integer (JSON may write sizes as 3 or 3.0).
fn dim(v: &Value) -> Option<usize> {
    v.as_u64()
        .or_else(|| v.as_f64().filter(|x| x.fract() == 0.0 && *x >= 0.0 && *x <= u32::MAX as f64).map(|x| x as u64))
        .and_then(|x| usize::try_from(x).ok())
}

/// ZeroPadding2D's padding in any of Keras's forms → [top, bottom, left, right].
fn padding4(v: &Value) -> Option<[usize; 4]> {
    let ok = |p: [usize; 4]| p.iter().all(|&d| d <= MAX_DIM).then_some(p);
    match v {
        Value::Array(a) if a.len() == 2 => match (&a[0], &a[1]) {
            (Value::Array(h), Value::Array(w)) if h.len() == 2 && w.len() == 2 => {
                ok([dim(&h[0])?, dim(&h[1])?, dim(&w[0])?, dim(&w[1])?])
            }
            (h, w) => {
                let (h, w) = (dim(h)?, dim(w)?);
                ok([h, h, w, w])
            }
        },
        x => {
            let p = dim(x)?;
            ok([p; 4])
        }
    }
}

fn pair_text(p: [usize; 2]) -> String {
    if p[0] == p[1] {
        p[0].to_string()
    } else {
        format!("[{}, {}]", p[0], p[1])
    }
}

/// A float as YAML reads it back exactly: `0.001`, `1.001e-5` (the mantissa always has a point).
fn float_text(x: f64) -> String {
    if x != 0.0 && x.abs() < 1e-3 {
        let s = format!("{x:e}");
        match s.split_once('e') {
            Some((m, e)) if !m.contains('.') => format!("{m}.0e{e}"),
            _ => s,
        }
    } else {
        let s = format!("{x}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    }
}

/// A name as a YAML scalar: plain when that reads back as the same string, else double-quoted. (Names
/// with braces, which the spec language takes for templates, are refused before.)
fn yaml_name(n: &str) -> String {
    let plain = n.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !matches!(n.to_ascii_lowercase().as_str(), "true" | "false" | "null");
    if plain {
        return n.to_string();
    }
    let mut s = String::from("\"");
    for c in n.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {:?}", s.chars().take(40).collect::<String>()),
        Value::Array(a) => format!("a list of {}", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_as_written() {
        assert_eq!(yaml_name("res2a_branch2a"), "res2a_branch2a");
        assert_eq!(yaml_name("conv1.x-y"), "conv1.x-y");
        assert_eq!(yaml_name("null"), "\"null\"");
        assert_eq!(yaml_name("True"), "\"True\"");
        assert_eq!(yaml_name("1st"), "\"1st\"");
        assert_eq!(yaml_name("a b"), "\"a b\"");
        assert_eq!(yaml_name("q\"\\"), "\"q\\\"\\\\\"");
    }

    #[test]
    fn floats_keep_a_point() {
        assert_eq!(float_text(1.001e-5), "1.001e-5");
        assert_eq!(float_text(1e-5), "1.0e-5");
        assert_eq!(float_text(0.01), "0.01");
        assert_eq!(float_text(2.0), "2.0");
    }

    #[test]
    fn padding_forms() {
        let p = |s: &str| padding4(&serde_json::from_str(s).unwrap());
        assert_eq!(p("3"), Some([3, 3, 3, 3]));
        assert_eq!(p("[1, 2]"), Some([1, 1, 2, 2]));
        assert_eq!(p("[[1, 2], [3, 4]]"), Some([1, 2, 3, 4]));
        assert_eq!(p("[[1, 2], [3]]"), None);
        assert_eq!(p("-1"), None);
    }
}
