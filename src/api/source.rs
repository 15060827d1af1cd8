//! Where a model and a tokenizer come from: a file, bytes in memory (e.g.
//! Python's `onnx.ModelProto.SerializeToString()`) or a decoded protobuf.

use attrpatch_core::job::LoadedModel;
use attrpatch_core::runtime::RuntimeKind;
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::pb::ModelProto;
use attrpatch_onnx::OnnxModel;
use std::path::{Path, PathBuf};

pub use attrpatch_onnx::IN_MEMORY_MODEL;

/// An ONNX model: a file path, serialised bytes, or a decoded `ModelProto`.
#[derive(Clone)]
pub enum ModelSource {
    /// A `.onnx` file (external data is read from beside it).
    Path(PathBuf),
    /// A serialised `ModelProto`.
    Bytes(Vec<u8>),
    /// A decoded `ModelProto`.
    Proto(Box<ModelProto>),
}

impl From<&Path> for ModelSource {
    fn from(p: &Path) -> Self {
        ModelSource::Path(p.to_path_buf())
    }
}

impl From<PathBuf> for ModelSource {
    fn from(p: PathBuf) -> Self {
        ModelSource::Path(p)
    }
}

impl From<&PathBuf> for ModelSource {
    fn from(p: &PathBuf) -> Self {
        ModelSource::Path(p.clone())
    }
}

impl From<&str> for ModelSource {
    /// A path given as text.
    fn from(p: &str) -> Self {
        ModelSource::Path(PathBuf::from(p))
    }
}

impl From<Vec<u8>> for ModelSource {
    fn from(b: Vec<u8>) -> Self {
        ModelSource::Bytes(b)
    }
}

impl From<&[u8]> for ModelSource {
    fn from(b: &[u8]) -> Self {
        ModelSource::Bytes(b.to_vec())
    }
}

impl From<ModelProto> for ModelSource {
    fn from(p: ModelProto) -> Self {
        ModelSource::Proto(Box::new(p))
    }
}

impl ModelSource {
    /// The path that names the model in messages and results: the file, or
    /// `IN_MEMORY_MODEL` for a model given in memory.
    pub fn name(&self) -> PathBuf {
        match self {
            ModelSource::Path(p) => p.clone(),
            _ => PathBuf::from(IN_MEMORY_MODEL),
        }
    }

    /// The model loaded and normalised, with every weight in memory.
    pub(crate) fn load(&self) -> Result<OnnxModel> {
        let name = self.name();
        match self {
            ModelSource::Path(p) => OnnxModel::load(p),
            ModelSource::Bytes(b) => OnnxModel::from_bytes(b, &name),
            ModelSource::Proto(p) => OnnxModel::from_model_proto((**p).clone(), &name),
        }
    }

    /// The model loaded for a job on `runtime`: a file for ONNX Runtime keeps
    /// its float32 weights in the file (ONNX Runtime reads them itself).
    pub(crate) fn load_for_job(&self, runtime: RuntimeKind) -> Result<LoadedModel> {
        match (self, runtime) {
            (ModelSource::Path(p), RuntimeKind::Ort) => LoadedModel::read_leaving_weights(p),
            _ => LoadedModel::in_memory(self.load()?),
        }
    }

    /// The tokenizer.json beside a model file; None for a model in memory.
    pub(crate) fn default_tokenizer(&self) -> Option<PathBuf> {
        match self {
            ModelSource::Path(p) => Some(attrpatch_core::job::default_tokenizer(p)),
            _ => None,
        }
    }
}

/// A HuggingFace `tokenizer.json`: a file or its bytes.
#[derive(Clone, Debug)]
pub enum TokenizerSource {
    /// A `tokenizer.json` file.
    Path(PathBuf),
    /// The contents of a `tokenizer.json` file.
    Bytes(Vec<u8>),
}

impl From<&Path> for TokenizerSource {
    fn from(p: &Path) -> Self {
        TokenizerSource::Path(p.to_path_buf())
    }
}

impl From<PathBuf> for TokenizerSource {
    fn from(p: PathBuf) -> Self {
        TokenizerSource::Path(p)
    }
}

impl From<&str> for TokenizerSource {
    /// A path given as text.
    fn from(p: &str) -> Self {
        TokenizerSource::Path(PathBuf::from(p))
    }
}

impl From<Vec<u8>> for TokenizerSource {
    fn from(b: Vec<u8>) -> Self {
        TokenizerSource::Bytes(b)
    }
}

impl TokenizerSource {
    /// The tokenizer's bytes (read from its file, or as given).
    pub(crate) fn bytes(&self) -> Result<Vec<u8>> {
        match self {
            TokenizerSource::Path(p) => std::fs::read(p).map_err(|e| Error::io(p, e)),
            TokenizerSource::Bytes(b) => Ok(b.clone()),
        }
    }

    /// How messages name it.
    pub(crate) fn label(&self) -> String {
        match self {
            TokenizerSource::Path(p) => p.display().to_string(),
            TokenizerSource::Bytes(_) => "<in-memory tokenizer.json>".into(),
        }
    }
}
