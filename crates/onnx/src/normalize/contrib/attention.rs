//! Attention (input projection, heads, masks, past) and MultiHeadAttention
//! (projected Q, K, V) as MatMul, Reshape, Transpose, Softmax and Where. As in
//! ONNX Runtime's CPU kernel, key masks add `mask_filter_value` (default
//! -10000) and the causal mask gives future keys float32's lowest score, so
//! even rows whose keys are all masked come out the same.

use super::heads::{self, Masks};
use super::{attr_float, attr_int, attr_ints_of, bind, input, refuse_used_output, required, Ctx};
use crate::builder::GraphBuilder;
use crate::error::bail;
use crate::error::Result;
use crate::pb::NodeProto;

fn num_heads(n: &NodeProto) -> Result<i64> {
    match attr_int(n, "num_heads", 0) {
        h if h > 0 => Ok(h),
        h => bail!(Model, "{} node '{}' has num_heads = {h}; it must be positive", n.op_type, n.name),
    }
}

/// The rank of a mask input: declared (graph input, through Cast/Identity), or
/// EmbedLayerNormalization's mask_index ([B]).
fn mask_rank(cx: &Ctx, mask: &str) -> Option<usize> {
    if let Some(r) = cx.declared_rank(mask) {
        return Some(r);
    }
    let p = cx.producer(mask)?;
    (p.op_type == "EmbedLayerNormalization" && p.output.get(1).is_some_and(|o| o == mask)).then_some(1)
}

/// The additive mask [B, 1, 1|S, T] for a mask input of ONNX Runtime's formats:
/// [B] valid lengths (right padding), [B, T] 1 = attend / 0 = masked, [B, S, T] likewise.
fn key_mask(b: &mut GraphBuilder, n: &NodeProto, cx: &Ctx, mask: &str, k: &str, filter: f32) -> Result<String> {
    let m = heads::as_i64(b, mask);
    let masked = match mask_rank(cx, mask) {
        Some(1) => {
            let t = b.dim(k, 2);
            let cols = heads::arange(b, &t);
            let len = b.unsqueeze(&m, &[1]);
            let ge = b.node("GreaterOrEqual", &[&cols, &len], vec![]);
            b.unsqueeze(&ge, &[1, 2])
        }
        Some(2) => {
            let zero = b.const_i64s(&[0]);
            let eq = b.node("Equal", &[&m, &zero], vec![]);
            b.unsqueeze(&eq, &[1, 2])
        }
        Some(3) => {
            let zero = b.const_i64s(&[0]);
            let eq = b.node("Equal", &[&m, &zero], vec![]);
            b.unsqueeze(&eq, &[1])
        }
        r => bail!(
            Unsupported,
            "{} node '{}': mask '{mask}' has {}; attrpatch decomposes masks of rank 1 ([batch] lengths), 2 ([batch, \
             total length]) or 3 ([batch, length, total length]) whose rank the graph declares",
            n.op_type,
            n.name,
            r.map(|r| format!("rank {r}")).unwrap_or("an undeclared rank".into())
        ),
    };
    Ok(heads::where_value(b, &masked, filter))
}

/// The masks both ops share: key mask, unidirectional, attention bias.
fn masks(
    b: &mut GraphBuilder,
    n: &NodeProto,
    cx: &Ctx,
    qh: &str,
    kh: &str,
    mask: Option<&str>,
    attn_bias: Option<&str>,
) -> Result<Masks> {
    let filter = attr_float(n, "mask_filter_value", -10000.0);
    let mut m = Masks::default();
    if let Some(mask) = mask {
        m.additive.push(key_mask(b, n, cx, mask, kh, filter)?);
    }
    if attr_int(n, "unidirectional", 0) == 1 {
        // The kernel gives future keys float32's lowest score, whatever mask_filter_value says.
        let (causal, _, _) = heads::causal_masked(b, qh, kh);
        m.masked.push(causal);
    }
    if let Some(ab) = attn_bias {
        m.additive.push(ab.to_string());
    }
    Ok(m)
}

