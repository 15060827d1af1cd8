//! Distinct sequences run once: which attribution graph a job runs, and the
//! rows and row indices the shared-rows graph (`augment::shared`) is fed.
//!
//! A batch of B pairs becomes R rows: every pair's corrupted prompt gets a
//! row of its own (its gradient row must be that pair's alone), and each
//! clean prompt reads an existing row holding the same sequence when there
//! is one, else a row of its own. The tutorial's neighbour swaps (each
//! corrupted prompt is another pair's clean prompt) give R = B.
//!
//! Cost model, in units of one row's forward: the two-copy graph runs
//! 2B forwards and B backwards, the shared-rows graph R forwards and R
//! backwards; the shared graph is cheaper when R (1 + k) < B (2 + k), k the
//! backward's cost per forward (`BACKWARD_PER_FORWARD`).

use super::inputs::{selector_inputs, TokenInputs};
use crate::augment::names;
use crate::prompts::TokenizedPrompts;
use crate::runtime::Value;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// One row's backward (to the hook activations, no weight gradients) costs
/// this many of its forwards. Measured on the GPT-2-small-sized export
/// (release build, ONNX Runtime CPU, 2 threads, the tutorial's 8 pairs x 14
/// tokens, R = B): from the run times of `attrpatch run --dedup on|off`
/// (1.39 s shared, 1.92 s two-copy, medians of 3 alternated), forward
/// (T2 - Ts) / B and backward Ts / B - forward give k = 1.6; the warm
/// `examples/bench.rs` gave 2.1 on a loaded machine. See the book's speed chapter (docs/src/speed.md).
pub const BACKWARD_PER_FORWARD: f64 = 1.6;

/// Whether the attribution graph runs each distinct sequence once (`--dedup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Dedup {
    /// The shared-rows graph when the cost model says it is cheaper.
    #[default]
    Auto,
    /// Always the shared-rows graph.
    On,
    /// Always the two-copy graph.
    Off,
}

impl Dedup {
    /// Whether to build the shared-rows graph for a job whose batches hold
    /// `pairs` pairs in all and would run `rows` shared rows in all.
    pub fn shared(self, rows: usize, pairs: usize) -> bool {
        match self {
            Dedup::On => true,
            Dedup::Off => false,
            Dedup::Auto => shared_is_cheaper(rows, pairs),
        }
    }
}

/// The cost model: R (1 + k) < B (2 + k).
pub fn shared_is_cheaper(rows: usize, pairs: usize) -> bool {
    let k = BACKWARD_PER_FORWARD;
    (rows as f64) * (1.0 + k) < (pairs as f64) * (2.0 + k)
}

/// Which graph a job ran and how many forward rows its calls held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RowsRun {
    /// The shared-rows graph (else the two-copy graph).
    pub shared: bool,
    /// Forward rows over all calls: R summed over batches, or 2B for the two-copy graph.
    pub rows: usize,
    /// Pairs over all calls (B).
    pub pairs: usize,
}

impl RowsRun {
    /// How many prompt runs the pairs took, in a user's words, as the timing
    /// line ends: "8 prompt runs for 8 pairs: each distinct prompt once (--dedup)"
    /// or "16 prompt runs for 8 pairs: a clean and a corrupted run each".
    pub fn describe(&self) -> String {
        let runs = format!("{} prompt run{} for {} pair{}", self.rows, s(self.rows), self.pairs, s(self.pairs));
        match self.shared {
            true => format!("{runs}: each distinct prompt once (--dedup), not 2 per pair"),
            false => format!("{runs}: a clean and a corrupted run each"),
        }
    }
}

fn s(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Where each row of a shared-rows call comes from, and each pair's two rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowPlan {
    /// Per row: (pair, clean): the row holds that pair's clean or corrupted prompt.
    pub rows: Vec<(usize, bool)>,
    /// Per pair: the row of its clean prompt.
    pub clean_rows: Vec<i64>,
    /// Per pair: the row of its corrupted prompt, its own.
    pub corrupted_rows: Vec<i64>,
}

impl RowPlan {
    /// Plans the rows of `t`'s pairs: corrupted prompts first, one row each;
    /// then each clean prompt reuses a row with the same tokens and length, or adds one.
    pub fn of(t: &TokenizedPrompts) -> Self {
        let b = t.clean_ids.len();
        let mut rows: Vec<(usize, bool)> = (0..b).map(|p| (p, false)).collect();
        let corrupted_rows = (0..b as i64).collect();
        let mut seen: HashMap<(&[i64], usize), usize> = HashMap::new();
        for p in 0..b {
            seen.entry((&t.corrupted_ids[p], t.lengths[p])).or_insert(p);
        }
        let mut clean_rows = Vec::with_capacity(b);
        for p in 0..b {
            let next = rows.len();
            let r = *seen.entry((&t.clean_ids[p], t.lengths[p])).or_insert(next);
            if r == next {
                rows.push((p, true));
            }
            clean_rows.push(r as i64);
        }
        RowPlan { rows, clean_rows, corrupted_rows }
    }

