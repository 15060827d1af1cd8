//! GroupQueryAttention as the GenAI builder emits it, for a whole prompt (no
//! past): optional packed QKV, rotary inside (do_rotary, interleaved or not,
//! positions 0..S-1 as ONNX Runtime uses for a first prompt, whatever
//! position_ids says), kv heads shared by groups of query heads, causal mask,
//! local window (the last `local_window_size` keys), softcap, attention bias.
//!
//! attrpatch runs whole prompts, so the KV cache is empty: a `past_key` /
//! `past_value` graph input contributes nothing and is removed, and
//! `present_*` are the prompt's own keys and values. `seqlens_k` (each row's
//! valid length - 1) and `total_sequence_length` (the prompt length) are not
//! read: for a first prompt ONNX Runtime's kernel uses seqlens_k only to stop
//! at a row's padding (right padding; padded rows come out undefined), and the
//! causal mask alone gives every valid row the same keys. Where they are
//! graph inputs they are removed; where the graph derives them from
//! `attention_mask` (the GenAI builder does), those nodes go dead.

use super::heads::{self, Masks};
use super::rotary::{half_width, rotate};
use super::{attr_float, attr_int, bind, input, refuse_used_output, required, Ctx};
use crate::builder::{attr_i, GraphBuilder};
use crate::error::bail;
use crate::error::Result;
use crate::pb::NodeProto;

/// A past input that attrpatch leaves empty: a graph input, or the empty
/// cache the KV-cache pass (which runs first) built in its place.
fn drop_past(n: &NodeProto, cx: &mut Ctx, i: usize, what: &str) -> Result<()> {
    let Some(past) = input(n, i) else { return Ok(()) };
    let empty_cache = cx
        .producer(past)
        .is_some_and(|p| p.op_type == "ConstantOfShape" && p.name.starts_with(crate::normalize::kv_cache::NAME_PREFIX));
    if cx.graph_input(past).is_none() && !empty_cache {
        bail!(
            Unsupported,
            "GroupQueryAttention node '{}': its {what} '{past}' is computed inside the graph; attrpatch decomposes \
             the op only for a whole prompt, with the cache an (empty) graph input",
            n.name
        );
    }
    cx.dropped_inputs.push(past.to_string());
    Ok(())
}

/// The head size when the query comes from a MatMul with a constant weight [in, N*H].
fn head_size(cx: &Ctx, q: &str, num_heads: i64, packed_heads: i64) -> Option<i64> {
    let p = cx.producer(q)?;
    let w = match p.op_type.as_str() {
        "MatMul" => p.input.get(1)?,
        "Add" => {
            let mm = p.input.iter().find_map(|i| cx.producer(i).filter(|m| m.op_type == "MatMul"))?;
            mm.input.get(1)?
        }
        _ => return None,
    };
    let d = cx.constant_dims(w)?;
    let total = *d.last()?;
    let _ = num_heads;
    (total % packed_heads == 0).then_some(total / packed_heads)
}

pub(crate) fn group_query_attention(b: &mut GraphBuilder, n: &NodeProto, cx: &mut Ctx) -> Result<()> {
    let nh = attr_int(n, "num_heads", 0);
    let kvh = attr_int(n, "kv_num_heads", 0);
    if nh <= 0 || kvh <= 0 || nh % kvh != 0 {
        bail!(
            Model,
            "GroupQueryAttention node '{}': num_heads {nh} must be a positive multiple of kv_num_heads {kvh}",
            n.name
        );
    }
    if attr_int(n, "smooth_softmax", 0) != 0 || input(n, 11).is_some() {
        bail!(
            Unsupported,
            "GroupQueryAttention node '{}' uses smooth_softmax or head_sink, which attrpatch does not decompose",
            n.name
        );
    }
    refuse_used_output(cx, n, 3, "the Q K^T scores")?;
    let q = required(n, 0, "query")?;
    let (qh, mut kh, vh, hs) = match (input(n, 1), input(n, 2)) {
        (Some(k), Some(v)) => {
            let hs = head_size(cx, q, nh, nh);
            (heads::split_heads(b, q, nh), heads::split_heads(b, k, kvh), heads::split_heads(b, v, kvh), hs)
        }
        (None, None) => {
            let hs = head_size(cx, q, nh, nh + 2 * kvh);
            let s = b.const_i64s(&[0, 0, nh + 2 * kvh, -1]);
            let r = b.reshape(q, &s);
            let p = b.split_sizes(&r, 2, &[nh, kvh, kvh]);
            let t: Vec<String> = p.iter().map(|x| b.transpose(x, &[0, 2, 1, 3])).collect();
            (t[0].clone(), t[1].clone(), t[2].clone(), hs)
        }
        _ => bail!(Model, "GroupQueryAttention node '{}' has a key without a value or a value without a key", n.name),
    };
    drop_past(n, cx, 3, "past_key")?;
    drop_past(n, cx, 4, "past_value")?;
    // seqlens_k and total_sequence_length are not read (see the module comment).
    for t in [input(n, 5), input(n, 6)].into_iter().flatten() {
        if cx.graph_input(t).is_some() {
            cx.dropped_inputs.push(t.to_string());
        }
    }
    let mut qh = qh;
    if attr_int(n, "do_rotary", 0) == 1 {
        let cos_cache = required(n, 7, "cos_cache")?;
        let sin_cache = required(n, 8, "sin_cache")?;
        let half = half_width(cx, n, cos_cache)?;
        // Positions 0..S-1: ONNX Runtime's CPU kernel does not read position_ids for a first prompt.
        let s = b.dim(&qh, 2);
        let r = heads::arange(b, &s);
        let cos = b.node("Gather", &[cos_cache, &r], vec![attr_i("axis", 0)]);
        let sin = b.node("Gather", &[sin_cache, &r], vec![attr_i("axis", 0)]);
        let inter = attr_int(n, "rotary_interleaved", 0) == 1;
        qh = rotate(b, &qh, &cos, &sin, half, hs, inter);
        kh = rotate(b, &kh, &cos, &sin, half, hs, inter);
    }
    if cx.used(n, 1) {
        bind(b, &kh, &n.output[1]);
    }
    if cx.used(n, 2) {
        bind(b, &vh, &n.output[2]);
    }
    let mut m = Masks { softcap: attr_float(n, "softcap", 0.0), ..Default::default() };
    let (causal, rows, cols) = heads::causal_masked(b, &qh, &kh);
    m.masked.push(causal);
    let window = attr_int(n, "local_window_size", -1);
    if window > 0 {
        // Keys i - window < j <= i (ONNX Runtime 1.31; Mistral's sliding window).
        let w = b.const_i64_scalar(window - 1);
        let start = b.sub(&rows, &w);
        m.masked.push(b.node("Less", &[&cols, &start], vec![]));
    }
    if let Some(ab) = input(n, 10) {
        m.additive.push(ab.to_string());
    }
    let kr = heads::repeat_kv(b, &kh, kvh, nh / kvh);
    let vr = heads::repeat_kv(b, &vh, kvh, nh / kvh);
    let scale = heads::scale_factor(b, &qh, attr_float(n, "scale", 0.0));
    let o = heads::attend(b, &qh, &kr, &vr, &scale, &m);
    let o = heads::merge_heads(b, &o);
    bind(b, &o, &n.output[0]);
    Ok(())
}
