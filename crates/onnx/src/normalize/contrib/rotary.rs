//! Rotary position embeddings: the RotaryEmbedding contrib op, and the
//! rotation GroupQueryAttention applies inside itself (do_rotary). Pairs
//! (x_i, x_{i+d/2}) (or (x_2i, x_2i+1) when interleaved) of the first d =
//! 2 * cos_cache.shape[1] features turn by the cached angles; the rest pass.

use super::{attr_float, attr_int, bind, required, Ctx};
use crate::builder::GraphBuilder;
use crate::error::bail;
use crate::error::Result;
use crate::pb::NodeProto;

/// The static width of a cos/sin cache `[max positions, d/2]` (an initializer or Constant).
pub(crate) fn half_width(cx: &Ctx, n: &NodeProto, cache: &str) -> Result<i64> {
    match cx.constant_dims(cache) {
        Some(d) if d.len() == 2 => Ok(d[1]),
        _ => bail!(
            Unsupported,
            "{} node '{}': its cos/sin cache '{cache}' is not a constant [positions, rotary_dim/2] tensor; attrpatch \
             needs the cache as a weight to decompose the rotation",
            n.op_type,
            n.name
        ),
    }
}

/// Rotates the last axis of the rank-4 `x` [.., H]; `cos`, `sin` [.., d/2]
/// broadcast against `x[.., :d/2]`.
pub(crate) fn rotate(
    b: &mut GraphBuilder,
    x: &str,
    cos: &str,
    sin: &str,
    half: i64,
    head_size: Option<i64>,
    interleaved: bool,
) -> String {
    let d = 2 * half;
    let partial = head_size != Some(d);
    let xr = if partial { b.slice_axis(x, -1, 0, d) } else { x.to_string() };
    let rotated = if interleaved {
        let s = b.const_i64s(&[0, 0, 0, half, 2]);
        let pairs = b.reshape(&xr, &s);
        let p = b.split_equal(&pairs, -1, 2);
        let c = b.unsqueeze(cos, &[-1]);
        let sn = b.unsqueeze(sin, &[-1]);
        let (even, odd) = turn(b, &p[0], &p[1], &c, &sn);
        let both = b.concat(&[&even, &odd], -1);
        let s = b.const_i64s(&[0, 0, 0, d]);
        b.reshape(&both, &s)
    } else {
        let x1 = b.slice_axis(&xr, -1, 0, half);
        let x2 = b.slice_axis(&xr, -1, half, d);
        let (r1, r2) = turn(b, &x1, &x2, cos, sin);
        b.concat(&[&r1, &r2], -1)
    };
    if partial {
        let rest = b.slice_axis(x, -1, d, i64::MAX);
        b.concat(&[&rotated, &rest], -1)
    } else {
        rotated
    }
}

/// (a cos - b sin, b cos + a sin).
fn turn(b: &mut GraphBuilder, x1: &str, x2: &str, cos: &str, sin: &str) -> (String, String) {
    let a = b.mul(x1, cos);
    let c = b.mul(x2, sin);
    let r1 = b.sub(&a, &c);
    let d = b.mul(x2, cos);
    let e = b.mul(x1, sin);
    let r2 = b.add(&d, &e);
    (r1, r2)
}

/// com.microsoft RotaryEmbedding: input [B, S, N*H] or [B, N, S, H],
/// position_ids [B, S] (or [1]: an offset), cos_cache, sin_cache [P, d/2].
pub(crate) fn rotary_embedding_op(b: &mut GraphBuilder, n: &NodeProto, cx: &Ctx) -> Result<()> {
    if attr_int(n, "is_packed_batching", 0) != 0 || attr_float(n, "scale", 1.0) != 1.0 {
        bail!(
            Unsupported,
            "RotaryEmbedding node '{}' uses is_packed_batching or a scale other than 1, which attrpatch does not \
             decompose",
            n.name
        );
    }
    let x = required(n, 0, "input")?;
    let pos = required(n, 1, "position_ids")?;
    let cos_cache = required(n, 2, "cos_cache")?;
    let sin_cache = required(n, 3, "sin_cache")?;
    let half = half_width(cx, n, cos_cache)?;
    let interleaved = attr_int(n, "interleaved", 0) == 1;
    let num_heads = attr_int(n, "num_heads", 0);
    let rotary_dim = attr_int(n, "rotary_embedding_dim", 0);
    if rotary_dim != 0 && rotary_dim != 2 * half {
        bail!(
            Unsupported,
            "RotaryEmbedding node '{}': rotary_embedding_dim {rotary_dim} differs from twice the cache width {half}",
            n.name
        );
    }
    let x_rank = cx.declared_rank(x);
    let pos_rank = cx.declared_rank(pos).or_else(|| cx.constant_dims(pos).map(|d| d.len()));
    // Positions [B, S], or an offset plus 0..S-1.
    let seq_axis = if x_rank == Some(4) { 2 } else { 1 };
    let positions = match pos_rank {
        Some(2) => pos.to_string(),
        Some(1) => {
            let s = b.dim(x, seq_axis);
            let r = super::heads::arange(b, &s);
            let p = b.cast(pos, crate::consts::INT64);
            b.add(&p, &r)
        }
        _ => bail!(
            Unsupported,
            "RotaryEmbedding node '{}': the rank of position_ids '{pos}' is not declared (expected [batch, sequence] \
             or [1])",
            n.name
        ),
    };
    let cos = b.node("Gather", &[cos_cache, &positions], vec![]);
    let sin = b.node("Gather", &[sin_cache, &positions], vec![]);
    let y = match x_rank {
        Some(4) => {
            // [B, N, S, H]; cos [B, S, d/2] or [S, d/2] -> one axis for the heads.
            let (c, s) =
                if pos_rank == Some(2) { (b.unsqueeze(&cos, &[1]), b.unsqueeze(&sin, &[1])) } else { (cos, sin) };
            rotate(b, x, &c, &s, half, None, interleaved)
        }
        Some(3) => {
            // [B, S, N*H] as [B, S, N, H]; cos [B, S, 1, d/2].
            let shape = if num_heads > 0 { [0, 0, num_heads, -1] } else { [0, 0, -1, 2 * half] };
            let s4 = b.const_i64s(&shape);
            let x4 = b.reshape(x, &s4);
            let c = b.unsqueeze(&cos, &[-2]);
            let s = b.unsqueeze(&sin, &[-2]);
            let head = if num_heads > 0 { None } else { Some(2 * half) };
            let r = rotate(b, &x4, &c, &s, half, head, interleaved);
            let back = b.const_i64s(&[0, 0, -1]);
            b.reshape(&r, &back)
        }
        _ => bail!(
            Unsupported,
            "RotaryEmbedding node '{}': the rank of input '{x}' is not declared (expected 3 or 4)",
            n.name
        ),
    };
    bind(b, &y, &n.output[0]);
    Ok(())
}
