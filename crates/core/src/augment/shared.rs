//! The shared-rows attribution graph: one forward copy over R rows of
//! distinct sequences, with the backward, instead of a clean copy and a
//! corrupted copy of B rows each.
//!
//! Two index inputs, int64 [B], say which row holds each pair's clean prompt
//! and which its corrupted prompt (`job::rows` plans them). Every per-pair
//! quantity gathers from those rows, so the outputs keep the two-copy
//! graph's names and [B, ...] shapes. Each pair's corrupted row is its own
//! (a sequence that is the corrupted prompt of k pairs is fed k times), so
//! the gradient row gathered for a pair is that pair's alone. The clean
//! gathers are stop-gradients: a row read as one pair's clean prompt may be
//! another's corrupted prompt, and the metric must not differentiate through
//! the clean role (KL reads the clean distribution).

use super::metric::LogitsSource;
use super::{metric_nodes_named, names, skeleton, Anatomy, HookViews, Metric, TokenInput};
use attrpatch_onnx::builder::{attr_i, GraphBuilder};
use attrpatch_onnx::consts::INT64;
use attrpatch_onnx::facts::Dim;
use attrpatch_onnx::graph::value_info;
use attrpatch_onnx::pb::{GraphProto, ValueInfoProto};
use std::collections::{HashMap, HashSet};

/// The symbolic dim of the row inputs.
const ROWS_DIM: &str = "attrpatch_rows";
/// Probe rows for shape analysis: neither 1 nor the probe's pair count.
const PROBE_ROWS: usize = 4;

/// Names each token input's clean and corrupted role after its one row input.
pub fn rename_token_inputs(anat: &mut Anatomy) {
    let rename = |t: &mut TokenInput| {
        let row = names::row_input(&t.model_name);
        t.clean = row.clone();
        t.corrupted = row;
    };
    rename(&mut anat.ids_in);
    anat.mask_in.as_mut().map(rename);
    anat.pos_in.as_mut().map(rename);
}

/// The forward graph over shared rows.
pub struct SharedRows {
    /// The tensor the metric selects from: the lm_head's input, or the logits.
    metric_source: String,
    /// The row input of the token ids, whose first dim is R.
    row_ids: String,
}

impl SharedRows {
    /// Renames the model's token inputs to their row inputs ([rows, S]) and
    /// declares the metric's selectors and the two index inputs ([B]).
    /// `anat`'s token inputs must be renamed already (`rename_token_inputs`).
    pub fn make(g: &mut GraphProto, anat: &Anatomy) -> Self {
        let token_inputs = anat.token_inputs();
        let map: HashMap<String, String> =
            token_inputs.iter().map(|t| (t.model_name.clone(), t.corrupted.clone())).collect();
        super::copy::rename_inputs(&mut g.node, &map);
        let rows = [Dim::Sym(ROWS_DIM.into()), anat.seq.clone()];
        let mut inputs = vec![];
        for t in &token_inputs {
            let vi = g.input.iter().find(|i| i.name == t.model_name).unwrap().clone();
            let elem = vi_elem_type(&vi);
            inputs.push(value_info(&t.corrupted, elem, &rows));
        }
        g.input.retain(|i| !token_inputs.iter().any(|t| t.model_name == i.name));
        g.input.splice(0..0, inputs);
        skeleton::declare_selector_inputs(g, anat);
        let batch = &anat.batch;
        g.input.push(value_info(names::CLEAN_ROWS, INT64, std::slice::from_ref(batch)));
        g.input.push(value_info(names::CORRUPTED_ROWS, INT64, std::slice::from_ref(batch)));
        let metric_source = match &anat.src {
            LogitsSource::LmHead { hidden, .. } => hidden.clone(),
            LogitsSource::Opaque => anat.logits.clone(),
        };
        SharedRows { metric_source, row_ids: anat.ids_in.corrupted.clone() }
    }

    /// The metric nodes, reading each pair's clean and corrupted rows of the
    /// metric's source; returns the stop-gradients (the baselines and the clean gather).
    pub fn metric_nodes(&self, b: &mut GraphBuilder, anat: &Anatomy, m: Metric) -> HashSet<String> {
        let clean = self.gather_rows(b, &self.metric_source, names::CLEAN_ROWS);
        let corrupted = self.gather_rows(b, &self.metric_source, names::CORRUPTED_ROWS);
        let src = self.metric_source.as_str();
        let view = |by: String| move |t: &str| if t == src { by.clone() } else { t.to_string() };
        let mut stop = metric_nodes_named(b, anat, m, &view(clean.clone()), &view(corrupted));
        stop.insert(clean);
        stop
    }

    /// Each hook's per-pair clean and corrupted activation and gradient, gathered from the rows.
    pub fn hook_views(&self, b: &mut GraphBuilder, anat: &Anatomy, grads: &[String]) -> Vec<HookViews> {
        anat.hooks
            .iter()
            .zip(grads)
            .map(|(h, gr)| HookViews {
                clean: self.gather_rows(b, &h.tensor, names::CLEAN_ROWS),
                corrupted: self.gather_rows(b, &h.tensor, names::CORRUPTED_ROWS),
                grad: self.gather_rows(b, gr, names::CORRUPTED_ROWS),
            })
            .collect()
    }

    /// Shape [B, S]: the token ids of each pair's corrupted row.
    pub fn pair_shape(&self, b: &mut GraphBuilder, anat: &Anatomy) -> String {
        let ids = self.gather_rows(b, &anat.ids_in.corrupted, names::CORRUPTED_ROWS);
        b.shape(&ids)
    }
}

impl SharedRows {
    /// Each pair's rows of `x`: x viewed as [R, -1] (a hook may fold the rows
    /// into its first dim, [R*S, D]), gathered, and given x's shape with B rows.
    fn gather_rows(&self, b: &mut GraphBuilder, x: &str, rows: &str) -> String {
        let ids_shape = b.shape(&self.row_ids);
        let r = b.slice_axis(&ids_shape, 0, 0, 1);
        let minus_one = b.const_i64s(&[-1]);
        let view = b.concat(&[&r, &minus_one], 0);
        let flat = b.reshape(x, &view);
        let picked = b.node("Gather", &[&flat, rows], vec![attr_i("axis", 0)]);
        let x_shape = b.shape(x);
        let tail = b.slice_axis(&x_shape, 0, 1, i64::MAX);
        let out_shape = b.concat(&[&minus_one, &tail], 0);
        b.reshape(&picked, &out_shape)
    }
}

fn vi_elem_type(vi: &ValueInfoProto) -> i32 {
    use attrpatch_onnx::pb::type_proto::Value;
    match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(Value::TensorType(t)) => t.elem_type,
        _ => INT64,
    }
}

/// The probe shapes of the shared-rows graph's inputs.
pub fn probe_inputs(anat: &Anatomy) -> Vec<(String, Vec<usize>)> {
    let (pp, ps) = (super::skeleton::PROBE_PAIRS, super::skeleton::PROBE_SEQ);
    let mut probe: Vec<(String, Vec<usize>)> =
        anat.token_inputs().iter().map(|t| (t.corrupted.clone(), vec![PROBE_ROWS, ps])).collect();
    probe.extend([
        (names::POSITION_ONEHOT.to_string(), vec![pp, 1, ps]),
        (names::ANSWER_ONEHOT.to_string(), vec![pp, anat.vocab, 1]),
        (names::PAIR_WEIGHTS.to_string(), vec![pp, 1]),
        (names::CLEAN_ROWS.to_string(), vec![pp]),
        (names::CORRUPTED_ROWS.to_string(), vec![pp]),
    ]);
    probe
}
