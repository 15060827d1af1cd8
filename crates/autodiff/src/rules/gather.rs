//! Gathers of float data (integer indices carry no gradient). Indices may
//! repeat, so the gradient adds every read of an element back into it.
//!
//! `Gather` uses a one-hot matrix product, which every opset and both
//! runtimes have: with x viewed as [pre, dim, post] and the indices flattened
//! to n, dx = onehot[dim, n] @ g[pre, n, post], onehot = (Range(dim) == indices)
//! (not the OneHot op, which ONNX Runtime lacks for float64). It costs n x dim
//! floats, small for the gathers on a hook-to-metric path (a position, a
//! few rows). `GatherElements` and `GatherND` scatter-add into zeros
//! (`ScatterElements` / `ScatterND` with `reduction = "add"`, opset 16 on).
//! The scatters themselves (MoE's `index_add_`) and TopK (routing weights)
//! read their gradients back with the matching gather.

use super::Grads;
use crate::ctx::RuleCtx;
use attrpatch_onnx::builder::attr_i;
use attrpatch_onnx::consts::INT64;
use attrpatch_onnx::error::Result;
use attrpatch_onnx::pb::{attribute_proto::AttributeType, AttributeProto};

fn attr_s(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}

pub fn gather(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let (x, idx) = (cx.input(0), cx.input(1));
    let rank = cx.rank(x)?;
    let a = cx.axis(cx.attr_i("axis").unwrap_or(0), rank)?;
    let dt = cx.dtype(x);
    let shape = cx.b.shape(x);
    let pre = prod_of(cx, &shape, 0, a);
    let post = prod_of(cx, &shape, a + 1, rank);
    let minus1 = cx.b.const_i64s(&[-1]);
    let view = cx.b.concat(&[&pre, &minus1, &post], 0);
    let g3 = cx.b.reshape(&g, &view);
    let flat = cx.b.reshape(idx, &minus1);
    let flat = if cx.dtype(idx) == INT64 { flat } else { cx.b.cast(&flat, INT64) };
    let (s, e) = (cx.b.const_i64s(&[a as i64]), cx.b.const_i64s(&[a as i64 + 1]));
    let depth = cx.b.node("Slice", &[&shape, &s, &e], vec![]);
    // Negative indices count from the end.
    let zero = cx.b.const_i64s(&[0]);
    let negative = cx.b.node("Less", &[&flat, &zero], vec![]);
    let wrapped = cx.b.add(&flat, &depth);
    let flat = cx.b.node("Where", &[&negative, &wrapped, &flat], vec![]);
    // onehot[d, i] = (flat[i] == d): [dim, n], so that the product sums over the reads.
    let scalar = cx.b.const_i64s(&[]);
    let (z0, d0) = (cx.b.reshape(&zero, &scalar), cx.b.reshape(&depth, &scalar));
    let one = cx.b.const_i64s(&[1]);
    let one0 = cx.b.reshape(&one, &scalar);
    let positions = cx.b.node("Range", &[&z0, &d0, &one0], vec![]);
    let column = cx.b.unsqueeze(&positions, &[1]);
    let row = cx.b.unsqueeze(&flat, &[0]);
    let hit = cx.b.node("Equal", &[&column, &row], vec![]);
    let onehot = cx.b.cast(&hit, dt);
    let dx = cx.b.matmul(&onehot, &g3);
    Ok(vec![Some(cx.b.reshape(&dx, &shape))])
}

/// The product of `shape[from..to]` as a 1-element tensor ([1] when empty).
fn prod_of(cx: &mut RuleCtx, shape: &str, from: usize, to: usize) -> String {
    if from >= to {
        return cx.b.const_i64s(&[1]);
    }
    let (s, e) = (cx.b.const_i64s(&[from as i64]), cx.b.const_i64s(&[to as i64]));
    let part = cx.b.node("Slice", &[shape, &s, &e], vec![]);
    cx.b.reduce_prod(&part, &[0], true)
}

fn needs_scatter_add(cx: &RuleCtx, scatter: &str) -> Result<()> {
    if cx.b.opset < 16 {
        return Err(cx.err(format!(
            "its gradient needs {scatter} with reduction=\"add\" (opset 16 or newer); the model has opset {}",
            cx.b.opset
        )));
    }
    Ok(())
}

