//! The cache key: a fingerprint of the model's content (its .onnx file and the
//! external-data files it names) and of everything that shapes the rewritten graph.

use crate::error::{Error, Result};
use crate::onnx::pb::{tensor_proto::DataLocation, ModelProto, TensorProto};
use crate::runtime::RuntimeKind;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Bumped when an entry's files or what they hold change meaning.
pub const FORMAT: u32 = 1;

/// Everything besides the model that shapes a job's rewritten graph: the job
/// kind and the graph builder's whole options struct (serialised). The key
/// hashes all of it, so a new graph-shaping option is one more field of that
/// struct and nothing here.
#[derive(Debug, Clone, Serialize)]
pub struct GraphKey {
    /// Which graph builder: "attribution", "patch", "edges", "edge-patch".
    pub job: &'static str,
    /// The builder's options as JSON.
    pub options: serde_json::Value,
}

impl GraphKey {
    /// The key part for `job`'s builder called with `options`.
    pub fn new(job: &'static str, options: &impl Serialize) -> Self {
        // Plain derived structs of enums, numbers and strings: serialising cannot fail.
        let options = serde_json::to_value(options).unwrap_or_else(|e| serde_json::Value::String(e.to_string()));
        GraphKey { job, options }
    }
}

/// One file's size and BLAKE3 hash (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHash {
    /// The file's name, relative to the model's folder.
    pub file: String,
    /// Its length in bytes.
    pub bytes: u64,
    /// BLAKE3 of its bytes, hex.
    pub blake3: String,
}

/// Hashes a file (memory-mapped when large): a multi-GB weight file at memory speed.
pub fn hash_file(path: &Path, name: &str) -> Result<FileHash> {
    let mut h = blake3::Hasher::new();
    h.update_mmap(path).map_err(|e| Error::io(path, e))?;
    let bytes = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    Ok(FileHash { file: name.to_string(), bytes, blake3: h.finalize().to_hex().to_string() })
}

/// BLAKE3 of bytes in memory, hex.
pub fn hash_bytes(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// The entry name for a model file's hash and the job's graph options: 32 hex digits.
pub fn entry_key(model: &FileHash, graph: &GraphKey, runtime: RuntimeKind) -> String {
    #[derive(Serialize)]
    struct Fields<'a> {
        format: u32,
        attrpatch: &'static str,
        // The rewritten graph names its weights' file by this name.
        model: &'a FileHash,
        runtime: String,
        graph: &'a GraphKey,
    }
    let fields = Fields {
        format: FORMAT,
        attrpatch: env!("CARGO_PKG_VERSION"),
        model,
        runtime: format!("{runtime:?}"),
        graph,
    };
    let json = serde_json::to_vec(&fields).unwrap_or_default();
    hash_bytes(&json)[..32].to_string()
}

/// The external-data files a model's tensors name (its own file excluded), sorted.
pub fn external_files(proto: &ModelProto, own_file: &str) -> Vec<String> {
    let Some(g) = &proto.graph else { return vec![] };
    let location = |t: &TensorProto| {
        (t.data_location == Some(DataLocation::External as i32))
            .then(|| t.external_data.iter().find(|e| e.key == "location").map(|e| e.value.clone()))
            .flatten()
    };
    let node_tensors = g.node.iter().flat_map(|n| n.attribute.iter().filter_map(|a| a.t.as_ref()));
    let mut files: Vec<String> =
        g.initializer.iter().chain(node_tensors).filter_map(location).filter(|f| f != own_file).collect();
    files.sort();
    files.dedup();
    files
}
