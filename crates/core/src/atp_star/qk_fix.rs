//! The QK-fix of AtP* (Kramár et al. 2024), emitted as graph nodes, beside
//! the plain AtP estimate of the same nodes. A node is one head's query at
//! one position, or one head's key at one position; both only move the
//! attention pattern A = softmax(x) of their head (x: the Softmax's input).
//! With g = dL/dA and the corrupted run's pattern A:
//!
//! - query at t, patched to its clean value: row t of the scores is
//!   recomputed exactly (clean q_t against the corrupted keys, through the
//!   model's own scale and masks), A'_t = softmax(x'_t), and the estimate is
//!   sum_s g_ts (A'_ts - A_ts). AtP's is sum_s (dL/dx)_ts (x'_ts - x_ts).
//! - key at s: only the logit x_ts of every row t changes, to x'_ts. With
//!   e_j = exp(x_tj - m_t), Z = sum_j e_j, Z_-s = sum_{j != s} e_j and
//!   N_-s = sum_{j != s} g_tj e_j (exclusive sums both ways, so nothing
//!   cancels when A_ts is near 1), and e', c the new and old exponentials in
//!   a common scale m' = max(m_t, x'_ts), exactly
//!   `sum_j g_tj (A'_tj - A_tj) = (e' - c e_s) (g_ts Z_-s - N_-s) / ((c Z_-s + e') Z)`,
//!   summed over the rows t. AtP's is sum_t (dL/dx)_ts (x'_ts - x_ts).
//!
//! Both are exact in the pattern and linear after it (g), at no extra
//! forward pass of the model: one more Q K^T product each for queries and
//! keys, and O(rows x keys) work per head.

use super::attention::Pattern;
use attrpatch_onnx::builder::{attr_i, GraphBuilder};
use attrpatch_onnx::consts::FLOAT;

/// The forward quantities of one layer's QK-fix, shared by every gradient
/// (the plain backward and each GradDrop sweep).
pub struct Recomputed {
    /// Scores with each row's query patched (row t: clean q_t), post-chain.
    dq_logits: String,
    /// The pattern change of a patched query, A' - A (NaN rows zeroed).
    dq_probs: String,
    /// Scores with each key patched (entry (t, s): clean k_s), post-chain, minus the corrupted ones.
    dk_logits: String,
    /// exp(x' - m') - exp(x - m') per entry (the key patch's exponential change).
    dk_exp: String,
    /// (c Z_-s + e') Z per entry.
    dk_den: String,
    /// Z_-s per entry.
    z_others: String,
    /// exp(x - m) per entry.
    e: String,
}

/// Emits the patched scores and patterns; `clean_q`, `clean_kt` are the
/// clean run's product inputs.
pub fn recompute(b: &mut GraphBuilder, p: &Pattern, clean_q: &str, clean_kt: &str) -> Recomputed {
    let x = p.logits().to_string();
    let a = p.probs().to_string();
    let q_product = b.matmul(clean_q, &p.kt);
    let xq = p.recompute(b, &q_product);
    let aq = p.softmax(b, &xq);
    let dq = b.sub(&aq, &a);
    let dq_probs = finite(b, &dq);
    let dx = b.sub(&xq, &x);
    let dq_logits = finite(b, &dx);

    let k_product = b.matmul(&p.q, clean_kt);
    let xk = p.recompute(b, &k_product);
    let dx = b.sub(&xk, &x);
    let dk_logits = finite(b, &dx);
    let m = b.reduce_max(&x, &[-1], true);
    let xm = b.sub(&x, &m);
    let e = b.node("Exp", &[&xm], vec![]);
    let z = b.reduce_sum(&e, &[-1], true);
    let z_others = others_sum(b, &e);
    let m2 = b.node("Max", &[&m, &xk], vec![]);
    let old = b.sub(&m, &m2);
    let c = b.node("Exp", &[&old], vec![]);
    let new = b.sub(&xk, &m2);
    let e_new = b.node("Exp", &[&new], vec![]);
    let was = b.sub(&x, &m2);
    let e_old = b.node("Exp", &[&was], vec![]);
    let dk_exp = b.sub(&e_new, &e_old);
    let cz = b.mul(&c, &z_others);
    let den = b.add(&cz, &e_new);
    let dk_den = b.mul(&den, &z);
    Recomputed { dq_logits, dq_probs, dk_logits, dk_exp, dk_den, z_others, e }
}

/// `x` with NaN entries (fully masked rows, -inf minus -inf) set to 0.
fn finite(b: &mut GraphBuilder, x: &str) -> String {
    let nan = b.node("IsNaN", &[x], vec![]);
    let zero = b.const_scalar(FLOAT, 0.0);
    b.where_(&nan, &zero, x)
}

/// sum_{j != s} x_j along the last axis, for every s: exclusive running sums
/// from both ends (no subtraction, so a dominant entry loses nothing).
fn others_sum(b: &mut GraphBuilder, x: &str) -> String {
    let axis = b.const_i64_scalar(-1);
    let fwd = b.node("CumSum", &[x, &axis], vec![attr_i("exclusive", 1)]);
    let rev = b.node("CumSum", &[x, &axis], vec![attr_i("exclusive", 1), attr_i("reverse", 1)]);
    b.add(&fwd, &rev)
}

/// Per query position and per key position (over every row of the product's
/// leading axes): the QK-fix estimates and AtP's, given g = dL/dA and
/// `g_logits` = dL/dx.
pub struct Estimates {
    /// [.., T]: each query's QK-fix estimate.
    pub query: String,
    /// [.., S]: each key's QK-fix estimate, summed over the rows.
    pub key: String,
    /// [.., T]: each query's AtP estimate.
    pub query_linear: Option<String>,
    /// [.., S]: each key's AtP estimate.
    pub key_linear: Option<String>,
}

/// The estimates for one gradient; the linear ones only when `g_logits` is given.
pub fn estimates(b: &mut GraphBuilder, r: &Recomputed, g: &str, g_logits: Option<&str>) -> Estimates {
    let g = finite(b, g);
    let gq = b.mul(&g, &r.dq_probs);
    let query = b.reduce_sum(&gq, &[-1], false);
    // (e' - c e_s) (g_s Z_-s - N_-s) / ((c Z_-s + e') Z)
    let ge = b.mul(&g, &r.e);
    let n_others = others_sum(b, &ge);
    let gz = b.mul(&g, &r.z_others);
    let spread = b.sub(&gz, &n_others);
    let num = b.mul(&r.dk_exp, &spread);
    let per_entry = b.div(&num, &r.dk_den);
    let per_entry = finite(b, &per_entry);
    let key = b.reduce_sum(&per_entry, &[-2], false);
    let (query_linear, key_linear) = match g_logits {
        Some(gx) => {
            let gx = finite(b, gx);
            let lq = b.mul(&gx, &r.dq_logits);
            let lk = b.mul(&gx, &r.dk_logits);
            (Some(b.reduce_sum(&lq, &[-1], false)), Some(b.reduce_sum(&lk, &[-2], false)))
        }
        None => (None, None),
    };
    Estimates { query, key, query_linear, key_linear }
}
