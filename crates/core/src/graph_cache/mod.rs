//! `--cache DIR`: the rewritten graph kept between runs, so that a second job
//! on the same model with the same graph-shaping options skips loading,
//! normalising and rewriting. An entry is keyed by the BLAKE3 hash of the
//! model's .onnx file, attrpatch's version, the runtime and the job's graph
//! options (`GraphKey`); the model's external-data files are hashed too and
//! checked on every hit. A missing, partial or damaged entry is rebuilt (with a
//! warning for the last two), never used. On the CPU the entry also keeps ONNX
//! Runtime's optimised graph (`runtime::ort_saved`). ONNX Runtime only: tract's graph
//! holds every weight inline, so its entry would be a second copy of the model.

pub mod entry;
pub mod key;

pub use key::GraphKey;

use crate::memory::ModelShape;
use crate::runtime::{ModelForRuntime, RuntimeKind};
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::pb::ModelProto;
use key::FileHash;
use prost::Message;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A rewritten graph whose metadata round-trips through JSON (its `proto` is
/// skipped there and restored from the entry's `graph.onnx`). Every job graph
/// is one (`job::JobGraph`); the cache needs only its model.
pub trait CachedGraph: Serialize + DeserializeOwned {
    /// The rewritten model, replaced by the entry's on a hit.
    fn model_mut(&mut self) -> &mut ModelProto;
}

/// What the cache did for a job's graph.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum CacheUse {
    /// No cache was asked for (or the runtime does not use one).
    #[default]
    Off,
    /// The graph came from the cache: load, normalise and rewrite were skipped.
    Hit,
    /// No entry yet: the graph was built and stored.
    Miss,
    /// An entry was there but unusable (the reason); the graph was built and stored again.
    Rebuilt {
        /// Why the entry could not be used.
        reason: String,
    },
}

impl CacheUse {
    /// A few words for the timing line ("" when off).
    pub fn label(&self) -> &'static str {
        match self {
            CacheUse::Off => "",
            CacheUse::Hit => "cache hit",
            CacheUse::Miss => "cache miss, stored",
            CacheUse::Rebuilt { .. } => "cache entry rebuilt",
        }
    }
}

/// The user's cache folder: `$XDG_CACHE_HOME/attrpatch`, else `~/.cache/attrpatch`.
pub fn default_dir() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache")))
        .ok_or_else(|| {
            Error::Input("--cache without a folder: neither XDG_CACHE_HOME nor HOME is set; give --cache DIR".into())
        })?;
    Ok(base.join("attrpatch"))
}

/// A cache folder.
#[derive(Debug, Clone)]
pub struct GraphCache {
    dir: PathBuf,
}

/// One job's place in the cache: its key and the model's files.
pub struct Probe {
    key: String,
    entry: PathBuf,
    model_dir: PathBuf,
    model_file: String,
}

/// A job's graph as restored from an entry.
pub struct Restored<G> {
    /// The rewritten graph with its metadata.
    pub graph: G,
    /// The model's content hash (the job manifest's).
    pub model_hash: String,
    /// The sizing's view of the model (`seq_len` to be set from the prompts).
    pub shape: ModelShape,
    /// What the runtime session is made from.
    pub for_runtime: ModelForRuntime,
}

/// What a lookup found.
pub enum Lookup<G> {
    /// A valid entry.
    Hit(Restored<G>),
    /// No entry.
    Miss,
    /// An unusable entry, and why.
    Invalid(String),
}

impl GraphCache {
    /// The cache in `dir` (created when the first entry is written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        GraphCache { dir: dir.into() }
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Hashes the model file and names the entry for it and `graph`.
    pub fn probe(&self, model: &Path, graph: &GraphKey, runtime: RuntimeKind) -> Result<Probe> {
        let model_file = model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let hash = key::hash_file(model, &model_file)?;
        let key = key::entry_key(&hash, graph, runtime);
        let model_dir = model.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        Ok(Probe { entry: self.dir.join(&key), key, model_dir, model_file })
    }

    /// The entry's folder.
    pub fn entry(probe: &Probe) -> &Path {
        &probe.entry
    }

    /// The entry for `probe`, checked and decoded.
    pub fn lookup<G: CachedGraph>(&self, probe: &Probe) -> Lookup<G> {
        let c = match entry::read(&probe.entry, &probe.key, &probe.model_dir) {
            entry::Read::Missing => return Lookup::Miss,
            entry::Read::Invalid(why) => return Lookup::Invalid(why),
            entry::Read::Found(c) => *c,
        };
        let proto = match ModelProto::decode(c.graph_bytes.as_slice()) {
            Ok(p) => p,
            Err(e) => return Lookup::Invalid(format!("graph.onnx is not a valid ONNX model: {e}")),
        };
        let mut graph: G = match serde_json::from_value(c.meta.graph) {
            Ok(g) => g,
            Err(e) => return Lookup::Invalid(format!("meta.json's graph metadata does not fit this job: {e}")),
        };
        let keeps_file_precision = proto.graph.as_ref().is_some_and(attrpatch_onnx::file_precision::holds_restored);
        *graph.model_mut() = proto;
        let for_runtime = ModelForRuntime {
            bytes: c.graph_bytes,
            weights: c.weights,
            external_dir: Some(probe.model_dir.clone()),
            saved_dir: Some(probe.entry.clone()),
            keeps_file_precision,
        };
        Lookup::Hit(Restored { graph, model_hash: c.meta.model_hash, shape: c.meta.shape, for_runtime })
    }

    /// Writes the entry for `probe`: the graph's metadata, the runtime's model,
    /// and the hashes of the external-data files `external` (names in the model's folder).
    pub fn store<G: CachedGraph>(
        &self,
        probe: &Probe,
        graph: &G,
        model_hash: &str,
        shape: ModelShape,
        for_runtime: &ModelForRuntime,
        external: &[String],
    ) -> Result<()> {
        let meta_graph = serde_json::to_value(graph).map_err(|e| {
            Error::Runtime(format!("the cache entry {}: the graph's metadata: {e}", probe.entry.display()))
        })?;
        let external = external
            .iter()
            .filter(|f| **f != probe.model_file)
            .map(|f| key::hash_file(&probe.model_dir.join(f), f))
            .collect::<Result<Vec<FileHash>>>()?;
        let empty = FileHash { file: String::new(), bytes: 0, blake3: String::new(), modified_ns: None };
        let meta = entry::Meta {
            format: key::FORMAT,
            key: probe.key.clone(),
            model_hash: model_hash.to_string(),
            shape,
            graph: meta_graph,
            external,
            graph_file: empty.clone(),
            weights_file: empty,
            weights: vec![],
        };
        entry::write(&probe.entry, meta, &for_runtime.bytes, &for_runtime.weights)
    }
}
