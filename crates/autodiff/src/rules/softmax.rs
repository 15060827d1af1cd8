//! Softmax and LogSoftmax along one axis (opset >= 13 semantics).

use super::Grads;
use crate::ctx::RuleCtx;
use attrpatch_onnx::error::Result;

fn axis(cx: &RuleCtx) -> Result<i64> {
    // Before opset 13 (Log)Softmax normalised jointly over every axis from
    // `axis` on; this rule is for the single-axis form.
    if cx.b.opset < 13 {
        return Err(cx.err(format!(
            "opset {} semantics (normalising over all axes from `axis` on) are not supported; opset 13 or newer is",
            cx.b.opset
        )));
    }
    let rank = cx.rank(cx.input(0))?;
    Ok(cx.axis(cx.attr_i("axis").unwrap_or(-1), rank)? as i64)
}

/// dx = y * (g - sum(g * y, axis)).
pub fn softmax(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let y = cx.output(0);
    let ax = axis(cx)?;
    let gy = cx.b.mul(&g, y);
    let s = cx.b.reduce_sum(&gy, &[ax], true);
    let d = cx.b.sub(&g, &s);
    Ok(vec![Some(cx.b.mul(y, &d))])
}

/// dx = g - softmax(x) * sum(g, axis), softmax(x) = exp(y).
pub fn log_softmax(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let y = cx.output(0);
    let ax = axis(cx)?;
    let p = cx.b.node("Exp", &[y], vec![]);
    let s = cx.b.reduce_sum(&g, &[ax], true);
    let ps = cx.b.mul(&p, &s);
    Ok(vec![Some(cx.b.sub(&g, &ps))])
}
