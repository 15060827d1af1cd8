//! Prompt pairs in batches, and what each batch leaves behind.
//!
//! A batch's result holds sums that do not depend on the rest of the data
//! set: the attribution of the *sum of its pairs' corrupted logit
//! differences* (the gradient graph's normalisation undone), and the sums of
//! the logit differences. The data set's normalised grids are
//! sum / (N * (CLEAN - CORR)), computed once every batch is in. Batches are
//! summed in index order, so a sharded run merged afterwards gives exactly
//! the numbers of a single process, and an interrupted job resumes from the
//! batch files it already wrote.

use crate::grids::{add_into, PairGrid};
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::fsutil::write_atomic;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One pair's raw metric values and attribution grid (not normalised).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairResult {
    /// Index of the pair in the prompt set.
    pub index: usize,
    /// This pair's metric (the chosen one: logit difference, probability, ...) on the clean prompt.
    #[serde(alias = "clean_logit_diff")]
    pub clean_metric: f64,
    /// This pair's metric on the corrupted prompt.
    #[serde(alias = "corrupted_logit_diff")]
    pub corrupted_metric: f64,
    /// Attribution of this pair's corrupted logit difference (not normalised).
    pub grid: PairGrid,
}

/// One batch's sums and per-pair values, as saved in `batches/batch-NNNNNN.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchResult {
    /// The batch's index: its place in the summing order and its file name.
    pub index: usize,
    /// Fingerprint of the batch's inputs; a resumed job reuses a file only when it matches.
    pub key: String,
    /// Index in the prompt set of the batch's first pair (0 for an empty batch).
    pub first_pair: usize,
    /// How many pairs the batch holds.
    pub pairs: usize,
    /// Sum over the batch's pairs of their clean metric.
    #[serde(alias = "sum_clean_logit_diff")]
    pub sum_clean_metric: f64,
    /// Sum over the batch's pairs of their corrupted metric.
    #[serde(alias = "sum_corrupted_logit_diff")]
    pub sum_corrupted_metric: f64,
    /// Sums over the batch's pairs of their `PairResult::grid`.
    pub heads: Vec<Vec<f64>>,
    /// The same sums for the positions grid.
    pub positions: Vec<Vec<f64>>,
    /// Per pair, when asked for.
    pub per_pair: Vec<PairResult>,
    /// Each pair's raw clean and corrupted metric, always (two numbers a pair):
    /// the baseline checks (`sanity`) need their spread, not only their sums.
    #[serde(default)]
    pub clean_values: Vec<f64>,
    /// Each pair's raw corrupted metric, in pair order (see `clean_values`).
    #[serde(default)]
    pub corrupted_values: Vec<f64>,
}

impl BatchResult {
    /// Sums `pairs` (which must all have grids of one shape).
    pub fn new(index: usize, key: String, pairs: Vec<PairResult>, keep_pairs: bool) -> Result<Self> {
        let mut b = BatchResult {
            index,
            key,
            first_pair: pairs.first().map_or(0, |p| p.index),
            pairs: pairs.len(),
            sum_clean_metric: 0.0,
            sum_corrupted_metric: 0.0,
            heads: vec![],
            positions: vec![],
            per_pair: vec![],
            clean_values: pairs.iter().map(|p| p.clean_metric).collect(),
            corrupted_values: pairs.iter().map(|p| p.corrupted_metric).collect(),
        };
        for p in &pairs {
            b.sum_clean_metric += p.clean_metric;
            b.sum_corrupted_metric += p.corrupted_metric;
            add_into(&mut b.heads, &p.grid.heads, &format!("pair {} heads", p.index))?;
            add_into(&mut b.positions, &p.grid.positions, &format!("pair {} positions", p.index))?;
        }
        if keep_pairs {
            b.per_pair = pairs;
        }
        Ok(b)
    }

    /// Writes the batch to `dir`/batches/batch-NNNNNN.json, atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let d = dir.join("batches");
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        let text =
            serde_json::to_vec(self).map_err(|e| Error::Runtime(format!("serialising batch {}: {e}", self.index)))?;
        write_atomic(&path(dir, self.index), &text)
    }

    /// Reads a batch file written by `save`.
    pub fn load(file: &Path) -> Result<Self> {
        let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Input(format!("{}: not a batch result: {e}", file.display())))
    }
}

/// The file of batch `index` in the job folder `dir`: batches/batch-NNNNNN.json.
pub fn path(dir: &Path, index: usize) -> PathBuf {
    dir.join("batches").join(format!("batch-{index:06}.json"))
}

/// A finished batch from an earlier, interrupted run of the same job: its
/// key (`job::Manifest::batch_key`) covers everything that decides its numbers.
pub fn resumable(dir: &Path, index: usize, key: &str) -> Option<BatchResult> {
    let p = path(dir, index);
    let b = BatchResult::load(&p).ok()?;
    (b.key == key && b.index == index).then_some(b)
}

/// FNV-1a over everything that decides a batch's numbers.
pub fn fingerprint(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for part in parts {
        for &b in part.iter().chain(&[0xff]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    format!("{h:016x}")
}

/// Sums over batches, in index order.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    /// Pairs summed so far.
    pub pairs: usize,
    /// Sum of the pairs' clean metric.
    pub sum_clean: f64,
    /// Sum of the pairs' corrupted metric.
    pub sum_corrupted: f64,
    /// Summed heads grids, `[layer][head]`, not normalised.
    pub heads: Vec<Vec<f64>>,
    /// Summed positions grids, `[layer][position]`, not normalised.
    pub positions: Vec<Vec<f64>>,
}

impl Totals {
    /// Adds a batch's sums; a batch whose grids have another shape is refused.
    pub fn add(&mut self, b: &BatchResult) -> Result<()> {
        add_into(&mut self.heads, &b.heads, &format!("batch {} heads", b.index))?;
        add_into(&mut self.positions, &b.positions, &format!("batch {} positions", b.index))?;
        self.pairs += b.pairs;
        self.sum_clean += b.sum_clean_metric;
        self.sum_corrupted += b.sum_corrupted_metric;
        Ok(())
    }

    /// The mean clean metric (CLEAN); NaN before any pair is added.
    pub fn clean(&self) -> f64 {
        self.sum_clean / self.pairs as f64
    }
    /// The mean corrupted metric (CORR); NaN before any pair is added.
    pub fn corrupted(&self) -> f64 {
        self.sum_corrupted / self.pairs as f64
    }

    /// The factor turning summed attributions of logit differences into the
    /// tutorial's normalised metric: 1 / (N * (CLEAN - CORR)).
    pub fn normaliser(&self) -> Result<f64> {
        let (clean, corr) = (self.clean(), self.corrupted());
        if !clean.is_finite() || !corr.is_finite() {
            return Err(Error::Numeric(format!(
                "the baselines are not finite (clean logit diff {clean}, corrupted {corr})"
            )));
        }
        if indistinguishable(clean, corr) {
            return Err(Error::Numeric(format!(
                "the clean and corrupted logit differences are equal ({clean} and {corr}, within float32 precision); \
                 the normalised metric (ld - corrupted) / (clean - corrupted) divides by their difference. Check that \
                 the corrupted prompts differ from the clean ones and that the answers are right"
            )));
        }
        Ok(1.0 / (self.pairs as f64 * (clean - corr)))
    }
}

/// Two baselines too close for their difference to mean anything: the two
/// copies of the graph can round identical prompts differently.
pub fn indistinguishable(clean: f64, corr: f64) -> bool {
    (clean - corr).abs() <= 1e-5 * clean.abs().max(corr.abs())
}
