//! Softmax and LogSoftmax along one axis (opset >= 13 semantics).

use super::{one, Grads};
use crate::autodiff::ctx::RuleCtx;
use crate::error::Result;

fn axis(cx: &RuleCtx) -> Result<i64> {
    let rank = cx.rank(cx.input(0))?;
    Ok(cx.axis(cx.attr_i("axis").unwrap_or(-1), rank)? as i64)
}

/// dx = y * (g - sum(g * y, axis)).
pub fn softmax(cx: &mut RuleCtx, g: &[Option<String>], _need: &[bool]) -> Result<Grads> {
    let g = one(cx, g)?;
    let y = cx.output(0).to_string();
    let ax = axis(cx)?;
    let gy = cx.b.mul(&g, &y);
    let s = cx.b.reduce_sum(&gy, &[ax], true);
    let d = cx.b.sub(&g, &s);
    Ok(vec![Some(cx.b.mul(&y, &d))])
}

/// dx = g - softmax(x) * sum(g, axis), softmax(x) = exp(y).
pub fn log_softmax(cx: &mut RuleCtx, g: &[Option<String>], _need: &[bool]) -> Result<Grads> {
    let g = one(cx, g)?;
    let y = cx.output(0).to_string();
    let ax = axis(cx)?;
    let p = cx.b.node("Exp", &[&y], vec![]);
    let s = cx.b.reduce_sum(&g, &[ax], true);
    let ps = cx.b.mul(&p, &s);
    Ok(vec![Some(cx.b.sub(&g, &ps))])
}
