//! Slice with any steps: the gradient is `g` put back at the positions the
//! slice read, zeros elsewhere. Bounds are computed at run time from the
//! starts/ends tensors and Shape(x), so computed bounds (rotary halves
//! `x[..., : d // 2]`) and dynamic axes work for every sequence length.
//!
//! Axes with step 1 are one `Pad` (cheap, and every runtime has it); an axis
//! with another step (GPT-J's interleaved rotary reads `x[..., ::2]`, a
//! reversal reads `x[::-1]`) scatters `g` along that axis with
//! `ScatterElements` at the indices `Range(begin, end, step)`. The steps must
//! be constants: their signs decide how ONNX clamps the bounds.

use super::Grads;
use crate::ctx::RuleCtx;
use attrpatch_onnx::builder::{attr_i, attr_t};
use attrpatch_onnx::consts::{float_tensor, INT64};
use attrpatch_onnx::error::Result;
use attrpatch_onnx::facts::Dim;

pub fn slice(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let x = cx.input(0);
    let rank = cx.rank(x)?;
    let n_bounds = cx.facts.shape(cx.input(1)).and_then(|s| match s {
        [Dim::Known(n)] => Some(*n as usize),
        _ => None,
    });
    let axes = if cx.input(3).is_empty() {
        let n = n_bounds.ok_or_else(|| cx.err("the number of sliced axes is unknown"))?;
        (0..n as i64).collect()
    } else {
        cx.const_ints(3)?
    };
    let steps = if cx.input(4).is_empty() { vec![1; axes.len()] } else { cx.const_ints(4)? };
    if steps.len() != axes.len() {
        return Err(cx.err(format!("{} steps for {} axes", steps.len(), axes.len())));
    }
    if steps.contains(&0) {
        return Err(cx.err("a step of 0 is invalid ONNX"));
    }
    let bounds = (Bounds::of(cx, 1), Bounds::of(cx, 2));
    let shape = cx.b.shape(x);
    let zero = cx.b.const_i64s(&[0]);
    let one = cx.b.const_i64s(&[1]);

    // Axes with other steps first: each scatter restores that axis's full extent.
    let mut cur = g;
    for (k, (&a, &step)) in axes.iter().zip(&steps).enumerate() {
        if step == 1 {
            continue;
        }
        let a = cx.axis(a, rank)?;
        let dim = pick(cx, &shape, a as i64);
        let (begin, end) = if step > 0 {
            (bound(cx, &bounds.0, k, &dim, &zero, &dim), bound(cx, &bounds.1, k, &dim, &zero, &dim))
        } else {
            // ONNX: for negative steps, start is clamped to [0, dim-1] and end to [-1, dim-1].
            let last = cx.b.sub(&dim, &one);
            let minus1 = cx.b.const_i64s(&[-1]);
            (bound(cx, &bounds.0, k, &dim, &zero, &last), bound(cx, &bounds.1, k, &dim, &minus1, &last))
        };
        cur = scatter_axis(cx, &cur, a, rank, &dim, &begin, &end, step);
    }

    // Step-1 axes: pad with zeros before and after.
    if steps.iter().all(|&s| s != 1) {
        return Ok(vec![Some(cur)]);
    }
    let mut before = vec![zero.clone(); rank];
    let mut after = vec![zero.clone(); rank];
    for (k, (&a, &step)) in axes.iter().zip(&steps).enumerate() {
        if step != 1 {
            continue;
        }
        let a = cx.axis(a, rank)?;
        let dim = pick(cx, &shape, a as i64);
        let begin = bound(cx, &bounds.0, k, &dim, &zero, &dim);
        let end = bound(cx, &bounds.1, k, &dim, &zero, &dim);
        let end = cx.b.node("Max", &[&end, &begin], vec![]);
        after[a] = cx.b.sub(&dim, &end);
        before[a] = begin;
    }
    let parts: Vec<&str> = before.iter().chain(&after).map(|s| s.as_str()).collect();
    let pads = cx.b.concat(&parts, 0);
    Ok(vec![Some(cx.b.node("Pad", &[&cur, &pads], vec![]))])
}

