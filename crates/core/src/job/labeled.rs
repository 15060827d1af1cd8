//! A finished job's grids with their row and column labels (the figures and
//! report.html use the same labels, and add titles).

use super::{JobResult, Manifest};
use ndarray::Array2;
use serde::Serialize;

/// One grid (layers x heads or layers x positions) with its row and column labels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabeledGrid {
    /// One label per row (the layer numbers).
    pub rows: Vec<String>,
    /// One label per column: head numbers, or `position token` of the first prompt.
    pub cols: Vec<String>,
    /// `[row][col]`, normalised: 1 is the whole clean-minus-corrupted difference of the metric.
    pub values: Vec<Vec<f64>>,
}

impl LabeledGrid {
    /// Whether the job computed this grid (exact patching without positions has no positions grid).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The values as a `rows x cols` array (empty when the grid is).
    pub fn to_array(&self) -> Array2<f64> {
        let (r, c) = (self.values.len(), self.values.first().map_or(0, Vec::len));
        Array2::from_shape_fn((r, c), |(i, j)| self.values[i].get(j).copied().unwrap_or(f64::NAN))
    }
}

/// Row labels: the layer numbers `0..layers`.
pub fn layer_labels(layers: usize) -> Vec<String> {
    (0..layers).map(|l| l.to_string()).collect()
}

/// Column labels of a heads grid: the head numbers.
pub fn head_labels(m: &Manifest) -> Vec<String> {
    (0..m.n_heads).map(|h| h.to_string()).collect()
}

/// Column labels of a positions grid: `position token`, with the first prompt's
/// tokens. Prompts are right-padded: position i is every prompt's i-th token;
/// positions past the first prompt have no token, only their number.
pub fn position_labels(m: &Manifest) -> Vec<String> {
    (0..m.seq_len)
        .map(|i| match m.token_labels.get(i) {
            Some(t) => format!("{i} {t}"),
            None => i.to_string(),
        })
        .collect()
}

impl JobResult {
    /// The layer x head grid (at each pair's last position); empty for hooks without heads.
    pub fn heads(&self) -> LabeledGrid {
        let g = &self.grids.heads;
        LabeledGrid { rows: layer_labels(g.len()), cols: head_labels(&self.manifest), values: g.clone() }
    }

    /// The layer x position grid; empty when the job did not compute it.
    pub fn positions(&self) -> LabeledGrid {
        let g = &self.grids.positions;
        LabeledGrid { rows: layer_labels(g.len()), cols: position_labels(&self.manifest), values: g.clone() }
    }

    /// The first prompt's tokens, one per position (empty for token ids without a tokenizer).
    pub fn token_labels(&self) -> &[String] {
        &self.manifest.token_labels
    }
}
