//! `attrpatch inspect`: what the tool sees in a model.

use attrpatch_autodiff::Backward;
use attrpatch_onnx::error::{Result, UnsupportedOp};
use attrpatch_core::hooks::{find_attention_out_hooks, find_logits, infer_heads};
use attrpatch_onnx::facts::{analyse, analyse_with_probe};
use attrpatch_onnx::OnnxModel;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;

/// What `attrpatch inspect` reports of a model, as data.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    /// The model's path (or `IN_MEMORY_MODEL`).
    pub model: String,
    /// Default-domain opset after normalisation.
    pub opset: i64,
    /// Node count after normalisation.
    pub nodes: usize,
    /// The graph's inputs as tract's analysis sees them.
    pub inputs: Vec<crate::api::describe::TensorSpec>,
    /// The graph's outputs as tract's analysis sees them.
    pub outputs: Vec<crate::api::describe::TensorSpec>,
    /// Attention heads per layer, when the graph tells them.
    pub heads: Option<usize>,
    /// The attention hooks (input of each layer's out-projection), one per layer.
    pub hooks: Vec<InspectedHook>,
    /// What an extra hook choice matches (with `Some(kind)`): its spelling and the hooks.
    pub extra: Option<(String, Vec<InspectedHook>)>,
    /// The logits tensor the metric reads.
    pub logits: String,
    /// Op types on the path from the hooks to the logits, with their counts.
    pub path_ops: BTreeMap<String, usize>,
    /// Nodes on that path that cannot be differentiated (empty: all can).
    pub problems: Vec<UnsupportedOp>,
}

/// A hook and its tensor's type and shape.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InspectedHook {
    /// The hook: layer, node, op and tensor.
    #[serde(flatten)]
    pub hook: attrpatch_core::hooks::Hook,
    /// The hook tensor's type and shape.
    pub tensor_spec: crate::api::describe::TensorSpec,
}

/// The model inspected as `attrpatch inspect` prints it.
pub fn inspect(model: &OnnxModel, extra: Option<&attrpatch_core::hooks::HookKind>) -> Result<String> {
    Ok(format_inspection(&inspection(model, extra)?))
}

/// What the tool sees in `model`: inputs, outputs, hooks, heads, the ops between hooks and logits.
pub fn inspection(model: &OnnxModel, extra: Option<&attrpatch_core::hooks::HookKind>) -> Result<Inspection> {
    use crate::api::describe::TensorSpec;
    let facts = analyse(&model.proto, &model.path)?;
    let g = model.graph();
    let spec = |n: &str| TensorSpec::from_fact(n, facts.get(n));
    let inputs = g.input.iter().map(|i| spec(&i.name)).collect();
    let outputs = g.output.iter().map(|o| spec(&o.name)).collect();
    attrpatch_core::augment::check_inputs(model)?;
    let hooks = find_attention_out_hooks(model)?;
    let logits = find_logits(model, &facts)?;
    let heads = match infer_heads(g, &facts, &hooks[0].tensor) {
        Some(h) => Some(h),
        None => attrpatch_core::hooks::infer_heads_probed(model, &hooks[0].tensor)?,
    };
    let inspected = |hs: &[attrpatch_core::hooks::Hook]| -> Vec<InspectedHook> {
        hs.iter().map(|h| InspectedHook { hook: h.clone(), tensor_spec: spec(&h.tensor) }).collect()
    };
    let extra = match extra {
        Some(kind) => Some((cli_spelling(kind), inspected(&attrpatch_core::hooks::find_hooks(model, kind)?))),
        None => None,
    };
    // Op types on paths from the hooks to the logits (integer shape paths included).
    let mut reach: HashSet<&str> = hooks.iter().map(|h| h.tensor.as_str()).collect();
    let mut fwd = vec![];
    for n in &g.node {
        if n.input.iter().any(|i| reach.contains(i.as_str())) {
            fwd.push(n);
            reach.extend(n.output.iter().map(|o| o.as_str()));
        }
    }
    let mut need: HashSet<&str> = HashSet::from([logits.as_str()]);
    let mut path_ops: BTreeMap<String, usize> = BTreeMap::new();
    for n in fwd.iter().rev() {
        if n.output.iter().any(|o| need.contains(o.as_str())) {
            *path_ops.entry(qualified(&n.domain, &n.op_type)).or_default() += 1;
            need.extend(n.input.iter().map(|i| i.as_str()));
        }
    }
    // The rules read shapes as the rewrite does: at a probe size (3 prompts of
    // 7 tokens), since legacy exports' shape chains leave symbolic dims unknown.
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let probe: Vec<(&str, Vec<usize>)> =
        g.input.iter().filter(|i| !inits.contains(i.name.as_str())).map(|i| (i.name.as_str(), vec![3, 7])).collect();
    let probed = analyse_with_probe(&model.proto, &model.path, &probe)?;
    let wrt: Vec<String> = hooks.iter().map(|h| h.tensor.clone()).collect();
    let stop = HashSet::new();
    let problems = Backward { graph: g, facts: &probed, stop: &stop }.problems(model.opset, &wrt, &logits)?;
    Ok(Inspection {
        model: model.path.display().to_string(),
        opset: model.opset,
        nodes: g.node.len(),
        inputs,
        outputs,
        heads,
        hooks: inspected(&hooks),
        extra,
        logits,
        path_ops,
        problems,
    })
}

