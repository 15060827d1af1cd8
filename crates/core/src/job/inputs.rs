//! What goes into a run of a job's graph (token inputs, one-hot selectors)
//! and the per-row grids that come out of it.

use crate::augment::names;
use crate::grids::first_non_finite;
use crate::hooks::Hook;
use crate::prompts::TokenizedPrompts;
use crate::runtime::{self, Value};
use attrpatch_onnx::error::{Error, Result};
use ndarray::{Array2, Array3, ArrayD};
use std::collections::HashMap;

/// A graph's token inputs (clean and corrupted names of each model input).
pub struct TokenInputs<'a> {
    /// The token-id input.
    pub ids: &'a crate::augment::TokenInput,
    /// The attention-mask input, when the graph has one.
    pub mask: Option<&'a crate::augment::TokenInput>,
    /// The position-ids input, when the graph has one.
    pub positions: Option<&'a crate::augment::TokenInput>,
    /// Vocabulary size, the answer one-hot's length.
    pub vocab: usize,
    /// The metric the graph was built with: its answer weights are fed.
    pub metric: crate::augment::Metric,
}

/// One row per pair: clean and corrupted token inputs, the last-position and
/// answer one-hots (weighted for the graph's own metric), and equal weights.
pub fn pair_inputs(inputs: &TokenInputs, t: &TokenizedPrompts) -> Vec<(String, Value)> {
    let b = t.clean_ids.len();
    let s = t.seq_len;
    let ids = |rows: &Vec<Vec<i64>>| Array2::from_shape_fn((b, s), |(r, c)| rows[r][c]).into_dyn();
    let mut v = vec![
        (inputs.ids.clean.clone(), Value::I64(ids(&t.clean_ids))),
        (inputs.ids.corrupted.clone(), Value::I64(ids(&t.corrupted_ids))),
    ];
    if let Some(m) = inputs.mask {
        let mask = Array2::from_shape_fn((b, s), |(r, c)| (c < t.lengths[r]) as i64).into_dyn();
        v.push((m.clean.clone(), Value::I64(mask.clone())));
        v.push((m.corrupted.clone(), Value::I64(mask)));
    }
    if let Some(p) = inputs.positions {
        let positions = Array2::from_shape_fn((b, s), |(_, c)| c as i64).into_dyn();
        v.push((p.clean.clone(), Value::I64(positions.clone())));
        v.push((p.corrupted.clone(), Value::I64(positions)));
    }
    v.extend(selector_inputs(inputs, t));
    v
}

/// The metric's per-pair selectors: the last-position and answer one-hots
/// (weighted for the graph's own metric) and equal weights.
pub(crate) fn selector_inputs(inputs: &TokenInputs, t: &TokenizedPrompts) -> Vec<(String, Value)> {
    let (w_correct, w_incorrect) = inputs.metric.answer_weights();
    let b = t.clean_ids.len();
    let s = t.seq_len;
    let mut pos = Array3::<f32>::zeros((b, 1, s));
    let mut ans = Array3::<f32>::zeros((b, inputs.vocab, 1));
    for p in 0..b {
        pos[[p, 0, t.lengths[p] - 1]] = 1.0;
        ans[[p, t.correct_ids[p] as usize, 0]] += w_correct;
        ans[[p, t.incorrect_ids[p] as usize, 0]] += w_incorrect;
    }
    let weights = Array2::<f32>::from_elem((b, 1), 1.0 / b as f32);
    vec![
        (names::POSITION_ONEHOT.into(), Value::F32(pos.into_dyn())),
        (names::ANSWER_ONEHOT.into(), Value::F32(ans.into_dyn())),
        (names::PAIR_WEIGHTS.into(), Value::F32(weights.into_dyn())),
    ]
}

/// One layer's grid output of a run: `rows` rows of `width` values.
pub(crate) struct GridRows {
    /// Index into the hooks.
    pub hook: usize,
    pub is_heads: bool,
    pub width: usize,
    pub values: Vec<f32>,
}

impl GridRows {
    pub fn row(&self, r: usize) -> &[f32] {
        &self.values[r * self.width..(r + 1) * self.width]
    }
}

/// Takes every hook's per-row grid outputs (heads when `heads`, and
/// positions) from a run's outputs, refusing non-finite values; `context`
/// ends the message (e.g. " in batch 3").
pub(crate) fn read_grid_rows(
    out: &mut HashMap<String, ArrayD<f32>>,
    hooks: &[Hook],
    heads: bool,
    rows: usize,
    context: &str,
) -> Result<Vec<GridRows>> {
    let mut grids = vec![];
    for (k, h) in hooks.iter().enumerate() {
        let mut wanted = vec![];
        if heads {
            wanted.push((names::heads(h.layer), true));
        }
        wanted.push((names::positions(h.layer), false));
        for (name, is_heads) in wanted {
            let a = runtime::take_output(out, &name)?;
            if let Some((i, v)) = first_non_finite(&a) {
                return Err(Error::Numeric(format!(
                    "'{name}' (layer {}, hook '{}') holds {v} at flat index {i}{context}: the activations or \
                     gradients of that layer are not finite",
                    h.layer, h.tensor
                )));
            }
            let values: Vec<f32> = a.iter().copied().collect();
            let width = values.len().checked_div(rows).unwrap_or(0);
            grids.push(GridRows { hook: k, is_heads, width, values });
        }
    }
    Ok(grids)
}
