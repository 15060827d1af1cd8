//! The metric's nodes, differentiated by the same rules as the model. Each
//! pair's logits are read at its last position and its answers with matrix
//! products against one-hot inputs:
//!   sel = last_position_onehot[B,1,S] @ logits[B,S,V]           -> [B,1,V]
//!   logit-diff:   sel @ answer_onehot[B,V,1] (+1 correct, -1 incorrect)
//!   logprob-diff: LogSoftmax(sel) @ answer_onehot
//!   prob:         Softmax(sel) @ answer_onehot (+1 correct only)
//!   kl:           sum_V softmax(clean) * (logsoftmax(clean) - LogSoftmax(sel)),
//!                 the clean copy's distribution held constant
//!   each -> [B,1,1]; mean = values^T @ pair_weights[B,1] -> [1,1]
//! When the logits come from a MatMul with a constant weight (the lm_head),
//! the selection moves before it, `(P @ h) @ W`, so the lm_head runs on one
//! position per prompt instead of all of them.

use super::names;
use attrpatch_onnx::builder::GraphBuilder;
use attrpatch_onnx::pb::NodeProto;
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
    if n.op_type == "MatMul"
        && n.input.len() == 2
        && constants.contains(&n.input[1])
        && rank(&n.input[1]) == Some(2)
        && logits_rank == Some(3)
    {
        return LogitsSource::LmHead { hidden: n.input[0].clone(), weight: n.input[1].clone() };
    }
    LogitsSource::Opaque
}

/// Which quantity the attribution explains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// logit(correct) - logit(incorrect), the tutorial's.
    #[default]
    LogitDiff,
    /// log p(correct) - log p(incorrect).
    LogprobDiff,
    /// p(correct).
    Prob,
    /// KL(clean || corrupted) of the next-token distributions (no answers needed).
    Kl,
}

impl Metric {
    /// How the metric is named in reports and figures.
    pub fn label(&self) -> &'static str {
        match self {
            Metric::LogitDiff => "logit diff",
            Metric::LogprobDiff => "logprob diff",
            Metric::Prob => "prob of correct",
            Metric::Kl => "KL(clean||corrupted)",
        }
    }
    /// Weights of the answer one-hot input for (correct, incorrect).
    pub fn answer_weights(&self) -> (f32, f32) {
        match self {
            Metric::LogitDiff | Metric::LogprobDiff => (1.0, -1.0),
            Metric::Prob => (1.0, 0.0),
            Metric::Kl => (0.0, 0.0),
        }
    }
}

/// The tensors that select what the metric reads, one row per prompt run:
/// the last-position one-hot [B,1,S], the answer one-hot [B,V,1] and the
/// weights of the mean [B,1].
#[derive(Clone, Copy)]
pub struct Selectors<'a> {
    pub position: &'a str,
    pub answer: &'a str,
    pub weights: &'a str,
}

/// The attribution graph's selectors: graph inputs, one row per pair.
pub const PAIR_SELECTORS: Selectors<'static> =
    Selectors { position: names::POSITION_ONEHOT, answer: names::ANSWER_ONEHOT, weights: names::PAIR_WEIGHTS };

/// The logits at each row's last position, [B,1,V], for one copy; `name`
/// maps original tensor names to the copy's.
pub fn last_logits(
    b: &mut GraphBuilder,
    src: &LogitsSource,
    logits: &str,
    name: &dyn Fn(&str) -> String,
    sel: Selectors,
) -> String {
    match src {
        LogitsSource::LmHead { hidden, weight } => {
            let h_last = b.matmul(sel.position, &name(hidden));
            b.matmul(&h_last, &name(weight))
        }
        LogitsSource::Opaque => b.matmul(sel.position, &name(logits)),
    }
}

/// Emits each pair's metric value (`rows_out`, [1,B]) and their mean (`out`,
/// [1,1]) from `sel`; `clean_sel` is the clean copy's, for KL.
pub fn metric_values(
    b: &mut GraphBuilder,
    metric: Metric,
    sel: &str,
    clean_sel: &str,
    s: Selectors,
    rows_out: &str,
    out: &str,
) {
    let axis = vec![attrpatch_onnx::builder::attr_i("axis", -1)];
    let v = match metric {
        Metric::LogitDiff => b.matmul(sel, s.answer),
        Metric::LogprobDiff => {
            let ls = b.node("LogSoftmax", &[sel], axis);
            b.matmul(&ls, s.answer)
        }
        Metric::Prob => {
            let p = b.node("Softmax", &[sel], axis);
            b.matmul(&p, s.answer)
        }
        Metric::Kl => {
            let lc = b.node("LogSoftmax", &[clean_sel], axis.clone());
            let pc = b.node("Exp", &[&lc], vec![]);
            let lk = b.node("LogSoftmax", &[sel], axis);
            let d = b.sub(&lc, &lk);
            let m = b.mul(&pc, &d);
            b.reduce_sum(&m, &[2], true)
        }
    };
    let flat_shape = b.const_i64s(&[1, -1]);
    b.node_named("Reshape", &[&v, &flat_shape], rows_out, vec![]);
    b.node_named("MatMul", &[rows_out, s.weights], out, vec![]);
}
