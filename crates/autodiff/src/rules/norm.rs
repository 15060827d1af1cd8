//! LayerNormalization (opset 17+) and RMSNormalization (opset 23). The
//! statistics are recomputed from X with plain ops, since not every runtime
//! fills the optional Mean/InvStdDev outputs.

use super::Grads;
use crate::ctx::RuleCtx;
use attrpatch_onnx::error::Result;

/// With x̂ = (x - mean) * r, r = 1/sqrt(var + eps), dx̂ = g * scale:
/// dx = r * (dx̂ - mean(dx̂) - x̂ * mean(dx̂ * x̂)) over the normalised axes.
pub fn layer_norm(cx: &mut RuleCtx) -> Result<Grads> {
    if cx.out_grads.iter().skip(1).any(|x| x.is_some()) {
        return Err(cx.err("gradients through the Mean/InvStdDev outputs are not supported"));
    }
    let g = cx.grad()?;
    let (x, scale) = (cx.input(0), cx.input(1));
    let rank = cx.rank(x)?;
    let axis = cx.axis(cx.attr_i("axis").unwrap_or(-1), rank)?;
    let axes: Vec<i64> = (axis as i64..rank as i64).collect();
    let eps = cx.attr_f("epsilon").unwrap_or(1e-5) as f64;

    let b = &mut *cx.b;
    let mu = b.reduce_mean(x, &axes, true);
    let xc = b.sub(x, &mu);
    let xc2 = b.mul(&xc, &xc);
    let var = b.reduce_mean(&xc2, &axes, true);
    let dt = cx.facts.dtype(x).unwrap_or(attrpatch_onnx::consts::FLOAT);
    let eps_t = b.const_scalar(dt, eps);
    let ve = b.add(&var, &eps_t);
    let sd = b.node("Sqrt", &[&ve], vec![]);
    let r = b.node("Reciprocal", &[&sd], vec![]);
    let xhat = b.mul(&xc, &r);

    let mut res = vec![None; cx.node.input.len()];
    if cx.needs(0) {
        let b = &mut *cx.b;
        let dxhat = b.mul(&g, scale);
        let m1 = b.reduce_mean(&dxhat, &axes, true);
        let dx_xh = b.mul(&dxhat, &xhat);
        let m2 = b.reduce_mean(&dx_xh, &axes, true);
        let t = b.mul(&xhat, &m2);
        let d1 = b.sub(&dxhat, &m1);
        let d2 = b.sub(&d1, &t);
        res[0] = Some(b.mul(&r, &d2));
    }
    let sx = cx.shape(x)?;
    if cx.needs(1) {
        let gx = cx.b.mul(&g, &xhat);
        res[1] = Some(cx.reduce_shape_to(&gx, &sx, scale)?);
    }
    if cx.needs(2) {
        let bias = cx.input(2);
        res[2] = Some(cx.reduce_shape_to(&g, &sx, bias)?);
    }
    Ok(res)
}

/// RMSNormalization (opset 23): y = x * r * scale, r = 1/sqrt(mean(x^2) + eps)
/// over the axes from `axis` on. With x̂ = x * r and dx̂ = g * scale:
/// dx = r * (dx̂ - x̂ * mean(dx̂ * x̂)); d scale = g * x̂ summed over broadcast axes.
pub fn rms_norm(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let (x, scale) = (cx.input(0), cx.input(1));
    let rank = cx.rank(x)?;
    let axis = cx.axis(cx.attr_i("axis").unwrap_or(-1), rank)?;
    let axes: Vec<i64> = (axis as i64..rank as i64).collect();
    let eps = cx.attr_f("epsilon").unwrap_or(1e-5) as f64;
    let dt = cx.dtype(x);

    let b = &mut *cx.b;
    let x2 = b.mul(x, x);
    let ms = b.reduce_mean(&x2, &axes, true);
    let eps_t = b.const_scalar(dt, eps);
    let ve = b.add(&ms, &eps_t);
    let sd = b.node("Sqrt", &[&ve], vec![]);
    let r = b.node("Reciprocal", &[&sd], vec![]);
    let xhat = b.mul(x, &r);

    let mut res = vec![None; cx.node.input.len()];
    if cx.needs(0) {
        let b = &mut *cx.b;
        let dxhat = b.mul(&g, scale);
        let dx_xh = b.mul(&dxhat, &xhat);
        let m = b.reduce_mean(&dx_xh, &axes, true);
        let t = b.mul(&xhat, &m);
        let d = b.sub(&dxhat, &t);
        res[0] = Some(b.mul(&r, &d));
    }
    if cx.needs(1) {
        let sx = cx.shape(x)?;
        let gx = cx.b.mul(&g, &xhat);
        res[1] = Some(cx.reduce_shape_to(&gx, &sx, scale)?);
    }
    Ok(res)
}
