//! One cache entry on disk, a folder named by its key:
//! - `graph.onnx`: the rewritten graph as the runtime gets it (the model's own
//!   weights stay references into the model's files, so it is small);
//! - `weights.bin`: the float32 weights the rewrite handed to the runtime in
//!   memory (new ones, or ones small enough to have been read), raw little-endian;
//! - `meta.json`: the job metadata the rewrite produced, and every file's size
//!   and BLAKE3 hash (the entry's own and the model's external data).
//! - `ort-VERSION-cpu/`: ONNX Runtime's optimised graph, added by the first
//!   CPU session (`runtime::ort_saved`, which checks it itself).
//!
//! The folder is written under a temporary name and renamed whole, and every
//! file is checked against `meta.json` when read, so a partial or damaged
//! entry reads as invalid, never as a different graph.

use super::key::{hash_bytes, hash_file, FileHash, FORMAT};
use crate::memory::ModelShape;
use attrpatch_onnx::error::{Error, Result};
use ndarray::ArrayD;
use serde::{Deserialize, Serialize};
use std::path::Path;

const GRAPH_FILE: &str = "graph.onnx";
const WEIGHTS_FILE: &str = "weights.bin";
const META_FILE: &str = "meta.json";

/// Where one in-memory weight lies in `weights.bin`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WeightSlot {
    /// The initializer's name.
    pub name: String,
    /// Its shape.
    pub dims: Vec<usize>,
    /// Byte offset in `weights.bin`.
    pub offset: u64,
}

/// `meta.json`: what restoring the job needs besides the graph's bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// The entry format (`key::FORMAT`).
    pub format: u32,
    /// The entry's key (its folder name).
    pub key: String,
    /// The model's content hash as the job manifest records it.
    pub model_hash: String,
    /// What the memory sizing reads of the rewritten model (`seq_len` is the prompts').
    pub shape: ModelShape,
    /// The rewritten graph's metadata (hooks, heads, vocab, inputs, ...), without the graph.
    pub graph: serde_json::Value,
    /// The model's external-data files when the entry was written.
    pub external: Vec<FileHash>,
    /// `graph.onnx`'s size and hash.
    pub graph_file: FileHash,
    /// `weights.bin`'s size and hash.
    pub weights_file: FileHash,
    /// The weights in `weights.bin`.
    pub weights: Vec<WeightSlot>,
}

/// A valid entry's contents.
pub struct Contents {
    /// Its metadata.
    pub meta: Meta,
    /// The rewritten graph's protobuf bytes.
    pub graph_bytes: Vec<u8>,
    /// The weights handed to the runtime in memory.
    pub weights: Vec<(String, ArrayD<f32>)>,
}

/// What reading an entry found.
pub enum Read {
    /// No entry under this key.
    Missing,
    /// An entry that cannot be used, and why.
    Invalid(String),
    /// A whole entry whose model files are unchanged.
    Found(Box<Contents>),
}

/// Writes an entry: its files in a temporary folder beside `dir`, then one rename.
/// `meta`'s file hashes and weight slots are filled in here.
pub fn write(dir: &Path, mut meta: Meta, graph_bytes: &[u8], weights: &[(String, ArrayD<f32>)]) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut blob = vec![];
        meta.weights.clear();
        for (name, w) in weights {
            meta.weights.push(WeightSlot { name: name.clone(), dims: w.shape().to_vec(), offset: blob.len() as u64 });
            blob.extend(w.iter().flat_map(|v| v.to_le_bytes()));
        }
        let described = |file: &str, bytes: &[u8]| FileHash {
            file: file.into(),
            bytes: bytes.len() as u64,
            blake3: hash_bytes(bytes),
            modified_ns: None,
        };
        meta.graph_file = described(GRAPH_FILE, graph_bytes);
        meta.weights_file = described(WEIGHTS_FILE, &blob);
        let json = serde_json::to_vec_pretty(&meta)
            .map_err(|e| Error::Runtime(format!("the cache entry {}: serialising {META_FILE}: {e}", dir.display())))?;
        for (file, bytes) in [(GRAPH_FILE, graph_bytes), (WEIGHTS_FILE, &blob[..]), (META_FILE, &json[..])] {
            let path = tmp.join(file);
            std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        }
        // An entry already there was found invalid (or another process wrote the same one).
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Reads and checks the entry in `dir`, written for `key`; `model_dir` holds the
/// model's external-data files, which must still hash as they did.
pub fn read(dir: &Path, key: &str, model_dir: &Path) -> Read {
    if !dir.join(META_FILE).exists() {
        return if dir.exists() { Read::Invalid(format!("{META_FILE} is missing")) } else { Read::Missing };
    }
    match read_checked(dir, key, model_dir) {
        Ok(c) => Read::Found(Box::new(c)),
        Err(why) => Read::Invalid(why),
    }
}

fn read_checked(dir: &Path, key: &str, model_dir: &Path) -> std::result::Result<Contents, String> {
    let text = std::fs::read(dir.join(META_FILE)).map_err(|e| format!("{META_FILE}: {e}"))?;
    let meta: Meta = serde_json::from_slice(&text).map_err(|e| format!("{META_FILE}: {e}"))?;
    if meta.format != FORMAT || meta.key != key {
        return Err(format!("{META_FILE} is of format {} for key {}, not {FORMAT} for {key}", meta.format, meta.key));
    }
    for f in &meta.external {
        let path = model_dir.join(&f.file);
        if f.unchanged_at(&path) {
            continue;
        }
        let now = hash_file(&path, &f.file).map_err(|e| e.to_string())?;
        if !now.same_content(f) {
            return Err(format!("the model's external data file {} changed since the entry was written", f.file));
        }
    }
    let graph_bytes = read_file(dir, &meta.graph_file)?;
    let blob = read_file(dir, &meta.weights_file)?;
    let mut weights = vec![];
    for w in &meta.weights {
        let start = w.offset as usize;
        let end = start + 4 * w.dims.iter().product::<usize>();
        let bytes = blob.get(start..end).ok_or_else(|| format!("{WEIGHTS_FILE} is too short for '{}'", w.name))?;
        let values = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let arr = ArrayD::from_shape_vec(w.dims.clone(), values).map_err(|e| format!("weight '{}': {e}", w.name))?;
        weights.push((w.name.clone(), arr));
    }
    Ok(Contents { meta, graph_bytes, weights })
}

/// A file of the entry, checked against its recorded size and hash.
fn read_file(dir: &Path, want: &FileHash) -> std::result::Result<Vec<u8>, String> {
    let bytes = std::fs::read(dir.join(&want.file)).map_err(|e| format!("{}: {e}", want.file))?;
    if bytes.len() as u64 != want.bytes {
        return Err(format!("{} has {} bytes, {} were written", want.file, bytes.len(), want.bytes));
    }
    if hash_bytes(&bytes) != want.blake3 {
        return Err(format!("{}'s bytes differ from those written (BLAKE3 mismatch)", want.file));
    }
    Ok(bytes)
}
