//! Loading a model file into memory as one self-contained `ModelProto`.

use super::pb::ModelProto;
use super::{external, scopes};
use crate::error::{Error, Result};
use prost::Message;
use std::path::{Path, PathBuf};

/// A loaded model: the protobuf with external data inlined, plus what the
/// protobuf bindings drop (node scopes from IR-10 metadata).
pub struct OnnxModel {
    /// The model file (for a model given in memory, the path it was given to name it).
    pub path: PathBuf,
    /// The protobuf, normalised; external data inlined, except for the weights `load_leaving_weights` leaves.
    pub proto: ModelProto,
    /// Default-domain opset version (after normalisation: 11 and 12 become 13).
    pub opset: i64,
    /// `node name -> module scopes` recorded by the dynamo exporter.
    pub scopes: scopes::NodeScopes,
    /// Whether the file kept tensors in external data files (`rewrite` then does too).
    pub had_external_data: bool,
}

impl OnnxModel {
    /// Reads a model file, streaming its weights (see `io`).
    pub fn load(path: &Path) -> Result<Self> {
        check_model_path(path)?;
        let (proto, scopes) = super::io::read_model(path)?;
        Self::from_proto(proto, scopes, path)
    }

    /// As `load`, but the float32 weights are not read: they stay external-data
    /// references into the model file (and its data files), checked, for ONNX
    /// Runtime to read itself (`ModelForRuntime::external_dir`). The rewrite never
    /// needs their values, so the process never holds a copy of them.
    pub fn load_leaving_weights(path: &Path) -> Result<Self> {
        check_model_path(path)?;
        let (proto, scopes) = super::io::read_model_leaving_weights(path)?;
        let graph = proto.graph.as_ref().ok_or_else(|| no_graph(path))?;
        let own = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let files = external::check_external_data(graph, model_dir(path), path)?;
        let mut m = Self::from_proto_with(proto, scopes, path, false)?;
        m.had_external_data = files.iter().any(|f| *f != own);
        Ok(m)
    }

    /// The folder external data paths are relative to.
    pub fn dir(&self) -> &Path {
        model_dir(&self.path)
    }

    /// A model from bytes in memory; `path` names it in messages and locates external data.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let proto = ModelProto::decode(bytes).map_err(|e| {
            Error::Model(format!("{}: not a valid ONNX model (protobuf decoding failed: {e})", path.display()))
        })?;
        Self::from_proto(proto, scopes::NodeScopes::decode(bytes), path)
    }

    /// A decoded protobuf (node scopes, which the protobuf bindings drop, are
    /// not known); `path` names it in messages and locates external data.
    pub fn from_model_proto(proto: ModelProto, path: &Path) -> Result<Self> {
        Self::from_proto(proto, scopes::NodeScopes::default(), path)
    }

    fn from_proto(proto: ModelProto, scopes: scopes::NodeScopes, path: &Path) -> Result<Self> {
        Self::from_proto_with(proto, scopes, path, true)
    }

    fn from_proto_with(mut proto: ModelProto, scopes: scopes::NodeScopes, path: &Path, inline: bool) -> Result<Self> {
        let graph = proto.graph.as_mut().ok_or_else(|| no_graph(path))?;
        if graph.node.is_empty() {
            return Err(Error::Model(format!("{}: the ONNX graph has no nodes", path.display())));
        }
        check_declared_sizes(graph, path)?;
        let had_external_data = inline && external::inline_external_data(graph, model_dir(path), path)?;
        let opset = default_opset(&proto)
            .ok_or_else(|| Error::Model(format!("{}: the model imports no default-domain opset", path.display())))?;
        // Opsets 11 and 12 are upgraded there; older ones are refused there.
        let opset = crate::normalize::normalize(&mut proto, opset, path)?;
        Ok(OnnxModel { path: path.to_path_buf(), proto, opset, scopes, had_external_data })
    }

    /// The model's main graph (a model without one is refused at load).
    pub fn graph(&self) -> &super::pb::GraphProto {
        self.proto.graph.as_ref().expect("checked at load")
    }
}

fn no_graph(path: &Path) -> Error {
    Error::Model(format!("{}: the ONNX model has no graph (is this an ONNX model file?)", path.display()))
}

/// The folder a model's external data paths are relative to.
pub(crate) fn model_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The version of the default-domain opset (domain `""` or `ai.onnx`) the model imports; None if it imports none.
pub fn default_opset(proto: &ModelProto) -> Option<i64> {
    proto.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map(|o| o.version)
}

/// Every inline tensor's bytes must match its declared shape and type: a
/// tensor claiming 10^12 elements over a few bytes is refused here, before
/// anything (tract, ONNX Runtime) allocates for it.
fn check_declared_sizes(g: &super::pb::GraphProto, path: &Path) -> Result<()> {
    for t in &g.initializer {
        if t.dims.iter().any(|&d| d < 0) {
            return Err(Error::Model(format!(
                "{}: tensor '{}' has a negative dimension {:?}",
                path.display(),
                t.name,
                t.dims
            )));
        }
        if t.raw_data.is_empty() {
            continue;
        }
        let elems = t.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let size = super::consts::elem_size(t.data_type);
        let expected = elems.zip(size).and_then(|(e, s)| e.checked_mul(s));
        if let Some(exp) = expected {
            if exp != t.raw_data.len() as u64 {
                return Err(Error::Model(format!(
                    "{}: tensor '{}' declares shape {:?} ({exp} bytes) but holds {} bytes",
                    path.display(),
                    t.name,
                    t.dims,
                    t.raw_data.len()
                )));
            }
        } else if elems.is_none() {
            return Err(Error::Model(format!(
                "{}: tensor '{}' declares an absurd shape {:?}",
                path.display(),
                t.name,
                t.dims
            )));
        }
    }
    Ok(())
}

/// Common misuse of a model path, said in words before any parsing: a folder
/// (name the .onnx files inside), or the external-data file beside a model.
fn check_model_path(path: &Path) -> Result<()> {
    if path.is_dir() {
        let mut onnx: Vec<String> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".onnx"))
            .collect();
        onnx.sort();
        let found = if onnx.is_empty() { "no .onnx file".to_string() } else { onnx.join(", ") };
        return Err(Error::Input(format!(
            "{}: is a folder; pass the .onnx file inside it (found: {found})",
            path.display()
        )));
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    if name.ends_with(".onnx.data") || name.ends_with(".onnx_data") || (name.ends_with(".data") && path.is_file()) {
        let stem = name.trim_end_matches(".data").trim_end_matches("_data");
        return Err(Error::Input(format!(
            "{}: this is an external-data file (the weights of a model); pass the .onnx file that refers to it{}",
            path.display(),
            if stem.ends_with(".onnx") { format!(" ({stem})") } else { String::new() }
        )));
    }
    Ok(())
}
