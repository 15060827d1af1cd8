//! `attrpatch inspect`: what the tool sees in a model.

use crate::autodiff::rules;
use crate::error::Result;
use crate::hooks::{find_attention_out_hooks, find_logits, infer_heads};
use crate::onnx::facts::analyse;
use crate::onnx::OnnxModel;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;

pub fn inspect(model: &OnnxModel, extra: Option<&crate::hooks::HookKind>) -> Result<String> {
    let facts = analyse(&model.proto, &model.path)?;
    let g = model.graph();
    let mut s = String::new();
    let _ = writeln!(s, "model: {} (opset {}, {} nodes)", model.path.display(), model.opset, g.node.len());
    let fact = |n: &str| facts.get(n).map(|f| f.describe()).unwrap_or_else(|| "?".into());
    let _ = writeln!(s, "inputs:");
    for i in &g.input {
        let _ = writeln!(s, "  {} {}", i.name, fact(&i.name));
    }
    let _ = writeln!(s, "outputs:");
    for o in &g.output {
        let _ = writeln!(s, "  {} {}", o.name, fact(&o.name));
    }
    crate::augment::check_inputs(model)?;
    let hooks = find_attention_out_hooks(model)?;
    let logits = find_logits(model, &facts)?;
    let heads = match infer_heads(g, &facts, &hooks[0].tensor) {
        Some(h) => Some(h),
        None => crate::hooks::infer_heads_probed(model, &hooks[0].tensor)?,
    };
    let _ = writeln!(
        s,
        "layers: {} (attention heads: {})",
        hooks.len(),
        heads.map(|h| h.to_string()).unwrap_or_else(|| "unknown, pass --heads".into())
    );
    let _ = writeln!(s, "hooks (input of each layer's attention out-projection):");
    for h in &hooks {
        let _ = writeln!(
            s,
            "  layer {}: {} {}  <- {} '{}' (matched by {})",
            h.layer,
            h.tensor,
            fact(&h.tensor),
            h.op_type,
            h.node,
            h.matched_by
        );
    }
    if let Some(kind) = extra {
        let found = crate::hooks::find_hooks(model, kind)?;
        let _ = writeln!(s, "--hook {kind:?} matches {} tensors:", found.len());
        for h in &found {
            let _ = writeln!(
                s,
                "  layer {}: {} {}  <- {} '{}' ({})",
                h.layer,
                h.tensor,
                fact(&h.tensor),
                h.op_type,
                h.node,
                h.matched_by
            );
        }
    }
    // Op types on float paths from the hooks to the logits.
    let mut reach: HashSet<&str> = hooks.iter().map(|h| h.tensor.as_str()).collect();
    let mut fwd = vec![];
    for n in &g.node {
        if n.input.iter().any(|i| reach.contains(i.as_str())) {
            fwd.push(n);
            reach.extend(n.output.iter().map(|o| o.as_str()));
        }
    }
    let mut need: HashSet<&str> = HashSet::from([logits.as_str()]);
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    for n in fwd.iter().rev() {
        if n.output.iter().any(|o| need.contains(o.as_str())) {
            *ops.entry(n.op_type.as_str()).or_default() += 1;
            need.extend(n.input.iter().map(|i| i.as_str()));
        }
    }
    let _ = writeln!(s, "op types on the path from the hooks to '{logits}' (count; * = no gradient rule, fine when only on integer shape paths):");
    for (op, c) in ops {
        let mark = if rules::lookup(op, "").is_some() { "" } else { " *" };
        let _ = writeln!(s, "  {op} {c}{mark}");
    }
    Ok(s)
}
