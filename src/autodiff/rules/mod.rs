//! Gradient rules, one file per op family. A rule gets the gradients of the
//! node's outputs (None where an output has none) and which inputs need a
//! gradient; it returns one entry per input and emits default-domain ONNX only.

mod elementwise;
mod matmul;
mod norm;
mod reduce;
mod shape;
mod softmax;

use super::ctx::RuleCtx;
use crate::error::Result;

pub type Grads = Vec<Option<String>>;
pub type Rule = fn(&mut RuleCtx, &[Option<String>], &[bool]) -> Result<Grads>;

/// Every op type that has a rule, for documentation and `inspect`.
pub const SUPPORTED: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Neg",
    "Sqrt",
    "Reciprocal",
    "Tanh",
    "Exp",
    "Log",
    "Sigmoid",
    "Erf",
    "Relu",
    "Where",
    "Identity",
    "Cast",
    "MatMul",
    "Gemm",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Split",
    "Concat",
    "Slice",
    "Expand",
    "ReduceMean",
    "ReduceSum",
    "Softmax",
    "LogSoftmax",
    "LayerNormalization",
];

pub fn lookup(op: &str, domain: &str) -> Option<Rule> {
    if !(domain.is_empty() || domain == "ai.onnx") {
        return None;
    }
    Some(match op {
        "Add" => elementwise::add,
        "Sub" => elementwise::sub,
        "Mul" => elementwise::mul,
        "Div" => elementwise::div,
        "Pow" => elementwise::pow,
        "Neg" => elementwise::neg,
        "Sqrt" => elementwise::sqrt,
        "Reciprocal" => elementwise::reciprocal,
        "Tanh" => elementwise::tanh,
        "Exp" => elementwise::exp,
        "Log" => elementwise::log,
        "Sigmoid" => elementwise::sigmoid,
        "Erf" => elementwise::erf,
        "Relu" => elementwise::relu,
        "Where" => elementwise::where_,
        "Identity" => elementwise::identity,
        "Cast" => elementwise::cast,
        "MatMul" => matmul::matmul,
        "Gemm" => matmul::gemm,
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => shape::reshape_like_input,
        "Transpose" => shape::transpose,
        "Split" => shape::split,
        "Concat" => shape::concat,
        "Slice" => shape::slice,
        "Expand" => shape::expand,
        "ReduceMean" => reduce::reduce_mean,
        "ReduceSum" => reduce::reduce_sum,
        "Softmax" => softmax::softmax,
        "LogSoftmax" => softmax::log_softmax,
        "LayerNormalization" => norm::layer_norm,
        _ => return None,
    })
}

/// The single output gradient of a one-output op.
fn one(cx: &RuleCtx, g: &[Option<String>]) -> Result<String> {
    g.first().cloned().flatten().ok_or_else(|| cx.err("no gradient for its output"))
}
