//! Reductions: the gradient is broadcast back over the reduced axes.

use super::Grads;
use crate::ctx::RuleCtx;
use attrpatch_onnx::error::Result;

/// The reduced axes, normalised and sorted; all axes when none are given.
fn reduced_axes(cx: &RuleCtx, rank: usize, axes_input_from: i64) -> Result<Option<Vec<i64>>> {
    let raw = if cx.b.opset >= axes_input_from {
        if cx.input(1).is_empty() {
            None
        } else {
            Some(cx.const_ints(1)?)
        }
    } else {
        cx.attr_ints("axes")
    };
    let raw = raw.filter(|a| !a.is_empty());
    let Some(raw) = raw else {
        // No axes: all of them, unless noop_with_empty_axes makes it an identity.
        if cx.attr_i("noop_with_empty_axes") == Some(1) {
            return Ok(None);
        }
        return Ok(Some((0..rank as i64).collect()));
    };
    let mut axes = raw.iter().map(|&a| cx.axis(a, rank).map(|a| a as i64)).collect::<Result<Vec<_>>>()?;
    axes.sort_unstable();
    Ok(Some(axes))
}

/// Broadcasts `g` (the reduced output's gradient) back to x's shape.
fn spread(cx: &mut RuleCtx, g: &str, axes: &[i64]) -> String {
    let x = cx.input(0);
    let keep = cx.attr_i("keepdims").unwrap_or(1) == 1;
    let g = if keep { g.to_string() } else { cx.b.unsqueeze(g, axes) };
    cx.b.expand_to(&g, x)
}

fn reduce_grad(cx: &mut RuleCtx, axes_input_from: i64, mean: bool) -> Result<Grads> {
    let g = cx.grad()?;
    let x = cx.input(0);
    let rank = cx.rank(x)?;
    let Some(axes) = reduced_axes(cx, rank, axes_input_from)? else {
        return Ok(vec![Some(g)]);
    };
    let spread_g = spread(cx, &g, &axes);
    if !mean {
        return Ok(vec![Some(spread_g)]);
    }
    // mean = sum / count, count = size(x) / size(y).
    let dt = cx.dtype(x);
    let y = cx.output(0);
    let nx = cx.b.node("Size", &[x], vec![]);
    let ny = cx.b.node("Size", &[y], vec![]);
    let (nx, ny) = (cx.b.cast(&nx, dt), cx.b.cast(&ny, dt));
    let inv_count = cx.b.div(&ny, &nx);
    Ok(vec![Some(cx.b.mul(&spread_g, &inv_count))])
}

pub fn reduce_mean(cx: &mut RuleCtx) -> Result<Grads> {
    reduce_grad(cx, 18, true)
}

pub fn reduce_sum(cx: &mut RuleCtx) -> Result<Grads> {
    reduce_grad(cx, 13, false)
}