/// The report `attrpatch inspect` prints.
pub fn format_inspection(i: &Inspection) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "model: {} (opset {}, {} nodes)", i.model, i.opset, i.nodes);
    let fact = |t: &crate::api::describe::TensorSpec| {
        if t.dtype.is_none() && t.shape.is_none() {
            "?".to_string()
        } else {
            t.type_and_shape()
        }
    };
    let _ = writeln!(s, "inputs:");
    for t in &i.inputs {
        let _ = writeln!(s, "  {} {}", t.name, fact(t));
    }
    let _ = writeln!(s, "outputs:");
    for t in &i.outputs {
        let _ = writeln!(s, "  {} {}", t.name, fact(t));
    }
    let _ = writeln!(
        s,
        "layers: {} (attention heads: {})",
        i.hooks.len(),
        i.heads.map(|h| h.to_string()).unwrap_or_else(|| "unknown, pass a head count".into())
    );
    let _ = writeln!(s, "hooks (input of each layer's attention out-projection):");
    let hook_line = |s: &mut String, ih: &InspectedHook, how: String| {
        let h = &ih.hook;
        let _ = writeln!(
            s,
            "  layer {}: {} {}  <- {} '{}' ({how})",
            h.layer,
            h.tensor,
            fact(&ih.tensor_spec),
            h.op_type,
            h.node
        );
    };
    for h in &i.hooks {
        hook_line(&mut s, h, format!("matched by {}", h.hook.matched_by));
    }
    if let Some((spelling, found)) = &i.extra {
        let _ = writeln!(s, "the hook pattern {spelling} matches {} tensors:", found.len());
        for h in found {
            hook_line(&mut s, h, h.hook.matched_by.clone());
        }
    }
    let _ = writeln!(s, "op types on the path from the hooks to '{}' (count):", i.logits);
    for (op, c) in &i.path_ops {
        let _ = writeln!(s, "  {op} {c}");
    }
    s.push_str(&describe_problems(&i.problems));
    s
}

fn qualified(domain: &str, op: &str) -> String {
    if domain.is_empty() || domain == "ai.onnx" {
        op.to_string()
    } else {
        format!("{domain}:{op}")
    }
}

/// The nodes on the float path from the hooks to the logits that cannot be
/// differentiated (after normalisation: no rule and no decomposition), grouped
/// by op: op, domain, count and node names, so one look shows all of them.
pub fn describe_problems(problems: &[UnsupportedOp]) -> String {
    let mut s = String::new();
    if problems.is_empty() {
        let _ = writeln!(s, "gradient: every op on the path from the hooks to the logits has a rule");
        return s;
    }
    let mut groups: BTreeMap<(String, String), Vec<&UnsupportedOp>> = BTreeMap::new();
    for p in problems {
        groups.entry((p.domain.clone(), p.op.clone())).or_default().push(p);
    }
    let _ = writeln!(
        s,
        "gradient: {} node(s) of {} op type(s) on the path from the hooks to the logits cannot be differentiated:",
        problems.len(),
        groups.len()
    );
    for ((domain, op), ps) in &groups {
        let domain = if domain.is_empty() { "ai.onnx" } else { domain.as_str() };
        let _ = writeln!(s, "  {op} (domain {domain}) x{}", ps.len());
        for p in ps {
            match &p.reason {
                None => {
                    let _ = writeln!(s, "    node '{}': no gradient rule", p.node);
                }
                Some(r) => {
                    let _ = writeln!(s, "    node '{}': {r}", p.node);
                }
            }
        }
    }
    s
}

/// A hook choice as the user typed it (`--hook resid`), not Rust's debug text.
fn cli_spelling(kind: &attrpatch_core::hooks::HookKind) -> String {
    use attrpatch_core::hooks::HookKind;
    match kind {
        HookKind::AttnOut => "attn".into(),
        HookKind::Resid => "resid".into(),
        HookKind::Mlp => "mlp".into(),
        HookKind::Tensors(pattern) => format!("'{pattern}'"),
    }
}
