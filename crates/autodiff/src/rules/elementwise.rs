//! Elementwise ops. Binary ops broadcast, so each input's gradient is summed
//! back to that input's shape (`reduce_to`).

use super::Grads;
use crate::ctx::RuleCtx;
use attrpatch_onnx::error::Result;

/// Input gradients `grads[k]` (computed at output shape) reduced to inputs' shapes.
pub(super) fn reduce_all(cx: &mut RuleCtx, grads: Vec<Option<String>>) -> Result<Grads> {
    let out = cx.output(0);
    let mut res = vec![];
    for (k, gk) in grads.into_iter().enumerate() {
        res.push(match gk {
            Some(gk) if cx.needs(k) => {
                let x = cx.input(k);
                Some(cx.reduce_to(&gk, out, x)?)
            }
            _ => None,
        });
    }
    Ok(res)
}

pub fn add(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    reduce_all(cx, vec![Some(g.clone()), Some(g)])
}

pub fn sub(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let gb = cx.needs(1).then(|| cx.b.neg(&g));
    reduce_all(cx, vec![Some(g), gb])
}

pub fn mul(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let (a, b) = (cx.input(0), cx.input(1));
    let ga = cx.needs(0).then(|| cx.b.mul(&g, b));
    let gb = cx.needs(1).then(|| cx.b.mul(&g, a));
    reduce_all(cx, vec![ga, gb])
}

/// y = a / b: da = g / b, db = -g * y / b.
pub fn div(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let (b, y) = (cx.input(1), cx.output(0));
    let ga = cx.needs(0).then(|| cx.b.div(&g, b));
    let gb = cx.needs(1).then(|| {
        let gy = cx.b.mul(&g, y);
        let q = cx.b.div(&gy, b);
        cx.b.neg(&q)
    });
    reduce_all(cx, vec![ga, gb])
}

/// y = a ^ p: da = g * p * a^(p-1); dp = g * y * ln(a).
pub fn pow(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let (a, p, y) = (cx.input(0), cx.input(1), cx.output(0));
    let ga = if cx.needs(0) {
        // Squares and cubes (GELU's x^3) are common: a product is much cheaper than Pow.
        let const_p =
            cx.const_floats(1).or_else(|| cx.const_ints(1).ok().map(|v| v.iter().map(|&x| x as f64).collect()));
        let small = match const_p.as_deref() {
            Some([p]) if *p == 2.0 || *p == 3.0 => Some(*p),
            _ => None,
        };
        if let Some(p) = small {
            let k = cx.scalar(a, p);
            let base = if p == 2.0 { a.to_string() } else { cx.b.mul(a, a) };
            let t = cx.b.mul(&base, &k);
            Some(cx.b.mul(&g, &t))
        } else {
            // The exponent may be an integer tensor: compute in a's type.
            let dt = cx.dtype(a);
            let pf = if cx.dtype(p) == dt { p.to_string() } else { cx.b.cast(p, dt) };
            let one_ = cx.scalar(a, 1.0);
            let pm1 = cx.b.sub(&pf, &one_);
            let apm1 = cx.b.node("Pow", &[a, &pm1], vec![]);
            let t = cx.b.mul(&pf, &apm1);
            Some(cx.b.mul(&g, &t))
        }
    } else {
        None
    };
    let gp = if cx.needs(1) {
        let ln = cx.b.node("Log", &[a], vec![]);
        let t = cx.b.mul(y, &ln);
        Some(cx.b.mul(&g, &t))
    } else {
        None
    };
    reduce_all(cx, vec![ga, gp])
}

pub fn neg(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    Ok(vec![Some(cx.b.neg(&g))])
}

/// y = sqrt(x): dx = g * 0.5 / y.
pub fn sqrt(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let y = cx.output(0);
    let half = cx.scalar(y, 0.5);
    let t = cx.b.div(&half, y);
    Ok(vec![Some(cx.b.mul(&g, &t))])
}

/// y = tanh(x): dx = g * (1 - y^2).
pub fn tanh(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let y = cx.output(0);
    let one_ = cx.scalar(y, 1.0);
    let y2 = cx.b.mul(y, y);
    let t = cx.b.sub(&one_, &y2);
    Ok(vec![Some(cx.b.mul(&g, &t))])
}

/// y = 1/x: dx = -g * y^2.
pub fn reciprocal(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let y = cx.output(0);
    let y2 = cx.b.mul(y, y);
    let t = cx.b.mul(&g, &y2);
    Ok(vec![Some(cx.b.neg(&t))])
}

pub fn exp(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let y = cx.output(0);
    Ok(vec![Some(cx.b.mul(&g, y))])
}

pub fn log(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let x = cx.input(0);
    Ok(vec![Some(cx.b.div(&g, x))])
}

/// y = sigmoid(x): dx = g * y * (1 - y).
pub fn sigmoid(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let y = cx.output(0);
    let one_ = cx.scalar(y, 1.0);
    let omy = cx.b.sub(&one_, y);
    let t = cx.b.mul(y, &omy);
    Ok(vec![Some(cx.b.mul(&g, &t))])
}

/// y = erf(x): dx = g * 2/sqrt(pi) * exp(-x^2).
pub fn erf(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let x = cx.input(0);
    let x2 = cx.b.mul(x, x);
    let nx2 = cx.b.neg(&x2);
    let e = cx.b.node("Exp", &[&nx2], vec![]);
    let c = cx.scalar(x, 2.0 / std::f64::consts::PI.sqrt());
    let t = cx.b.mul(&e, &c);
    Ok(vec![Some(cx.b.mul(&g, &t))])
}

/// y = relu(x): dx = g where x > 0.
pub fn relu(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let x = cx.input(0);
    let zero = cx.scalar(x, 0.0);
    let pos = cx.b.node("Greater", &[x, &zero], vec![]);
    let z = cx.b.zeros_like(&g, cx.dtype(x));
    Ok(vec![Some(cx.b.node("Where", &[&pos, &g, &z], vec![]))])
}

/// y = where(c, a, b): da = g where c, db = g where not c.
pub fn where_(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let c = cx.input(0);
    let y = cx.output(0);
    let z = cx.b.zeros_like(&g, cx.dtype(y));
    let ga = cx.needs(1).then(|| cx.b.node("Where", &[c, &g, &z], vec![]));
    let gb = cx.needs(2).then(|| cx.b.node("Where", &[c, &z, &g], vec![]));
    reduce_all(cx, vec![None, ga, gb])
}

pub fn identity(cx: &mut RuleCtx) -> Result<Grads> {
    Ok(vec![Some(cx.grad()?)])
}

/// Float-to-float casts pass the gradient back in the input's type.
pub fn cast(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let x = cx.input(0);
    let (dx, dy) = (cx.dtype(x), cx.dtype(cx.output(0)));
    Ok(vec![Some(if dx == dy { g } else { cx.b.cast(&g, dx) })])
}

/// y = |x|: dx = g * sign(x) (0 at x = 0, as PyTorch).
pub fn abs(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let s = cx.b.node("Sign", &[cx.input(0)], vec![]);
    Ok(vec![Some(cx.b.mul(&g, &s))])
}

/// y = sin(x): dx = g * cos(x).
pub fn sin(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let c = cx.b.node("Cos", &[cx.input(0)], vec![]);
    Ok(vec![Some(cx.b.mul(&g, &c))])
}

/// y = cos(x): dx = -g * sin(x).
pub fn cos(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let s = cx.b.node("Sin", &[cx.input(0)], vec![]);
    let t = cx.b.mul(&g, &s);
    Ok(vec![Some(cx.b.neg(&t))])
}
