//! Elementwise activations with an optional fused bias: FastGelu (tanh
//! approximation), BiasGelu and Gelu (erf), QuickGelu (x * sigmoid(alpha x)),
//! and BiasAdd (x + bias + skip).

use super::{attr_float, bind, input, required};
use crate::builder::GraphBuilder;
use crate::consts::FLOAT;
use crate::error::Result;
use crate::pb::NodeProto;

/// sqrt(2 / pi), as ONNX Runtime's FastGelu kernel writes it.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_A: f64 = 0.044_715;

/// 0.5 x (1 + erf(x / sqrt 2)).
fn gelu_erf(b: &mut GraphBuilder, x: &str) -> String {
    let r = b.const_scalar(FLOAT, std::f64::consts::FRAC_1_SQRT_2);
    let xs = b.mul(x, &r);
    let e = b.node("Erf", &[&xs], vec![]);
    let one = b.const_scalar(FLOAT, 1.0);
    let half = b.const_scalar(FLOAT, 0.5);
    let p = b.add(&e, &one);
    let hx = b.mul(x, &half);
    b.mul(&hx, &p)
}

/// x (0.5 + 0.5 tanh(x (sqrt(2/pi) + sqrt(2/pi) 0.044715 x^2))).
fn gelu_tanh(b: &mut GraphBuilder, x: &str) -> String {
    let c = b.const_scalar(FLOAT, SQRT_2_OVER_PI);
    let ca = b.const_scalar(FLOAT, SQRT_2_OVER_PI * GELU_A);
    let xx = b.mul(x, x);
    let t = b.mul(&xx, &ca);
    let t = b.add(&t, &c);
    let inner = b.mul(x, &t);
    let th = b.node("Tanh", &[&inner], vec![]);
    let half = b.const_scalar(FLOAT, 0.5);
    let h = b.mul(&th, &half);
    let h = b.add(&h, &half);
    b.mul(x, &h)
}

/// Decomposes one of this file's ops; each has one output.
pub(crate) fn activation(b: &mut GraphBuilder, n: &NodeProto) -> Result<()> {
    let x = required(n, 0, "input")?;
    let y = match n.op_type.as_str() {
        "FastGelu" => {
            let xb = match input(n, 1) {
                Some(bias) => b.add(x, bias),
                None => x.to_string(),
            };
            gelu_tanh(b, &xb)
        }
        "BiasGelu" => {
            let xb = b.add(x, required(n, 1, "bias")?);
            gelu_erf(b, &xb)
        }
        "Gelu" => gelu_erf(b, x),
        "QuickGelu" => {
            let alpha = b.const_scalar(FLOAT, attr_float(n, "alpha", 1.702) as f64);
            let ax = b.mul(x, &alpha);
            let s = b.node("Sigmoid", &[&ax], vec![]);
            b.mul(x, &s)
        }
        "BiasAdd" => {
            let xb = b.add(x, required(n, 1, "bias")?);
            b.add(&xb, required(n, 2, "skip")?)
        }
        other => unreachable!("gelu::activation called for {other}"),
    };
    bind(b, &y, &n.output[0]);
    Ok(())
}
