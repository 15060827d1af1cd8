//! Ops that pick one of their arguments per element: Max, Min, Clip. The
//! gradient goes to whichever argument was picked.
//!
//! Ties (conventions, chosen once): Max/Min give the whole gradient to the
//! first input (in input order) equal to the result, so the gradients still
//! sum to g. Clip passes g to x on the closed interval [min, max] (as
//! PyTorch's clamp does), and to min/max where x lies strictly beyond them.

use super::elementwise::reduce_all;
use super::Grads;
use crate::ctx::RuleCtx;
use attrpatch_onnx::error::Result;

fn extremum(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let y = cx.output(0);
    let zeros = cx.b.zeros_like(&g, cx.dtype(y));
    let n = cx.node.input.len();
    let mut grads = vec![];
    let mut taken: Option<String> = None;
    for k in 0..n {
        let eq = cx.b.node("Equal", &[cx.input(k), y], vec![]);
        let picked = match &taken {
            None => eq.clone(),
            Some(t) => {
                let free = cx.b.node("Not", &[t], vec![]);
                cx.b.node("And", &[&eq, &free], vec![])
            }
        };
        grads.push(cx.needs(k).then(|| cx.b.node("Where", &[&picked, &g, &zeros], vec![])));
        if k + 1 < n {
            taken = Some(match taken {
                None => eq,
                Some(t) => cx.b.node("Or", &[&t, &eq], vec![]),
            });
        }
    }
    reduce_all(cx, grads)
}

pub fn max(cx: &mut RuleCtx) -> Result<Grads> {
    extremum(cx)
}

pub fn min(cx: &mut RuleCtx) -> Result<Grads> {
    extremum(cx)
}

/// Clip: bounds are inputs 1 and 2 from opset 11, attributes before.
pub fn clip(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let (x, y) = (cx.input(0), cx.output(0));
    let (lo, hi) = if cx.b.opset >= 11 {
        let pick = |k: usize| Some(cx.input(k)).filter(|s| !s.is_empty()).map(str::to_string);
        (pick(1), pick(2))
    } else {
        let lo = cx.attr_f("min").map(|v| v as f64);
        let hi = cx.attr_f("max").map(|v| v as f64);
        (lo.map(|v| cx.scalar(x, v)), hi.map(|v| cx.scalar(x, v)))
    };
    let zeros = cx.b.zeros_like(&g, cx.dtype(y));
    let below = lo.as_ref().map(|lo| cx.b.node("Less", &[x, lo], vec![]));
    let above = hi.as_ref().map(|hi| cx.b.node("Greater", &[x, hi], vec![]));
    let outside = match (&below, &above) {
        (Some(b), Some(a)) => Some(cx.b.node("Or", &[b, a], vec![])),
        (Some(b), None) => Some(b.clone()),
        (None, Some(a)) => Some(a.clone()),
        (None, None) => None,
    };
    let gx = match &outside {
        Some(o) => cx.b.node("Where", &[o, &zeros, &g], vec![]),
        None => g.clone(),
    };
    let mut grads = vec![cx.needs(0).then_some(gx)];
    let gate = |cx: &mut RuleCtx, m: &Option<String>, k: usize| match m {
        Some(m) if cx.needs(k) => Some(cx.b.node("Where", &[m, &g, &zeros], vec![])),
        _ => None,
    };
    if cx.b.opset >= 11 {
        // Below min the result is min (and above max, max). When min > max,
        // ONNX returns max everywhere; this rule does not model that case.
        let gl = gate(cx, &below, 1);
        let gh = gate(cx, &above, 2);
        grads.push(gl);
        grads.push(gh);
    }
    reduce_all(cx, grads)
}