/// y[i][j] = x[idx[i][j]][j] (axis 0): dx = ScatterElements-add of g at idx.
pub fn gather_elements(cx: &mut RuleCtx) -> Result<Grads> {
    needs_scatter_add(cx, "ScatterElements")?;
    let g = cx.grad()?;
    let (x, idx) = (cx.input(0), cx.input(1));
    let rank = cx.rank(x)?;
    let a = cx.axis(cx.attr_i("axis").unwrap_or(0), rank)?;
    let zeros = cx.b.zeros_like(x, cx.dtype(x));
    let attrs = vec![attr_i("axis", a as i64), attr_s("reduction", "add")];
    Ok(vec![Some(cx.b.node("ScatterElements", &[&zeros, idx, &g], attrs))])
}

/// y = x[idx] by index tuples: dx = ScatterND-add of g at idx (batch_dims 0).
pub fn gather_nd(cx: &mut RuleCtx) -> Result<Grads> {
    if cx.attr_i("batch_dims").unwrap_or(0) != 0 {
        return Err(cx.err("batch_dims other than 0 is not supported"));
    }
    needs_scatter_add(cx, "ScatterND")?;
    let g = cx.grad()?;
    let (x, idx) = (cx.input(0), cx.input(1));
    let zeros = cx.b.zeros_like(x, cx.dtype(x));
    Ok(vec![Some(cx.b.node("ScatterND", &[&zeros, idx, &g], vec![attr_s("reduction", "add")]))])
}

/// The scatters' reduction attribute ("none" when absent).
fn reduction(cx: &RuleCtx) -> Result<String> {
    let r = cx.attr_s("reduction").unwrap_or_else(|| "none".into());
    match r.as_str() {
        "none" | "add" => Ok(r),
        other => Err(cx.err(format!("reduction '{other}' is not supported; 'none' and 'add' are"))),
    }
}

/// y = ScatterElements(data, idx, updates): d data = g, with the overwritten
/// positions zeroed when reduction is "none"; d updates = g read at idx.
pub fn scatter_elements(cx: &mut RuleCtx) -> Result<Grads> {
    let red = reduction(cx)?;
    let g = cx.grad()?;
    let (idx, upd) = (cx.input(1), cx.input(2));
    let rank = cx.rank(cx.input(0))?;
    let axis = attr_i("axis", cx.axis(cx.attr_i("axis").unwrap_or(0), rank)? as i64);
    let mut res = vec![None, None, None];
    if cx.needs(0) {
        res[0] = Some(if red == "add" {
            g.clone()
        } else {
            let zeros = cx.b.zeros_like(upd, cx.dtype(upd));
            cx.b.node("ScatterElements", &[&g, idx, &zeros], vec![axis.clone()])
        });
    }
    if cx.needs(2) {
        res[2] = Some(cx.b.node("GatherElements", &[&g, idx], vec![axis]));
    }
    Ok(res)
}

/// y = ScatterND(data, idx, updates): as ScatterElements, with index tuples.
pub fn scatter_nd(cx: &mut RuleCtx) -> Result<Grads> {
    let red = reduction(cx)?;
    let g = cx.grad()?;
    let (idx, upd) = (cx.input(1), cx.input(2));
    let mut res = vec![None, None, None];
    if cx.needs(0) {
        res[0] = Some(if red == "add" {
            g.clone()
        } else {
            let zeros = cx.b.zeros_like(upd, cx.dtype(upd));
            cx.b.node("ScatterND", &[&g, idx, &zeros], vec![])
        });
    }
    if cx.needs(2) {
        res[2] = Some(cx.b.node("GatherND", &[&g, idx], vec![]));
    }
    Ok(res)
}

/// (values, indices) = TopK(x): the values' gradient goes back to the positions
/// they were taken from (distinct within a row, so no reduction is needed).
pub fn top_k(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let x = cx.input(0);
    let rank = cx.rank(x)?;
    let axis = cx.axis(cx.attr_i("axis").unwrap_or(-1), rank)? as i64;
    let zeros = cx.b.zeros_like(x, cx.dtype(x));
    let idx = cx.output(1);
    Ok(vec![Some(cx.b.node("ScatterElements", &[&zeros, idx, &g], vec![attr_i("axis", axis)]))])
}
