//! Ops that only move values around: the gradient moves them back.

use super::Grads;
use crate::ctx::RuleCtx;
use attrpatch_onnx::builder::attr_i;
use attrpatch_onnx::error::Result;

/// Reshape, Flatten, Squeeze, Unsqueeze: reshape the gradient to the input's shape.
pub fn reshape_like_input(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let x = cx.input(0);
    Ok(vec![Some(cx.b.reshape_like(&g, x))])
}

pub fn transpose(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let x = cx.input(0);
    let rank = cx.rank(x)?;
    let perm = cx.attr_ints("perm").unwrap_or_else(|| (0..rank as i64).rev().collect());
    let mut inv = vec![0i64; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        let p = cx.axis(p, rank)?;
        inv[p] = i as i64;
    }
    Ok(vec![Some(cx.b.transpose(&g, &inv))])
}

/// The gradients of the pieces, concatenated; zeros for pieces without one.
pub fn split(cx: &mut RuleCtx) -> Result<Grads> {
    let x = cx.input(0);
    let axis = cx.attr_i("axis").unwrap_or(0);
    let dt = cx.dtype(x);
    let mut parts = vec![];
    for (k, gk) in cx.out_grads.iter().enumerate() {
        parts.push(match gk {
            Some(gk) => gk.clone(),
            None => {
                let o = cx.output(k);
                cx.b.zeros_like(o, dt)
            }
        });
    }
    let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
    Ok(vec![Some(cx.b.concat(&refs, axis))])
}

/// The gradient split back into the inputs' extents along the axis.
pub fn concat(cx: &mut RuleCtx) -> Result<Grads> {
    if cx.b.opset < 13 {
        // The split sizes are computed at run time: an input of Split from opset 13 on.
        return Err(
            cx.err(format!("needs opset 13 or newer (Split with sizes as an input), the model has {}", cx.b.opset))
        );
    }
    let g = cx.grad()?;
    let rank = cx.rank(cx.output(0))?;
    let axis = cx.axis(cx.attr_i("axis").unwrap_or(0), rank)? as i64;
    let start = cx.b.const_i64s(&[axis]);
    let end = cx.b.const_i64s(&[axis + 1]);
    let mut sizes = vec![];
    for k in 0..cx.node.input.len() {
        let x = cx.input(k);
        let s = cx.b.shape(x);
        sizes.push(cx.b.node("Slice", &[&s, &start, &end], vec![]));
    }
    let refs: Vec<&str> = sizes.iter().map(|s| s.as_str()).collect();
    let split = cx.b.concat(&refs, 0);
    let outs = cx.b.node_n("Split", &[&g, &split], cx.need.len(), vec![attr_i("axis", axis)]);
    Ok(outs.into_iter().zip(cx.need).map(|(o, &n)| n.then_some(o)).collect())
}

pub fn expand(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let (x, y) = (cx.input(0), cx.output(0));
    Ok(vec![Some(cx.reduce_to(&g, y, x)?)])
}

/// y = tile(x, repeats): y viewed as [r0, d0, r1, d1, ...] holds a copy of x
/// per repeat, so dx is g reshaped that way and summed over the repeat axes.
pub fn tile(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let (x, reps) = (cx.input(0), cx.input(1));
    let rank = cx.rank(x)?;
    if rank == 0 {
        return Err(cx.err("a scalar input cannot be tiled"));
    }
    let shape = cx.b.shape(x);
    let r2 = cx.b.unsqueeze(reps, &[1]);
    let s2 = cx.b.unsqueeze(&shape, &[1]);
    let pairs = cx.b.concat(&[&r2, &s2], 1);
    let minus1 = cx.b.const_i64s(&[-1]);
    let view = cx.b.reshape(&pairs, &minus1);
    let g2 = cx.b.reshape(&g, &view);
    let axes: Vec<i64> = (0..rank as i64).map(|i| 2 * i).collect();
    Ok(vec![Some(cx.b.reduce_sum(&g2, &axes, false))])
}

/// Pad in constant mode: dx is the middle of g. Constant non-negative pads
/// take a Slice; pads that are negative (cropping) or computed at run time
/// take Pad(g, -pads), which crops (ONNX Runtime's Pad accepts negative pads;
/// tract's does not, and says so). The pad value's gradient is the sum of g
/// over the padding. reflect/edge/wrap modes are refused by name.
pub fn pad(cx: &mut RuleCtx) -> Result<Grads> {
    let mode = cx.attr_s("mode").unwrap_or_else(|| "constant".into());
    if mode != "constant" {
        return Err(cx.err(format!("mode '{mode}' is not supported; only mode 'constant' has a gradient rule")));
    }
    let g = cx.grad()?;
    let x = cx.input(0);
    let rank = cx.rank(x)?;
    let from_input = cx.b.opset >= 11;
    let const_pads = if from_input { cx.const_ints(1).ok() } else { cx.attr_ints("pads") };
    if from_input && !cx.input(3).is_empty() {
        // tract, which analyses shapes here, cannot type Pad with axes (opset 18).
        return Err(cx.err("an axes input is not supported (pad every axis instead)"));
    }
    let axes: Vec<i64> = (0..rank as i64).collect();
    let dx = match const_pads {
        Some(p) if p.len() != 2 * axes.len() => {
            return Err(cx.err(format!("{} pads for {} axes", p.len(), axes.len())));
        }
        Some(p) if p.iter().all(|&v| v >= 0) => {
            let n = axes.len();
            let starts = cx.b.const_i64s(&p[..n]);
            let shape = cx.b.shape(x);
            let ax = cx.b.const_i64s(&axes);
            let dims = cx.b.node("Gather", &[&shape, &ax], vec![]);
            let ends = cx.b.add(&starts, &dims);
            cx.b.node("Slice", &[&g, &starts, &ends, &ax], vec![])
        }
        Some(p) if !from_input => {
            let neg: Vec<i64> = p.iter().map(|v| -v).collect();
            cx.b.node("Pad", &[&g], vec![attrpatch_onnx::builder::attr_ints("pads", &neg)])
        }
        _ => {
            if !from_input {
                return Err(cx.err("no pads attribute"));
            }
            let neg = cx.b.neg(cx.input(1));
            cx.b.node("Pad", &[&g, &neg], vec![])
        }
    };
    let mut res = vec![Some(dx.clone())];
    if from_input && cx.needs(2) {
        // d value = sum(g) - sum(dx): every output element that is padding.
        let all: Vec<i64> = (0..rank as i64).collect();
        let sg = cx.b.reduce_sum(&g, &all, false);
        let sx = cx.b.reduce_sum(&dx, &all, false);
        let d = cx.b.sub(&sg, &sx);
        res.push(None);
        res.push(Some(cx.b.reshape_like(&d, cx.input(2))));
    }
    Ok(res)
}
