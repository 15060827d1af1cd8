//! `attrpatch merge`: combines the batch files of shards (run with
//! `--shard K/N`) into the results one process would have written.

use crate::batches::{self, BatchResult};
use crate::job::{finish, JobResult, Manifest};
use attrpatch_onnx::error::{Error, Result};
use std::path::{Path, PathBuf};

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let p = dir.join("job.json");
    let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Input(format!("{}: not an attrpatch job.json: {e}", p.display())))
}

/// The shards must be parts of one job: every identity field of their
/// job.json agrees (model content, tokenizer, token ids, BOS, metric, hooks,
/// heads, method, batch layout); the first that does not is named.
fn check_same_job(first: (&Path, &Manifest), other: (&Path, &Manifest)) -> Result<()> {
    match first.1.first_difference(other.1) {
        None => Ok(()),
        Some((field, a, b)) => Err(Error::Input(format!(
            "{} and {} are parts of different jobs: their {field} differs ({a} vs {b}); merge only the shards of \
             one run (same model, tokenizer, prompts, --bos, --metric, --hook, --heads, --batch-size)",
            first.0.display(),
            other.0.display()
        ))),
    }
}

/// The file of batch `i`: the one among the shard folders whose key is this
/// job's (a folder can hold stale batch files of an earlier, different run).
fn batch_file(dirs: &[PathBuf], manifest: &Manifest, i: usize) -> Result<BatchResult> {
    let key = manifest.batch_key(i);
    let found: Vec<PathBuf> = dirs.iter().map(|d| batches::path(d, i)).filter(|p| p.is_file()).collect();
    if found.is_empty() {
        return Err(Error::Input(format!(
            "batch {i} of {} is in none of the shard folders; did every shard finish?",
            manifest.n_batches
        )));
    }
    for file in &found {
        let b = BatchResult::load(file)?;
        if b.index == i && b.key == key {
            return Ok(b);
        }
    }
    Err(Error::Input(format!(
        "{}: batch {i} was computed by a different job (its key does not match the shards' job.json); rerun that shard",
        found[0].display()
    )))
}

/// Combines the output folders of `run --shard K/N` into the result of one run.
pub fn merge(dirs: &[PathBuf]) -> Result<JobResult> {
    let first = dirs.first().ok_or_else(|| Error::Input("merge needs at least one shard folder".into()))?;
    let mut manifest = read_manifest(first)?;
    for d in &dirs[1..] {
        check_same_job((first, &manifest), (d, &read_manifest(d)?))?;
    }
    let batches = (0..manifest.n_batches).map(|i| batch_file(dirs, &manifest, i)).collect::<Result<Vec<_>>>()?;
    manifest.shard = None;
    finish(manifest, &batches)
}
