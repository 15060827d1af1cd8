//! Pieces shared by the attention decompositions: heads split and merged,
//! position indices, and softmax(scale * Q K^T + masks) V.

use crate::builder::GraphBuilder;
use crate::consts::{FLOAT, INT64};

/// float32's lowest value: a score that softmax turns into exactly 0 without
/// the NaN that -inf gives a fully masked row.
pub(crate) const MASKED: f64 = f32::MIN as f64;

/// [B, S, N*H] -> [B, N, S, H].
pub(crate) fn split_heads(b: &mut GraphBuilder, x: &str, n: i64) -> String {
    let s = b.const_i64s(&[0, 0, n, -1]);
    let r = b.reshape(x, &s);
    b.transpose(&r, &[0, 2, 1, 3])
}

/// [B, N, S, H] -> [B, S, N*H].
pub(crate) fn merge_heads(b: &mut GraphBuilder, x: &str) -> String {
    let t = b.transpose(x, &[0, 2, 1, 3]);
    let s = b.const_i64s(&[0, 0, -1]);
    b.reshape(&t, &s)
}

/// [B, kvN, T, H] -> [B, kvN * group, T, H], each kv head repeated `group`
/// times in a row (query head h reads kv head h / group).
pub(crate) fn repeat_kv(b: &mut GraphBuilder, x: &str, kv_heads: i64, group: i64) -> String {
    if group == 1 {
        return x.to_string();
    }
    let u = b.unsqueeze(x, &[2]);
    let reps = b.const_i64s(&[1, 1, group, 1, 1]);
    let e = b.node("Expand", &[&u, &reps], vec![]);
    let shape = b.shape(&e);
    let batch = b.slice_axis(&shape, 0, 0, 1);
    let tail = b.slice_axis(&shape, 0, 3, 5);
    let n = b.const_i64s(&[kv_heads * group]);
    let target = b.concat(&[&batch, &n, &tail], 0);
    b.reshape(&e, &target)
}

/// 0, 1, .., len-1 (int64) for a run-time int64 scalar `len`.
pub(crate) fn arange(b: &mut GraphBuilder, len: &str) -> String {
    let zero = b.const_i64_scalar(0);
    let one = b.const_i64_scalar(1);
    b.node("Range", &[&zero, len, &one], vec![])
}

/// The causal mask [S, T] (true = masked: key j after query i + offset), for
/// queries `q` [B, N, S, H], keys `k` [B, N, T, H], and `offset` = T - S (past length).
pub(crate) fn causal_masked(b: &mut GraphBuilder, q: &str, k: &str) -> (String, String, String) {
    let s = b.dim(q, 2);
    let t = b.dim(k, 2);
    let off = b.sub(&t, &s);
    let rows = arange(b, &s);
    let rows = b.add(&rows, &off);
    let rows = b.unsqueeze(&rows, &[1]);
    let cols = arange(b, &t);
    let masked = b.node("Greater", &[&cols, &rows], vec![]);
    (masked, rows, cols)
}

/// How scores are scaled: a fixed factor, or 1/sqrt(head size) read from `q`.
pub(crate) fn scale_factor(b: &mut GraphBuilder, q: &str, scale: f32) -> String {
    if scale != 0.0 {
        return b.const_scalar(FLOAT, scale as f64);
    }
    let h = b.dim(q, 3);
    let hf = b.cast(&h, FLOAT);
    let sd = b.node("Sqrt", &[&hf], vec![]);
    b.node("Reciprocal", &[&sd], vec![])
}

/// What goes between the scores and the softmax.
#[derive(Default)]
pub(crate) struct Masks {
    /// Scores become `softcap * tanh(scores / softcap)` first (when > 0).
    pub softcap: f32,
    /// Added to the scores (broadcast to [B, N, S, T]).
    pub additive: Vec<String>,
    /// Where true, the score is replaced by MASKED (broadcast to [B, N, S, T]).
    pub masked: Vec<String>,
}

/// softmax(scale * q k^T (+ masks)) v for q [B, N, S, H], k and v [B, N, T, H].
pub(crate) fn attend(b: &mut GraphBuilder, q: &str, k: &str, v: &str, scale: &str, m: &Masks) -> String {
    let kt = b.transpose(k, &[0, 1, 3, 2]);
    let qk = b.matmul(q, &kt);
    let mut scores = b.mul(&qk, scale);
    if m.softcap > 0.0 {
        let c = b.const_scalar(FLOAT, m.softcap as f64);
        let d = b.div(&scores, &c);
        let t = b.node("Tanh", &[&d], vec![]);
        scores = b.mul(&t, &c);
    }
    for a in &m.additive {
        scores = b.add(&scores, a);
    }
    if !m.masked.is_empty() {
        let mut cond = m.masked[0].clone();
        for c in &m.masked[1..] {
            cond = b.node("Or", &[&cond, c], vec![]);
        }
        let low = b.const_scalar(FLOAT, MASKED);
        scores = b.where_(&cond, &low, &scores);
    }
    let p = b.softmax_last(&scores);
    b.matmul(&p, v)
}

/// `value` where `cond`, else 0 (float32), for additive masks.
pub(crate) fn where_value(b: &mut GraphBuilder, cond: &str, value: f32) -> String {
    let v = b.const_scalar(FLOAT, value as f64);
    let z = b.const_scalar(FLOAT, 0.0);
    b.where_(cond, &v, &z)
}

/// `x` cast to int64 (masks arrive as int32 or int64).
pub(crate) fn as_i64(b: &mut GraphBuilder, x: &str) -> String {
    b.cast(x, INT64)
}