    /// R, the rows a call runs.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows (no pairs).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// The shared-rows graph's feeds for `t`'s pairs: the rows of `plan`
/// (right-padded prompts, their masks and positions), the row indices and the
/// per-pair selectors (as `pair_inputs` gives them).
pub fn shared_inputs(inputs: &TokenInputs, t: &TokenizedPrompts, plan: &RowPlan) -> Vec<(String, Value)> {
    let (r, s) = (plan.len(), t.seq_len);
    let row_ids = |row: usize| {
        let (p, clean) = plan.rows[row];
        if clean {
            &t.clean_ids[p]
        } else {
            &t.corrupted_ids[p]
        }
    };
    let ids = Array2::from_shape_fn((r, s), |(row, c)| row_ids(row)[c]).into_dyn();
    // Every model input of the graph has one row input: `clean` and `corrupted` name it alike.
    let mut v = vec![(inputs.ids.corrupted.clone(), Value::I64(ids))];
    if let Some(m) = inputs.mask {
        let mask = Array2::from_shape_fn((r, s), |(row, c)| (c < t.lengths[plan.rows[row].0]) as i64).into_dyn();
        v.push((m.corrupted.clone(), Value::I64(mask)));
    }
    if let Some(p) = inputs.positions {
        let positions = Array2::from_shape_fn((r, s), |(_, c)| c as i64).into_dyn();
        v.push((p.corrupted.clone(), Value::I64(positions)));
    }
    let index = |rows: &[i64]| Value::I64(Array1::from_vec(rows.to_vec()).into_dyn());
    v.push((names::CLEAN_ROWS.into(), index(&plan.clean_rows)));
    v.push((names::CORRUPTED_ROWS.into(), index(&plan.corrupted_rows)));
    v.extend(selector_inputs(inputs, t));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompts(clean: &[&[i64]], corrupted: &[&[i64]], lengths: &[usize]) -> TokenizedPrompts {
        let n = clean.len();
        TokenizedPrompts {
            clean_ids: clean.iter().map(|r| r.to_vec()).collect(),
            corrupted_ids: corrupted.iter().map(|r| r.to_vec()).collect(),
            correct_ids: vec![0; n],
            incorrect_ids: vec![1; n],
            seq_len: clean[0].len(),
            lengths: lengths.to_vec(),
            clean_tokens: vec![vec![]; n],
        }
    }

    #[test]
    fn neighbour_swaps_need_one_row_a_pair() {
        let (a, b, c, d): (&[i64], &[i64], &[i64], &[i64]) = (&[1, 2], &[3, 4], &[5, 6], &[7, 8]);
        let t = prompts(&[a, b, c, d], &[b, a, d, c], &[2; 4]);
        let plan = RowPlan::of(&t);
        assert_eq!(plan.len(), 4);
        assert_eq!(plan.corrupted_rows, vec![0, 1, 2, 3]);
        assert_eq!(plan.clean_rows, vec![1, 0, 3, 2]);
        assert!(shared_is_cheaper(plan.len(), 4));
    }

    #[test]
    fn a_twice_corrupted_sequence_gets_two_rows_and_clean_only_prompts_their_own() {
        let (a, b, c): (&[i64], &[i64], &[i64]) = (&[1, 2], &[3, 4], &[5, 6]);
        // b is the corrupted prompt of pairs 0 and 1; c is clean only; a is clean twice.
        let t = prompts(&[a, c, a], &[b, b, c], &[2; 3]);
        let plan = RowPlan::of(&t);
        assert_eq!(plan.corrupted_rows, vec![0, 1, 2]);
        assert_eq!(plan.rows, vec![(0, false), (1, false), (2, false), (0, true)]);
        assert_eq!(plan.clean_rows, vec![3, 2, 3]);
    }

    #[test]
    fn equal_tokens_of_another_length_are_another_row() {
        let a: &[i64] = &[1, 2, 0];
        let t = prompts(&[a, a], &[a, a], &[3, 2]);
        let plan = RowPlan::of(&t);
        // Corrupted rows 0 and 1; the clean prompts reuse the corrupted row of their own length.
        assert_eq!(plan.clean_rows, vec![0, 1]);
        assert_eq!(plan.len(), 2);
    }

    #[test]
    fn no_shared_sequence_means_two_copies() {
        assert!(!shared_is_cheaper(16, 8));
        assert!(Dedup::On.shared(16, 8));
        assert!(!Dedup::Off.shared(8, 8));
        assert!(!Dedup::Auto.shared(16, 8));
        assert!(Dedup::Auto.shared(8, 8));
    }
}