/// `g` (extent of the slice along `axis`) scattered into zeros of extent `dim`
/// at indices `begin, begin + step, ...` (before `end`).
#[allow(clippy::too_many_arguments)]
fn scatter_axis(
    cx: &mut RuleCtx,
    g: &str,
    axis: usize,
    rank: usize,
    dim: &str,
    begin: &str,
    end: &str,
    step: i64,
) -> String {
    // begin + step * Range(0, count): a Range with step 1, since tract's
    // Range miscounts negative steps. count = ceil((end - begin) / step) >= 0.
    let (span, s_abs) = if step > 0 { (cx.b.sub(end, begin), step) } else { (cx.b.sub(begin, end), -step) };
    let (zero, round) = (cx.b.const_i64s(&[0]), cx.b.const_i64s(&[s_abs - 1]));
    let span = cx.b.node("Max", &[&span, &zero], vec![]);
    let span = cx.b.add(&span, &round);
    let s_abs = cx.b.const_i64s(&[s_abs]);
    let count = cx.b.div(&span, &s_abs);
    let scalar = cx.b.const_i64s(&[]);
    let count = cx.b.reshape(&count, &scalar);
    let (z0, o0) = (cx.b.const_i64s(&[0]), cx.b.const_i64s(&[1]));
    let (z0, o0) = (cx.b.reshape(&z0, &scalar), cx.b.reshape(&o0, &scalar));
    let k = cx.b.node("Range", &[&z0, &count, &o0], vec![]);
    let st = cx.b.const_i64s(&[step]);
    let offsets = cx.b.mul(&k, &st);
    let idx = cx.b.add(&offsets, begin);
    let mut along = vec![1i64; rank];
    along[axis] = -1;
    let along = cx.b.const_i64s(&along);
    let idx = cx.b.reshape(&idx, &along);
    let gshape = cx.b.shape(g);
    let idx = cx.b.node("Expand", &[&idx, &gshape], vec![]);
    // Zeros of g's shape with `dim` at `axis`.
    let mut pieces = vec![];
    if axis > 0 {
        let (s, e) = (cx.b.const_i64s(&[0]), cx.b.const_i64s(&[axis as i64]));
        pieces.push(cx.b.node("Slice", &[&gshape, &s, &e], vec![]));
    }
    pieces.push(dim.to_string());
    if axis + 1 < rank {
        let (s, e) = (cx.b.const_i64s(&[axis as i64 + 1]), cx.b.const_i64s(&[rank as i64]));
        pieces.push(cx.b.node("Slice", &[&gshape, &s, &e], vec![]));
    }
    let refs: Vec<&str> = pieces.iter().map(|s| s.as_str()).collect();
    let full = cx.b.concat(&refs, 0);
    let dt = cx.dtype(cx.input(0));
    let zeros = cx.b.node("ConstantOfShape", &[&full], vec![attr_t("value", float_tensor("value", dt, &[1], &[0.0]))]);
    cx.b.node("ScatterElements", &[&zeros, &idx, g], vec![attr_i("axis", axis as i64)])
}

/// The starts or ends of a Slice: constants (the usual case) or a tensor.
enum Bounds {
    Const(Vec<i64>),
    Tensor(String),
}

impl Bounds {
    fn of(cx: &mut RuleCtx, k: usize) -> Bounds {
        match cx.const_ints(k) {
            Ok(v) => Bounds::Const(v),
            Err(_) => Bounds::Tensor(int64(cx, cx.input(k))),
        }
    }
}

/// Bound `k` as ONNX reads it, clamped to [lo, hi]. Constant bounds are
/// resolved while building where their sign tells: "to the end" markers
/// (i64::MAX, i64::MIN) never reach the runtime, whose integer arithmetic on
/// them overflows (tract panics on `i64::MAX < 0`).
fn bound(cx: &mut RuleCtx, b: &Bounds, k: usize, dim: &str, lo: &str, hi: &str) -> String {
    const HUGE: i64 = 1 << 40;
    match b {
        Bounds::Const(v) => {
            let v = v.get(k).copied().unwrap_or(0);
            if v >= HUGE {
                return hi.to_string();
            }
            if v <= -HUGE {
                return lo.to_string();
            }
            let c = cx.b.const_i64s(&[v]);
            let adjusted = if v < 0 { cx.b.add(&c, dim) } else { c };
            let low = cx.b.node("Max", &[&adjusted, lo], vec![]);
            cx.b.node("Min", &[&low, hi], vec![])
        }
        Bounds::Tensor(t) => {
            let v = pick(cx, t, k as i64);
            clamp_index(cx, &v, dim, lo, hi)
        }
    }
}

fn int64(cx: &mut RuleCtx, t: &str) -> String {
    if cx.dtype(t) == INT64 {
        t.to_string()
    } else {
        cx.b.cast(t, INT64)
    }
}

/// Element `k` of a 1-D int64 tensor, as a 1-element tensor.
fn pick(cx: &mut RuleCtx, t: &str, k: i64) -> String {
    let (a, b) = (cx.b.const_i64s(&[k]), cx.b.const_i64s(&[k + 1]));
    cx.b.node("Slice", &[t, &a, &b], vec![])
}

/// A Slice bound as ONNX reads it: negative counts from the end, then clamped to [lo, hi].
fn clamp_index(cx: &mut RuleCtx, v: &str, dim: &str, lo: &str, hi: &str) -> String {
    let zero = cx.b.const_i64s(&[0]);
    let negative = cx.b.node("Less", &[v, &zero], vec![]);
    // min(v, 0) + dim: adding dim to a huge positive bound (i64::MAX) would overflow.
    let neg_part = cx.b.node("Min", &[v, &zero], vec![]);
    let from_end = cx.b.add(&neg_part, dim);
    let adjusted = cx.b.node("Where", &[&negative, &from_end, v], vec![]);
    let low = cx.b.node("Max", &[&adjusted, lo], vec![]);
    cx.b.node("Min", &[&low, hi], vec![])
}
