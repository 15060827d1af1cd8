//! `attrpatch merge`: combines the batch files of shards (run with
//! `--shard K/N`) into the results one process would have written.

use crate::batches::{self, BatchResult};
use crate::error::{Error, Result};
use crate::job::{finish, JobResult, Manifest};
use std::path::{Path, PathBuf};

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let p = dir.join("job.json");
    let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Input(format!("{}: not an attrpatch job.json: {e}", p.display())))
}

/// Everything but the shard must agree for results to be combined.
fn same_job(a: &Manifest, b: &Manifest) -> bool {
    a.model == b.model
        && a.n_heads == b.n_heads
        && a.seq_len == b.seq_len
        && a.prompts == b.prompts
        && a.batch_size == b.batch_size
        && a.n_batches == b.n_batches
        && a.hooks == b.hooks
}

pub fn merge(dirs: &[PathBuf]) -> Result<JobResult> {
    let first = dirs.first().ok_or_else(|| Error::Input("merge needs at least one shard folder".into()))?;
    let mut manifest = read_manifest(first)?;
    for d in &dirs[1..] {
        if !same_job(&manifest, &read_manifest(d)?) {
            return Err(Error::Input(format!(
                "{} and {} are parts of different jobs (model, prompts, batch size or hooks differ)",
                first.display(),
                d.display()
            )));
        }
    }
    let mut batches: Vec<BatchResult> = vec![];
    for i in 0..manifest.n_batches {
        let found: Vec<PathBuf> = dirs.iter().map(|d| batches::path(d, i)).filter(|p| p.is_file()).collect();
        let file = found.first().ok_or_else(|| {
            Error::Input(format!(
                "batch {i} of {} is in none of the shard folders; did every shard finish?",
                manifest.n_batches
            ))
        })?;
        let b = BatchResult::load(file)?;
        if b.index != i {
            return Err(Error::Input(format!("{}: holds batch {}, expected {i}", file.display(), b.index)));
        }
        batches.push(b);
    }
    manifest.shard = None;
    finish(manifest, &batches)
}
