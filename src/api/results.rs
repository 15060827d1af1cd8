//! Reading a finished job's grids with their labels.

use crate::job::JobResult;
use ndarray::Array2;
use serde::Serialize;

/// One grid (layers x heads or layers x positions) with its row and column labels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabeledGrid {
    /// One label per row (the layer numbers).
    pub rows: Vec<String>,
    /// One label per column: head numbers, or `position token` of the first prompt.
    pub cols: Vec<String>,
    /// [row][col], normalised: 1 is the whole clean-minus-corrupted difference of the metric.
    pub values: Vec<Vec<f64>>,
}

impl LabeledGrid {
    fn from_report(g: crate::render::Grid) -> Self {
        LabeledGrid { rows: g.row_names, cols: g.col_names, values: g.values }
    }

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

impl JobResult {
    /// The layer x head grid (at each pair's last position); empty for hooks without heads.
    pub fn heads(&self) -> LabeledGrid {
        LabeledGrid::from_report(crate::report::heads_grid(self))
    }

    /// The layer x position grid; empty when the job did not compute it.
    pub fn positions(&self) -> LabeledGrid {
        LabeledGrid::from_report(crate::report::positions_grid(self))
    }

    /// The first prompt's tokens, one per position (empty for token ids without a tokenizer).
    pub fn token_labels(&self) -> &[String] {
        &self.manifest.token_labels
    }
}