/// Attention: input [B, S, in] @ weights [in, q+k+v] + bias, heads, past [2, B, N, P, H].
pub(crate) fn attention(b: &mut GraphBuilder, n: &NodeProto, cx: &Ctx) -> Result<()> {
    if attr_int(n, "do_rotary", 0) != 0 {
        bail!(Unsupported, "Attention node '{}' has do_rotary = 1, which attrpatch does not decompose", n.name);
    }
    let heads_n = num_heads(n)?;
    let x = required(n, 0, "input")?;
    let w = required(n, 1, "weights")?;
    let mut qkv = b.matmul(x, w);
    if let Some(bias) = input(n, 2) {
        qkv = b.add(&qkv, bias);
    }
    let parts = match attr_ints_of(n, "qkv_hidden_sizes") {
        Some(sizes) if sizes.len() == 3 => b.split_sizes(&qkv, -1, &sizes),
        Some(sizes) => {
            bail!(Model, "Attention node '{}': qkv_hidden_sizes {sizes:?} must have 3 entries", n.name)
        }
        None => b.split_equal(&qkv, -1, 3),
    };
    let qh = heads::split_heads(b, &parts[0], heads_n);
    let mut kh = heads::split_heads(b, &parts[1], heads_n);
    let mut vh = heads::split_heads(b, &parts[2], heads_n);
    if let Some(past) = input(n, 4) {
        let i0 = b.const_i64_scalar(0);
        let i1 = b.const_i64_scalar(1);
        let pk = b.node("Gather", &[past, &i0], vec![crate::builder::attr_i("axis", 0)]);
        let pv = b.node("Gather", &[past, &i1], vec![crate::builder::attr_i("axis", 0)]);
        kh = b.concat(&[&pk, &kh], 2);
        vh = b.concat(&[&pv, &vh], 2);
    }
    if cx.used(n, 1) {
        let k5 = b.unsqueeze(&kh, &[0]);
        let v5 = b.unsqueeze(&vh, &[0]);
        let present = b.concat(&[&k5, &v5], 0);
        bind(b, &present, &n.output[1]);
    }
    let m = masks(b, n, cx, &qh, &kh, input(n, 3), input(n, 5))?;
    let scale = heads::scale_factor(b, &qh, attr_float(n, "scale", 0.0));
    let o = heads::attend(b, &qh, &kh, &vh, &scale, &m);
    let o = heads::merge_heads(b, &o);
    bind(b, &o, &n.output[0]);
    Ok(())
}

/// MultiHeadAttention with separate query, key, value [B, S|L, N*H], optional
/// bias [3 N*H], key padding mask, attention bias and past key/value [B, N, P, H].
pub(crate) fn multi_head_attention(b: &mut GraphBuilder, n: &NodeProto, cx: &Ctx) -> Result<()> {
    let heads_n = num_heads(n)?;
    let q = required(n, 0, "query")?;
    let (Some(k), Some(v)) = (input(n, 1), input(n, 2)) else {
        bail!(
            Unsupported,
            "MultiHeadAttention node '{}' packs Q, K and V into its query input; attrpatch decomposes the form with \
             separate key and value inputs",
            n.name
        );
    };
    for (what, t) in [("key", k), ("value", v)] {
        if cx.declared_rank(t).is_some_and(|r| r != 3) {
            bail!(
                Unsupported,
                "MultiHeadAttention node '{}': {what} '{t}' is not [batch, length, hidden]; attrpatch decomposes \
                 only that layout",
                n.name
            );
        }
    }
    let (mut q, mut k, mut v) = (q.to_string(), k.to_string(), v.to_string());
    if let Some(bias) = input(n, 3) {
        let p = b.split_equal(bias, 0, 3);
        q = b.add(&q, &p[0]);
        k = b.add(&k, &p[1]);
        v = b.add(&v, &p[2]);
    }
    let qh = heads::split_heads(b, &q, heads_n);
    let mut kh = heads::split_heads(b, &k, heads_n);
    let mut vh = heads::split_heads(b, &v, heads_n);
    if let (Some(pk), Some(pv)) = (input(n, 6), input(n, 7)) {
        kh = b.concat(&[pk, &kh], 2);
        vh = b.concat(&[pv, &vh], 2);
    }
    if cx.used(n, 1) {
        bind(b, &kh, &n.output[1]);
    }
    if cx.used(n, 2) {
        bind(b, &vh, &n.output[2]);
    }
    refuse_used_output(cx, n, 3, "the scaled Q K^T scores")?;
    let m = masks(b, n, cx, &qh, &kh, input(n, 4), input(n, 5))?;
    let scale = heads::scale_factor(b, &qh, attr_float(n, "scale", 0.0));
    let o = heads::attend(b, &qh, &kh, &vh, &scale, &m);
    let o = heads::merge_heads(b, &o);
    bind(b, &o, &n.output[0]);
    Ok(())
}
