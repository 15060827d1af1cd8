//! Layer normalisations: SkipLayerNormalization, SkipSimplifiedLayerNormalization
//! (residual add, then LayerNorm / RMSNorm), LayerNormalization in the contrib
//! domain and SimplifiedLayerNormalization (RMSNorm), as ReduceMean, Sub, Mul,
//! Add, Sqrt and Reciprocal over the last axis.

use super::{attr_float, attr_int, bind, input, refuse_used_output, required, Ctx};
use crate::builder::GraphBuilder;
use crate::consts::FLOAT;
use crate::error::bail;
use crate::error::Result;
use crate::pb::NodeProto;

/// What a normalisation computes, each piece for the outputs that want it.
pub(crate) struct Normed {
    pub y: String,
    /// Mean over the last axis (LayerNorm only), keepdims.
    pub mean: Option<String>,
    /// 1 / sqrt(var + eps) (or 1 / sqrt(mean(x^2) + eps) for RMSNorm), keepdims.
    pub inv_std: String,
}

/// LayerNorm (`simplified`: RMSNorm) of `x` over its last axis, times `gamma`, plus `beta`.
pub(crate) fn normalize_last(
    b: &mut GraphBuilder,
    x: &str,
    gamma: &str,
    beta: Option<&str>,
    eps: f32,
    simplified: bool,
) -> Normed {
    let (centred, mean) = if simplified {
        (x.to_string(), None)
    } else {
        let m = b.reduce_mean(x, &[-1], true);
        (b.sub(x, &m), Some(m))
    };
    let sq = b.mul(&centred, &centred);
    let var = b.reduce_mean(&sq, &[-1], true);
    let e = b.const_scalar(FLOAT, eps as f64);
    let ve = b.add(&var, &e);
    let sd = b.node("Sqrt", &[&ve], vec![]);
    let inv_std = b.node("Reciprocal", &[&sd], vec![]);
    let normed = b.mul(&centred, &inv_std);
    let scaled = b.mul(&normed, gamma);
    let y = match beta {
        Some(beta) => b.add(&scaled, beta),
        None => scaled,
    };
    Normed { y, mean, inv_std }
}

fn check_last_axis(n: &NodeProto) -> Result<()> {
    let axis = attr_int(n, "axis", -1);
    if axis != -1 {
        bail!(
            Unsupported,
            "{} node '{}' normalises from axis {axis}; attrpatch decomposes it only over the last axis (axis = -1)",
            n.op_type,
            n.name
        );
    }
    Ok(())
}

/// LayerNormalization (contrib domain: X, Scale, B -> Y, Mean, InvStdDev) and
/// SimplifiedLayerNormalization (X, scale -> Y, inv_std_var).
pub(crate) fn layer_norm(b: &mut GraphBuilder, n: &NodeProto, cx: &Ctx, simplified: bool) -> Result<()> {
    check_last_axis(n)?;
    let x = required(n, 0, "input")?;
    let gamma = required(n, 1, "scale")?;
    let beta = if simplified { None } else { input(n, 2) };
    let r = normalize_last(b, x, gamma, beta, attr_float(n, "epsilon", 1e-5), simplified);
    bind(b, &r.y, &n.output[0]);
    let inv_at = if simplified { 1 } else { 2 };
    if !simplified && cx.used(n, 1) {
        bind(b, r.mean.as_deref().expect("LayerNorm has a mean"), &n.output[1]);
    }
    if cx.used(n, inv_at) {
        bind(b, &r.inv_std, &n.output[inv_at]);
    }
    Ok(())
}

/// SkipLayerNormalization (input, skip, gamma, beta, bias) and
/// SkipSimplifiedLayerNormalization (input, skip, gamma, bias): normalise
/// `input + skip + bias`; outputs output, mean, inv_std_var, input_skip_bias_sum.
pub(crate) fn skip_layer_norm(b: &mut GraphBuilder, n: &NodeProto, cx: &Ctx, simplified: bool) -> Result<()> {
    let x = required(n, 0, "input")?;
    let skip = required(n, 1, "skip")?;
    let gamma = required(n, 2, "gamma")?;
    let (beta, bias) = if simplified { (None, input(n, 3)) } else { (input(n, 3), input(n, 4)) };
    let sum = b.add(x, skip);
    let sum = match bias {
        Some(bias) => b.add(&sum, bias),
        None => sum,
    };
    let r = normalize_last(b, &sum, gamma, beta, attr_float(n, "epsilon", 1e-12), simplified);
    bind(b, &r.y, &n.output[0]);
    if simplified {
        refuse_used_output(cx, n, 1, "mean, which RMS normalisation does not compute")?;
    } else if cx.used(n, 1) {
        bind(b, r.mean.as_deref().expect("LayerNorm has a mean"), &n.output[1]);
    }
    if cx.used(n, 2) {
        bind(b, &r.inv_std, &n.output[2]);
    }
    if cx.used(n, 3) {
        bind(b, &sum, &n.output[3]);
    }
    Ok(())
}
