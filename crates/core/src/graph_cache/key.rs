//! The cache key: a fingerprint of the model's content (its .onnx file and the
//! external-data files it names) and of everything that shapes the rewritten graph.

use crate::runtime::RuntimeKind;
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::pb::{tensor_proto::DataLocation, ModelProto, TensorProto};
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
    /// Its modification time when hashed (ns since the epoch): while the file keeps
    /// this time and length, it is not hashed again (the model's GBs of external data).
    #[serde(default)]
    pub modified_ns: Option<u128>,
}

impl FileHash {
    /// Whether `path` still has the modification time and length this hash was taken at.
    pub fn unchanged_at(&self, path: &Path) -> bool {
        self.modified_ns.is_some()
            && modified_ns(path).is_some_and(|(m, len)| Some(m) == self.modified_ns && len == self.bytes)
    }

    /// The same content (length and hash).
    pub fn same_content(&self, other: &FileHash) -> bool {
        self.bytes == other.bytes && self.blake3 == other.blake3
    }
}

/// A file's modification time (ns since the epoch) and length.
fn modified_ns(path: &Path) -> Option<(u128, u64)> {
    let m = std::fs::metadata(path).ok()?;
    let t = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some((t.as_nanos(), m.len()))
}

/// Hashes a file (memory-mapped when large): a multi-GB weight file at memory speed.
pub fn hash_file(path: &Path, name: &str) -> Result<FileHash> {
    // Taken before reading: a write during the hash leaves a time that will not match later.
    let stamp = modified_ns(path);
    let mut h = blake3::Hasher::new();
    h.update_mmap(path).map_err(|e| Error::io(path, e))?;
    let bytes = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    let modified_ns = stamp.filter(|&(_, len)| len == bytes).map(|(m, _)| m);
    Ok(FileHash { file: name.to_string(), bytes, blake3: h.finalize().to_hex().to_string(), modified_ns })
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
        // The rewritten graph names its weights' file by this name; its time is no part of the key.
        model: (&'a str, u64, &'a str),
        runtime: String,
        graph: &'a GraphKey,
    }
    let fields = Fields {
        format: FORMAT,
        attrpatch: env!("CARGO_PKG_VERSION"),
        model: (&model.file, model.bytes, &model.blake3),
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
