//! `attrpatch inspect`: what the tool sees in a model.

use crate::autodiff::Backward;
use crate::error::{Result, UnsupportedOp};
use crate::hooks::{find_attention_out_hooks, find_logits, infer_heads};
use crate::onnx::facts::{analyse, analyse_with_probe};
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
        heads.map(|h| h.to_string()).unwrap_or_else(|| "unknown, pass a head count".into())
    );
    let _ = writeln!(s, "hooks (input of each layer's attention out-projection):");
    let hook_line = |s: &mut String, h: &crate::hooks::Hook, how: String| {
        let _ =
            writeln!(s, "  layer {}: {} {}  <- {} '{}' ({how})", h.layer, h.tensor, fact(&h.tensor), h.op_type, h.node);
    };
    for h in &hooks {
        hook_line(&mut s, h, format!("matched by {}", h.matched_by));
    }
    if let Some(kind) = extra {
        let found = crate::hooks::find_hooks(model, kind)?;
        let _ = writeln!(s, "the hook pattern {} matches {} tensors:", cli_spelling(kind), found.len());
        for h in &found {
            hook_line(&mut s, h, h.matched_by.clone());
        }
    }
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
    let mut ops: BTreeMap<String, usize> = BTreeMap::new();
    for n in fwd.iter().rev() {
        if n.output.iter().any(|o| need.contains(o.as_str())) {
            *ops.entry(qualified(&n.domain, &n.op_type)).or_default() += 1;
            need.extend(n.input.iter().map(|i| i.as_str()));
        }
    }
    let _ = writeln!(s, "op types on the path from the hooks to '{logits}' (count):");
    for (op, c) in &ops {
        let _ = writeln!(s, "  {op} {c}");
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
    s.push_str(&describe_problems(&problems));
    Ok(s)
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
fn cli_spelling(kind: &crate::hooks::HookKind) -> String {
    use crate::hooks::HookKind;
    match kind {
        HookKind::AttnOut => "attn".into(),
        HookKind::Resid => "resid".into(),
        HookKind::Mlp => "mlp".into(),
        HookKind::Tensors(pattern) => format!("'{pattern}'"),
    }
}
