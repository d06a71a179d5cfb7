//! The front end's resource limits: how large a spec may be, how far its blocks may expand, and how large
//! the model it describes may be (parameters, activations).
//!
//! They guard against hostile or runaway specs (a `repeat` inside a `repeat`, blocks nested thousands
//! deep, names that grow along a chain) so that `resnetc check` answers in bounded time and memory with
//! an error naming the limit. The defaults are far above any real ResNet (ResNet-152 expands to 517
//! nodes, two block levels, names under 30 bytes); a model that needs more raises them with the
//! `RESNETC_MAX_*` environment variables, or a library user with [`crate::Options::limits`]. The README's
//! "Limits" table lists every limit with the error a user sees.

/// Limits on a spec and its expansion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest spec file, in bytes (checked before it is read).
    pub max_spec_bytes: u64,
    /// The most nodes the spec may expand to (nodes written in blocks count once per instance). The
    /// expanded node fields may also total at most [`Limits::max_expanded_bytes`].
    pub max_nodes: usize,
    /// How deeply blocks may use blocks.
    pub max_block_depth: usize,
    /// The longest node name (and reference), in bytes.
    pub max_name_len: usize,
    /// The most parameters (weights, float32) the whole model may have: a spec that asks for more would
    /// make `compile` and `run` allocate them (and their packed copies) before anything else fails.
    pub max_params: u64,
    /// The most bytes all the model's activations (every node's output, float32) may take per batch
    /// item together: a bound on the memory plan's arena, whatever the order of the nodes.
    pub max_activation_bytes: u64,
}

/// The environment variable that overrides each limit, with the field it sets.
const VARS: [(&str, Field); 6] = [
    ("RESNETC_MAX_SPEC_BYTES", Field::SpecBytes),
    ("RESNETC_MAX_NODES", Field::Nodes),
    ("RESNETC_MAX_BLOCK_DEPTH", Field::BlockDepth),
    ("RESNETC_MAX_NAME_LEN", Field::NameLen),
    ("RESNETC_MAX_PARAMS", Field::Params),
    ("RESNETC_MAX_ACTIVATION_BYTES", Field::ActivationBytes),
];

#[derive(Clone, Copy)]
enum Field {
    SpecBytes,
    Nodes,
    BlockDepth,
    NameLen,
    Params,
    ActivationBytes,
}

/// Bytes of node fields allowed per node of the node limit, on average (see [`Limits::max_expanded_bytes`]).
const BYTES_PER_NODE: usize = 2048;
/// Deeper block nesting than this would risk the stack, whatever the environment asks for.
const HARD_MAX_BLOCK_DEPTH: usize = 1000;

impl Default for Limits {
    /// The built-in limits (without environment overrides).
    fn default() -> Self {
        Limits {
            max_spec_bytes: 16 << 20,
            max_nodes: 100_000,
            max_block_depth: 64,
            max_name_len: 256,
            // 1 Gi parameters (4 GiB of float32; ResNet-152 has 60 M) and 16 GiB of activations per image
            // (ResNet-50's total 43 MB).
            max_params: 1 << 30,
            max_activation_bytes: 16 << 30,
        }
    }
}

impl Limits {
    /// The built-in limits with the `RESNETC_MAX_*` environment variables applied; a variable that is
    /// not a positive integer is an error naming it.
    pub fn from_env() -> Result<Limits, String> {
        let mut l = Limits::default();
        for (var, field) in VARS {
            let Some(raw) = std::env::var_os(var) else { continue };
            let text = raw.to_string_lossy();
            let v: u64 = match text.trim().parse::<u64>() {
                Ok(v) if v > 0 => v,
                _ => return Err(format!("the environment variable {var} must be a positive integer, found `{text}`")),
            };
            let v_usize = usize::try_from(v).unwrap_or(usize::MAX);
            match field {
                Field::SpecBytes => l.max_spec_bytes = v,
                Field::Nodes => l.max_nodes = v_usize,
                Field::BlockDepth if v_usize > HARD_MAX_BLOCK_DEPTH => {
                    return Err(format!("{var} can be at most {HARD_MAX_BLOCK_DEPTH}, found {v}"));
                }
                Field::BlockDepth => l.max_block_depth = v_usize,
                Field::NameLen => l.max_name_len = v_usize,
                Field::Params => l.max_params = v,
                Field::ActivationBytes => l.max_activation_bytes = v,
            }
        }
        Ok(l)
    }

    /// The total size of the node fields the blocks may expand to (64 bytes per value plus the text of
    /// strings, about what they take in memory): 2 KiB per node of the node limit (a ResNet node takes
    /// about 1 KiB), so raising that raises this too. It bounds the time and memory spent on a node with
    /// a huge field inside a block that is used many times, or on arguments that double at every level.
    pub fn max_expanded_bytes(&self) -> usize {
        self.max_nodes.saturating_mul(BYTES_PER_NODE)
    }

    /// How to raise a limit, for messages: "set RESNETC_MAX_NODES=N (or Options::limits) if a real
    /// model needs more".
    pub fn how_to_raise(&self, what: Limit) -> String {
        let var = VARS[what as usize].0;
        format!("if a real model needs more, raise it with the environment variable {var} (or `Options::limits`)")
    }
}

/// One of the configurable limits, for [`Limits::how_to_raise`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    SpecBytes = 0,
    Nodes = 1,
    BlockDepth = 2,
    NameLen = 3,
    Params = 4,
    ActivationBytes = 5,
}

/// Reads a spec file, refusing what is not a regular file (a directory, a device such as /dev/zero, a
/// fifo) or is larger than `max_bytes`, before reading it; a file that grows while it is read is cut at
/// the limit and refused too.
pub fn read_spec_file(path: &std::path::Path, limits: &Limits) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    let meta = std::fs::metadata(path)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() { "a directory" } else { "not a regular file (a device, fifo or socket)" };
        return Err(Error::new(ErrorKind::InvalidInput, format!("this is {what}, not a YAML spec file")));
    }
    let too_large = |size: String| {
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "the spec is {size} bytes, more than the limit of {} bytes for a spec file; {}",
                crate::report::thousands(limits.max_spec_bytes),
                limits.how_to_raise(Limit::SpecBytes)
            ),
        )
    };
    if meta.len() > limits.max_spec_bytes {
        return Err(too_large(crate::report::thousands(meta.len())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)?.take(limits.max_spec_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limits.max_spec_bytes {
        return Err(too_large(format!("more than {}", crate::report::thousands(limits.max_spec_bytes))));
    }
    Ok(bytes)
}
