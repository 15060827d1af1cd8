//! Smooth and piecewise-linear activations beyond the elementwise basics:
//! Gelu (opset 20, both `approximate` forms), Softplus, HardSigmoid.

use super::Grads;
use crate::ctx::RuleCtx;
use attrpatch_onnx::error::Result;
use std::f64::consts::PI;

/// approximate = "none": y = x Φ(x), dx = g (Φ(x) + x φ(x)).
/// approximate = "tanh": y = x/2 (1 + t), t = tanh(k (x + c x^3)), k = sqrt(2/π),
/// c = 0.044715; dx = g (1/2 (1 + t) + x/2 (1 - t^2) k (1 + 3 c x^2)).
pub fn gelu(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let x = cx.input(0);
    let approx = cx.attr_s("approximate").unwrap_or_else(|| "none".into());
    let d = match approx.as_str() {
        "none" => {
            let r = cx.scalar(x, std::f64::consts::FRAC_1_SQRT_2);
            let xr = cx.b.mul(x, &r);
            let e = cx.b.node("Erf", &[&xr], vec![]);
            let one = cx.scalar(x, 1.0);
            let half = cx.scalar(x, 0.5);
            let e1 = cx.b.add(&e, &one);
            let cdf = cx.b.mul(&e1, &half);
            let x2 = cx.b.mul(x, x);
            let mhalf = cx.scalar(x, -0.5);
            let ex = cx.b.mul(&x2, &mhalf);
            let ex = cx.b.node("Exp", &[&ex], vec![]);
            let norm = cx.scalar(x, 1.0 / (2.0 * PI).sqrt());
            let pdf = cx.b.mul(&ex, &norm);
            let xpdf = cx.b.mul(x, &pdf);
            cx.b.add(&cdf, &xpdf)
        }
        "tanh" => {
            let (k, c) = ((2.0 / PI).sqrt(), 0.044715);
            let x2 = cx.b.mul(x, x);
            let cs = cx.scalar(x, c);
            let cx2 = cx.b.mul(&x2, &cs);
            let one = cx.scalar(x, 1.0);
            let inner = cx.b.add(&cx2, &one); // 1 + c x^2
            let xi = cx.b.mul(x, &inner); // x + c x^3
            let ks = cx.scalar(x, k);
            let u = cx.b.mul(&xi, &ks);
            let t = cx.b.node("Tanh", &[&u], vec![]);
            let half = cx.scalar(x, 0.5);
            let t1 = cx.b.add(&t, &one);
            let left = cx.b.mul(&t1, &half);
            let t2 = cx.b.mul(&t, &t);
            let sech2 = cx.b.sub(&one, &t2);
            let c3 = cx.scalar(x, 3.0 * c);
            let c3x2 = cx.b.mul(&x2, &c3);
            let du = cx.b.add(&c3x2, &one);
            let du = cx.b.mul(&du, &ks);
            let hx = cx.b.mul(x, &half);
            let right = cx.b.mul(&hx, &sech2);
            let right = cx.b.mul(&right, &du);
            cx.b.add(&left, &right)
        }
        other => return Err(cx.err(format!("approximate = '{other}': expected 'none' or 'tanh'"))),
    };
    Ok(vec![Some(cx.b.mul(&g, &d))])
}

/// y = ln(1 + e^x): dx = g * sigmoid(x).
pub fn softplus(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let s = cx.b.node("Sigmoid", &[cx.input(0)], vec![]);
    Ok(vec![Some(cx.b.mul(&g, &s))])
}

/// y = max(0, min(1, alpha x + beta)): dx = g * alpha where 0 < alpha x + beta < 1.
pub fn hard_sigmoid(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let x = cx.input(0);
    let alpha = cx.attr_f("alpha").unwrap_or(0.2) as f64;
    let beta = cx.attr_f("beta").unwrap_or(0.5) as f64;
    let (a, b) = (cx.scalar(x, alpha), cx.scalar(x, beta));
    let ax = cx.b.mul(x, &a);
    let t = cx.b.add(&ax, &b);
    let (zero, one) = (cx.scalar(x, 0.0), cx.scalar(x, 1.0));
    let above = cx.b.node("Greater", &[&t, &zero], vec![]);
    let below = cx.b.node("Less", &[&t, &one], vec![]);
    let inside = cx.b.node("And", &[&above, &below], vec![]);
    let ga = cx.b.mul(&g, &a);
    let zeros = cx.b.zeros_like(&g, cx.dtype(x));
    Ok(vec![Some(cx.b.node("Where", &[&inside, &ga, &zeros], vec![]))])
}
