//! MatMul and Gemm. Batch dims of MatMul broadcast, so each operand's
//! gradient is summed back over the batch axes it was broadcast along.

use super::Grads;
use crate::ctx::RuleCtx;
use attrpatch_onnx::builder::{attr_f, attr_i};
use attrpatch_onnx::error::Result;
use attrpatch_onnx::facts::Dim;

/// Y = A @ B (numpy semantics, both operands of rank >= 2):
/// dA = G @ B^T, dB = A^T @ G, each reduced over broadcast batch axes.
///
/// When B is a matrix (a weight, in every transformer export) both products are
/// emitted as Gemm on the operands flattened to 2-D, with the transpose as Gemm's
/// flag: a `Transpose(W)` node on a constant would be folded by the runtime into
/// a transposed copy of every weight, doubling the model's memory.
pub fn matmul(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let (a, b, y) = (cx.input(0), cx.input(1), cx.output(0));
    let (ra, rb) = (cx.rank(a)?, cx.rank(b)?);
    if ra < 2 || rb < 2 {
        return Err(cx.err(format!("operands of rank {ra} and {rb}: only rank >= 2 is supported")));
    }
    if rb == 2 {
        if let [Dim::Known(k), Dim::Known(n)] = cx.shape(b)?[..] {
            let need = [cx.needs(0), cx.needs(1)];
            return Ok(matmul_by_matrix(cx, &g, a, b, ra, k, n, &need));
        }
    }
    let so = cx.shape(y)?;
    let batch = &so[..so.len() - 2];
    let mut res = vec![None, None];
    if cx.needs(0) {
        let bt = swap_last(cx, b, rb);
        let full = cx.b.matmul(&g, &bt);
        let mut sfull = batch.to_vec();
        sfull.extend_from_slice(&cx.shape(a)?[ra - 2..]);
        res[0] = Some(cx.reduce_shape_to(&full, &sfull, a)?);
    }
    if cx.needs(1) {
        let at = swap_last(cx, a, ra);
        let full = cx.b.matmul(&at, &g);
        let mut sfull = batch.to_vec();
        sfull.extend_from_slice(&cx.shape(b)?[rb - 2..]);
        res[1] = Some(cx.reduce_shape_to(&full, &sfull, b)?);
    }
    Ok(res)
}

/// Y = A @ B with B a [k, n] matrix: Y has A's batch axes, so with A and G
/// flattened to [rows, k] and [rows, n], dA = Gemm(G, B, transB) reshaped to
/// A's shape and dB = Gemm(A, G, transA), the sum over the batch included.
#[allow(clippy::too_many_arguments)]
fn matmul_by_matrix(cx: &mut RuleCtx, g: &str, a: &str, b: &str, ra: usize, k: i64, n: i64, need: &[bool]) -> Grads {
    let mut flat = |x: &str, cols: i64| -> String {
        if ra == 2 {
            return x.to_string();
        }
        let shape = cx.b.const_i64s(&[-1, cols]);
        cx.b.reshape(x, &shape)
    };
    let g2 = flat(g, n);
    let a2 = if need[1] { Some(flat(a, k)) } else { None };
    let mut res = vec![None, None];
    if need[0] {
        let d = cx.b.node("Gemm", &[&g2, b], vec![attr_i("transB", 1)]);
        res[0] = Some(if ra == 2 { d } else { cx.b.reshape_like(&d, a) });
    }
    if let Some(a2) = a2 {
        res[1] = Some(cx.b.node("Gemm", &[&a2, &g2], vec![attr_i("transA", 1)]));
    }
    res
}

fn swap_last(cx: &mut RuleCtx, x: &str, rank: usize) -> String {
    let mut perm: Vec<i64> = (0..rank as i64).collect();
    perm.swap(rank - 2, rank - 1);
    cx.b.transpose(x, &perm)
}

/// Y = alpha * op(A) @ op(B) + beta * C, op = optional transpose.
/// d op(A) = alpha * G @ op(B)^T, which is one Gemm on B with transB flipped;
/// likewise d op(B) = alpha * op(A)^T @ G.
pub fn gemm(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let (a, b) = (cx.input(0), cx.input(1));
    let alpha = cx.attr_f("alpha").unwrap_or(1.0);
    let beta = cx.attr_f("beta").unwrap_or(1.0);
    let ta = cx.attr_i("transA").unwrap_or(0);
    let tb = cx.attr_i("transB").unwrap_or(0);
    let mut res = vec![None, None, None];
    if cx.needs(0) {
        let d = cx.b.node("Gemm", &[&g, b], vec![attr_f("alpha", alpha), attr_i("transB", 1 - tb)]);
        res[0] = Some(if ta == 1 { cx.b.transpose(&d, &[1, 0]) } else { d });
    }
    if cx.needs(1) {
        let d = cx.b.node("Gemm", &[a, &g], vec![attr_f("alpha", alpha), attr_i("transA", 1 - ta)]);
        res[1] = Some(if tb == 1 { cx.b.transpose(&d, &[1, 0]) } else { d });
    }
    if cx.needs(2) {
        let y = cx.output(0);
        let c = cx.input(2);
        let gb = if beta == 1.0 {
            g.clone()
        } else {
            let s = cx.scalar(y, beta as f64);
            cx.b.mul(&g, &s)
        };
        res[2] = Some(cx.reduce_to(&gb, y, c)?);
    }
    Ok(res)
}
