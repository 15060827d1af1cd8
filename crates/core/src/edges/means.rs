//! The data set's mean writer activations for `--ablation mean|mean-positional`:
//! summed over the pairs' real (unpadded) positions of the corrupted prompts in
//! a first pass, then fed to every batch as the graph's `ABLATION` input.

use super::convention::Ablation;
use attrpatch_onnx::error::{Error, Result};
use ndarray::{Array3, ArrayD};

/// Running sums of every writer's corrupted activation per position.
#[derive(Debug, Clone)]
pub struct WriterMeans {
    writers: usize,
    d: usize,
    /// [writer][position][d], positions grown to the longest pair seen.
    sums: Vec<Vec<Vec<f64>>>,
    /// Pairs that reach each position.
    counts: Vec<usize>,
}

impl WriterMeans {
    /// Empty sums for `writers` writers of width `d`.
    pub fn new(writers: usize, d: usize) -> Self {
        WriterMeans { writers, d, sums: vec![vec![]; writers], counts: vec![] }
    }

    /// Adds one batch's `CORRUPTED_WRITERS` ([writers, B*S*d], rows in (pair, position, d)
    /// order), pair p counted at its positions below `lengths[p]`.
    pub fn add(&mut self, rows: &ArrayD<f32>, lengths: &[usize], seq: usize) -> Result<()> {
        let (u, d, b) = (self.writers, self.d, lengths.len());
        if rows.len() != u * b * seq * d {
            return Err(Error::Runtime(format!(
                "the corrupted writers have {} values, expected {u} x {b} x {seq} x {d}",
                rows.len()
            )));
        }
        let flat: Vec<f32> = rows.iter().copied().collect();
        let longest = lengths.iter().copied().max().unwrap_or(0);
        if self.counts.len() < longest {
            self.counts.resize(longest, 0);
            for w in self.sums.iter_mut() {
                w.resize(longest, vec![0.0; d]);
            }
        }
        for (p, &len) in lengths.iter().enumerate() {
            for s in 0..len {
                self.counts[s] += 1;
            }
            for (w, sums) in self.sums.iter_mut().enumerate() {
                for (s, acc) in sums.iter_mut().enumerate().take(len) {
                    let at = ((w * b + p) * seq + s) * d;
                    for (a, v) in acc.iter_mut().zip(&flat[at..at + d]) {
                        *a += *v as f64;
                    }
                }
            }
        }
        Ok(())
    }

    /// The `ABLATION` input of a batch of `seq` positions: per position (mean-positional)
    /// or one mean over every pair and real position (mean), [writers, seq, d].
    pub fn input(&self, ablation: Ablation, seq: usize) -> Result<Array3<f32>> {
        let total: usize = self.counts.iter().sum();
        if total == 0 {
            return Err(Error::Input("--ablation mean: the prompt set has no positions to average".into()));
        }
        let (u, d) = (self.writers, self.d);
        let mut out = Array3::<f32>::zeros((u, seq, d));
        for (w, sums) in self.sums.iter().enumerate() {
            let overall: Vec<f64> = (0..d).map(|k| sums.iter().map(|row| row[k]).sum::<f64>() / total as f64).collect();
            for s in 0..seq {
                for k in 0..d {
                    out[[w, s, k]] = match ablation {
                        // A position no pair reaches is never a real position of a batch.
                        Ablation::MeanPositional if s < self.counts.len() && self.counts[s] > 0 => {
                            (sums[s][k] / self.counts[s] as f64) as f32
                        }
                        Ablation::MeanPositional => 0.0,
                        _ => overall[k] as f32,
                    };
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_skip_padding() {
        // 1 writer, d = 1, two pairs of lengths 2 and 1, seq 2: pair 1's position 1 is padding.
        let rows = ndarray::Array1::from(vec![1.0f32, 3.0, 5.0, 100.0]).into_dyn();
        let mut m = WriterMeans::new(1, 1);
        m.add(&rows, &[2, 1], 2).unwrap();
        let pos = m.input(Ablation::MeanPositional, 2).unwrap();
        assert_eq!(pos.iter().copied().collect::<Vec<_>>(), vec![3.0, 3.0]);
        let all = m.input(Ablation::Mean, 2).unwrap();
        assert_eq!(all.iter().copied().collect::<Vec<_>>(), vec![3.0, 3.0]);
        let rows = ndarray::Array1::from(vec![2.0f32, 4.0]).into_dyn();
        m.add(&rows, &[2], 2).unwrap();
        let pos = m.input(Ablation::MeanPositional, 2).unwrap();
        assert_eq!(pos.iter().copied().collect::<Vec<_>>(), vec![8.0 / 3.0, 3.5]);
        let all = m.input(Ablation::Mean, 2).unwrap();
        assert_eq!(all.iter().copied().collect::<Vec<_>>(), vec![3.0, 3.0]);
    }
}
