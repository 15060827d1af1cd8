//! The metric's nodes. The logit difference of each pair is read at its last
//! position with matrix products against one-hot inputs, so the model's own
//! MatMul rule differentiates them:
//!   sel = last_position_onehot[B,1,S] @ logits[B,S,V]           -> [B,1,V]
//!   ld  = sel @ answer_onehot[B,V,1]  (+1 correct, -1 incorrect) -> [B,1,1]
//!   mean ld = ld^T @ pair_weights[B,1]                            -> [1,1]
//! When the logits come from a MatMul with a constant weight (the lm_head),
//! the selection moves before it, `(P @ h) @ W`, so the lm_head runs on one
//! position per prompt instead of all of them.

use super::names;
use crate::onnx::builder::GraphBuilder;
use crate::onnx::pb::NodeProto;
use std::collections::HashSet;

/// How the logits are produced, as far as the selection can move back.
pub enum LogitsSource {
    /// `logits = h @ W`, W constant, h [batch, seq, D].
    LmHead { hidden: String, weight: String },
    /// Anything else: select from the logits themselves.
    Opaque,
}

/// `logits_rank`: as declared; `rank`: a tensor's rank when known. With a
/// rank-2 weight, the hidden state has the logits' rank, [batch, seq, D].
pub fn logits_source(
    nodes: &[NodeProto],
    logits: &str,
    logits_rank: Option<usize>,
    constants: &HashSet<String>,
    rank: impl Fn(&str) -> Option<usize>,
) -> LogitsSource {
    let Some(n) = nodes.iter().find(|n| n.output.iter().any(|o| o == logits)) else {
        return LogitsSource::Opaque;
    };
    if n.op_type == "MatMul" && n.input.len() == 2 && constants.contains(&n.input[1]) && rank(&n.input[1]) == Some(2) && logits_rank == Some(3) {
        return LogitsSource::LmHead { hidden: n.input[0].clone(), weight: n.input[1].clone() };
    }
    LogitsSource::Opaque
}

/// Emits the logit difference of each pair (`rows_out`, [1,B]) and their mean
/// (`out`, [1,1]) for one copy; `name` maps original tensor names to the copy's.
pub fn mean_logit_diff(b: &mut GraphBuilder, src: &LogitsSource, logits: &str, name: &dyn Fn(&str) -> String, rows_out: &str, out: &str) {
    let sel = match src {
        LogitsSource::LmHead { hidden, weight } => {
            let h_last = b.matmul(names::POSITION_ONEHOT, &name(hidden));
            b.matmul(&h_last, &name(weight))
        }
        LogitsSource::Opaque => b.matmul(names::POSITION_ONEHOT, &name(logits)),
    };
    let ld = b.matmul(&sel, names::ANSWER_ONEHOT);
    let flat_shape = b.const_i64s(&[1, -1]);
    b.node_named("Reshape", &[&ld, &flat_shape], rows_out, vec![]);
    b.node_named("MatMul", &[rows_out, names::PAIR_WEIGHTS], out, vec![]);
}
