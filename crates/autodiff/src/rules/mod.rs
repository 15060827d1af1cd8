//! Gradient rules, one file per op family, and the one table (`RULES`) that
//! says which op has which rule: `lookup`, `supported`, `inspect`, the book's (docs/src/method.md)
//! list and the tests' coverage check all read it. A rule sees the node's
//! output gradients and which inputs need one through its `RuleCtx`; it
//! returns one entry per input and emits default-domain ONNX only.
//!
//! Adding an op: write its rule in the family's file, add one line to
//! `RULES`, and a `grad_case!` in tests/gradients.rs (whose coverage test
//! fails until every op in `RULES` has one).
//!
//! Ops whose outputs are never floats (Equal, Less, Greater, Not, And, Or,
//! Shape, Size, ArgMax, NonZero, ...) carry no gradient and need no rule: the
//! sweep only follows float tensors.

mod activation;
mod einsum;
pub(crate) mod elementwise;
mod gather;
mod matmul;
mod norm;
mod reduce;
mod select;
mod shape;
mod slice;
mod softmax;

use super::ctx::RuleCtx;
use attrpatch_onnx::error::Result;

/// A rule's result: per input of the node, its gradient tensor, or None.
pub type Grads = Vec<Option<String>>;
/// Emits the backward nodes of `cx.node`; returns one gradient per input
/// (None where an input needs none).
pub type Rule = fn(&mut RuleCtx) -> Result<Grads>;

/// One row of the rule table.
pub struct RuleEntry {
    /// The op type, e.g. "MatMul".
    pub op: &'static str,
    /// "" is the default ONNX domain ("ai.onnx" is accepted as the same).
    pub domain: &'static str,
    /// The gradient rule for that op.
    pub rule: Rule,
}

const fn onnx(op: &'static str, rule: Rule) -> RuleEntry {
    RuleEntry { op, domain: "", rule }
}

/// Every op with a gradient rule, in the order the book lists them (docs/src/method.md).
pub static RULES: &[RuleEntry] = &[
    onnx("Add", elementwise::add),
    onnx("Sub", elementwise::sub),
    onnx("Mul", elementwise::mul),
    onnx("Div", elementwise::div),
    onnx("Pow", elementwise::pow),
    onnx("Neg", elementwise::neg),
    onnx("Abs", elementwise::abs),
    onnx("Sqrt", elementwise::sqrt),
    onnx("Reciprocal", elementwise::reciprocal),
    onnx("Tanh", elementwise::tanh),
    onnx("Exp", elementwise::exp),
    onnx("Log", elementwise::log),
    onnx("Sin", elementwise::sin),
    onnx("Cos", elementwise::cos),
    onnx("Sigmoid", elementwise::sigmoid),
    onnx("Erf", elementwise::erf),
    onnx("Relu", elementwise::relu),
    onnx("Gelu", activation::gelu),
    onnx("Softplus", activation::softplus),
    onnx("HardSigmoid", activation::hard_sigmoid),
    onnx("Where", elementwise::where_),
    onnx("Max", select::max),
    onnx("Min", select::min),
    onnx("Clip", select::clip),
    onnx("Identity", elementwise::identity),
    onnx("Cast", elementwise::cast),
    onnx("MatMul", matmul::matmul),
    onnx("Gemm", matmul::gemm),
    onnx("Einsum", einsum::einsum),
    onnx("Reshape", shape::reshape_like_input),
    onnx("Flatten", shape::reshape_like_input),
    onnx("Squeeze", shape::reshape_like_input),
    onnx("Unsqueeze", shape::reshape_like_input),
    onnx("Transpose", shape::transpose),
    onnx("Split", shape::split),
    onnx("Concat", shape::concat),
    onnx("Slice", slice::slice),
    onnx("Expand", shape::expand),
    onnx("Tile", shape::tile),
    onnx("Pad", shape::pad),
    onnx("Gather", gather::gather),
    onnx("GatherElements", gather::gather_elements),
    onnx("GatherND", gather::gather_nd),
    onnx("ScatterElements", gather::scatter_elements),
    onnx("ScatterND", gather::scatter_nd),
    onnx("TopK", gather::top_k),
    onnx("ReduceMean", reduce::reduce_mean),
    onnx("ReduceSum", reduce::reduce_sum),
    onnx("Softmax", softmax::softmax),
    onnx("LogSoftmax", softmax::log_softmax),
    onnx("LayerNormalization", norm::layer_norm),
    onnx("RMSNormalization", norm::rms_norm),
];

/// The rule for `op` in `domain`, if there is one.
pub fn lookup(op: &str, domain: &str) -> Option<Rule> {
    let domain = if domain == "ai.onnx" { "" } else { domain };
    RULES.iter().find(|r| r.op == op && r.domain == domain).map(|r| r.rule)
}

/// The ops with a rule, in table order.
pub fn supported() -> Vec<&'static str> {
    RULES.iter().map(|r| r.op).collect()
}

/// The book's list of ops with a rule (docs/src/method.md): "Add, Sub, ..., LayerNormalization".
pub fn docs_list() -> String {
    supported().join(", ")
}
