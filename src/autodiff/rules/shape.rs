//! Ops that only move values around: the gradient moves them back.

use super::{one, Grads};
use crate::autodiff::ctx::RuleCtx;
use crate::error::Result;
use crate::onnx::builder::attr_i;

/// Reshape, Flatten, Squeeze, Unsqueeze: reshape the gradient to the input's shape.
pub fn reshape_like_input(cx: &mut RuleCtx, g: &[Option<String>], _need: &[bool]) -> Result<Grads> {
    let g = one(cx, g)?;
    let x = cx.input(0).to_string();
    Ok(vec![Some(cx.b.reshape_like(&g, &x))])
}

pub fn transpose(cx: &mut RuleCtx, g: &[Option<String>], _need: &[bool]) -> Result<Grads> {
    let g = one(cx, g)?;
    let x = cx.input(0).to_string();
    let rank = cx.rank(&x)?;
    let perm = cx.attr_ints("perm").unwrap_or_else(|| (0..rank as i64).rev().collect());
    let mut inv = vec![0i64; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        let p = cx.axis(p, rank)?;
        inv[p] = i as i64;
    }
    Ok(vec![Some(cx.b.transpose(&g, &inv))])
}

/// The gradients of the pieces, concatenated; zeros for pieces without one.
pub fn split(cx: &mut RuleCtx, g: &[Option<String>], _need: &[bool]) -> Result<Grads> {
    let x = cx.input(0).to_string();
    let axis = cx.attr_i("axis").unwrap_or(0);
    let dt = cx.dtype(&x);
    let mut parts = vec![];
    for (k, gk) in g.iter().enumerate() {
        parts.push(match gk {
            Some(gk) => gk.clone(),
            None => {
                let o = cx.output(k).to_string();
                cx.b.zeros_like(&o, dt)
            }
        });
    }
    let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
    Ok(vec![Some(cx.b.concat(&refs, axis))])
}

/// The gradient split back into the inputs' extents along the axis.
pub fn concat(cx: &mut RuleCtx, g: &[Option<String>], need: &[bool]) -> Result<Grads> {
    if cx.b.opset < 13 {
        // The split sizes are computed at run time: an input of Split from opset 13 on.
        return Err(
            cx.err(format!("needs opset 13 or newer (Split with sizes as an input), the model has {}", cx.b.opset))
        );
    }
    let g = one(cx, g)?;
    let rank = cx.rank(cx.output(0))?;
    let axis = cx.axis(cx.attr_i("axis").unwrap_or(0), rank)? as i64;
    let start = cx.b.const_i64s(&[axis]);
    let end = cx.b.const_i64s(&[axis + 1]);
    let mut sizes = vec![];
    for k in 0..cx.node.input.len() {
        let x = cx.input(k).to_string();
        let s = cx.b.shape(&x);
        sizes.push(cx.b.node("Slice", &[&s, &start, &end], vec![]));
    }
    let refs: Vec<&str> = sizes.iter().map(|s| s.as_str()).collect();
    let split = cx.b.concat(&refs, 0);
    let outs = cx.b.node_n("Split", &[&g, &split], need.len(), vec![attr_i("axis", axis)]);
    Ok(outs.into_iter().zip(need).map(|(o, &n)| n.then_some(o)).collect())
}

pub fn expand(cx: &mut RuleCtx, g: &[Option<String>], _need: &[bool]) -> Result<Grads> {
    let g = one(cx, g)?;
    let (x, y) = (cx.input(0).to_string(), cx.output(0).to_string());
    Ok(vec![Some(cx.reduce_to(&g, &y, &x)?)])
}

/// y = x[starts:ends] along `axes` (step 1): the gradient is `g` padded
/// with zeros back to x's extent. Bounds and pads are computed at run time
/// from the starts/ends tensors and Shape(x), so computed bounds (rotary
/// halves `x[..., : d // 2]`) and dynamic axes work for every sequence length.
pub fn slice(cx: &mut RuleCtx, g: &[Option<String>], _need: &[bool]) -> Result<Grads> {
    let g = one(cx, g)?;
    let x = cx.input(0).to_string();
    let rank = cx.rank(&x)?;
    let n_bounds = cx.facts.shape(cx.input(1)).and_then(|s| match s {
        [crate::onnx::facts::Dim::Known(n)] => Some(*n as usize),
        _ => None,
    });
    let axes = if cx.input(3).is_empty() {
        let n = n_bounds.ok_or_else(|| cx.err("the number of sliced axes is unknown"))?;
        (0..n as i64).collect()
    } else {
        cx.const_ints(3)?
    };
    if !cx.input(4).is_empty() {
        let steps = cx.const_ints(4)?;
        if steps.iter().any(|&s| s != 1) {
            return Err(cx.err(format!("steps {steps:?}: only step 1 is supported")));
        }
    }
    let to_i64 = |cx: &mut RuleCtx, t: &str| {
        if cx.dtype(t) == crate::onnx::consts::INT64 {
            t.to_string()
        } else {
            cx.b.cast(t, crate::onnx::consts::INT64)
        }
    };
    let (starts_in, ends_in) = (cx.input(1).to_string(), cx.input(2).to_string());
    let starts = to_i64(cx, &starts_in);
    let ends = to_i64(cx, &ends_in);
    let shape = cx.b.shape(&x);
    let zero = cx.b.const_i64s(&[0]);
    let mut before = vec![zero.clone(); rank];
    let mut after = vec![zero.clone(); rank];
    for (k, &a) in axes.iter().enumerate() {
        let a = cx.axis(a, rank)?;
        let dim = pick(cx, &shape, a as i64);
        let s = pick(cx, &starts, k as i64);
        let e = pick(cx, &ends, k as i64);
        let begin = clamp_index(cx, &s, &dim, &zero);
        let end = clamp_index(cx, &e, &dim, &zero);
        let end = cx.b.node("Max", &[&end, &begin], vec![]);
        after[a] = cx.b.sub(&dim, &end);
        before[a] = begin;
    }
    let parts: Vec<&str> = before.iter().chain(&after).map(|s| s.as_str()).collect();
    let pads = cx.b.concat(&parts, 0);
    Ok(vec![Some(cx.b.node("Pad", &[&g, &pads], vec![]))])
}

/// Element `k` of a 1-D int64 tensor, as a 1-element tensor.
fn pick(cx: &mut RuleCtx, t: &str, k: i64) -> String {
    let (a, b) = (cx.b.const_i64s(&[k]), cx.b.const_i64s(&[k + 1]));
    cx.b.node("Slice", &[t, &a, &b], vec![])
}

/// A Slice bound as ONNX reads it: negative counts from the end, clamped to [0, dim].
fn clamp_index(cx: &mut RuleCtx, v: &str, dim: &str, zero: &str) -> String {
    let negative = cx.b.node("Less", &[v, zero], vec![]);
    let from_end = cx.b.add(v, dim);
    let adjusted = cx.b.node("Where", &[&negative, &from_end, v], vec![]);
    let low = cx.b.node("Max", &[&adjusted, zero], vec![]);
    cx.b.node("Min", &[&low, dim], vec![])
}
