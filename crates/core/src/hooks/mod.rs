//! Finding the hook tensors: for every layer, the activation input of the
//! attention out-projection (`attn.c_proj` in GPT-2, `attention.dense` in
//! GPT-NeoX, `self_attn.o_proj` in Llama; `presets` has every family).
//! Exporters name things differently, so three sources are matched: the
//! node's name (legacy exporter scopes), its dynamo `name_scopes` metadata,
//! and the names of its weight initializers. When no name matches, the graph's
//! structure is read instead (`structure`).

pub mod presets;
pub mod structure;

use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::pb::NodeProto;
use attrpatch_onnx::OnnxModel;
use regex::Regex;
use std::collections::{BTreeMap, HashSet};

/// A hook tensor: the activation attributed at one layer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Hook {
    /// The layer (the hooks' order in the graph).
    pub layer: usize,
    /// Name of the MatMul/Gemm node of the out-projection.
    pub node: String,
    /// The node's op type (MatMul, Gemm, ...).
    pub op_type: String,
    /// The activation entering it: the tensor we read and differentiate.
    pub tensor: String,
    /// How the node was found: "node name", "module scope" or "weight name"
    /// with the preset, or "structure" (see `structure`).
    pub matched_by: String,
}

/// What `matched_by` says of a hook found from the graph's structure.
pub const BY_STRUCTURE: &str = "structure: MatMul/Gemm after the head merge of softmax(Q K^T) V";

/// Tensors whose value does not depend on any graph input: initializers,
/// Constant outputs, and whatever is computed from those alone.
pub fn constant_tensors(model: &OnnxModel) -> HashSet<String> {
    constant_tensors_of(model.graph())
}

/// `constant_tensors` of a graph being rewritten.
pub fn constant_tensors_of(g: &attrpatch_onnx::pb::GraphProto) -> HashSet<String> {
    let mut set: HashSet<String> = g.initializer.iter().map(|t| t.name.clone()).collect();
    let inputs: HashSet<&str> = g.input.iter().map(|v| v.name.as_str()).collect();
    set.retain(|n| !inputs.contains(n.as_str()));
    for n in &g.node {
        if n.input.iter().filter(|i| !i.is_empty()).all(|i| set.contains(i)) {
            set.extend(n.output.iter().cloned());
        }
    }
    set
}

/// Per layer, the out-projection's activation input: by name presets, or,
/// when no name matches at all, by structure.
pub fn find_attention_out_hooks(model: &OnnxModel) -> Result<Vec<Hook>> {
    let consts = constant_tensors(model);
    let by_layer = by_names(model, &consts);
    if by_layer.is_empty() {
        return by_structure(model, &consts);
    }
    let mut hooks = vec![];
    for (expected, (&layer, nodes)) in by_layer.iter().enumerate() {
        if layer != expected {
            return Err(Error::Model(format!(
                "{}: found attention out-projections for layers {:?} but none for layer {expected}",
                model.path.display(),
                by_layer.keys().collect::<Vec<_>>()
            )));
        }
        if nodes.len() > 1 {
            let names: Vec<&str> = nodes.iter().map(|(n, _)| n.name.as_str()).collect();
            return Err(Error::Model(format!(
                "{}: layer {layer} has {} candidate attention out-projection nodes ({}); expected exactly one",
                model.path.display(),
                names.len(),
                names.join(", ")
            )));
        }
        let (n, how) = &nodes[0];
        hooks.push(Hook {
            layer,
            node: n.name.clone(),
            op_type: n.op_type.clone(),
            tensor: activation_input(model, n, layer, &consts)?,
            matched_by: how.clone(),
        });
    }
    Ok(hooks)
}

/// MatMul/Gemm nodes whose name, scope or weight names match a preset, by layer.
fn by_names<'a>(model: &'a OnnxModel, consts: &HashSet<String>) -> BTreeMap<usize, Vec<(&'a NodeProto, String)>> {
    let mut by_layer: BTreeMap<usize, Vec<(&NodeProto, String)>> = BTreeMap::new();
    for n in &model.graph().node {
        if n.op_type != "MatMul" && n.op_type != "Gemm" {
            continue;
        }
        let scopes = model.scopes.get(&n.name);
        let sources = std::iter::once((n.name.as_str(), "node name"))
            .chain(scopes.iter().rev().map(|s| (s.as_str(), "module scope")))
            .chain(n.input.iter().filter(|i| consts.contains(*i)).map(|i| (i.as_str(), "weight name")));
        for (text, how) in sources {
            if let Some((layer, p)) = presets::match_text(text) {
                let how = format!("{how}, preset '{}' ({})", p.shown(), p.families);
                by_layer.entry(layer).or_default().push((n, how));
                break;
            }
        }
    }
    by_layer
}

fn by_structure(model: &OnnxModel, consts: &HashSet<String>) -> Result<Vec<Hook>> {
    let found = structure::find(model.graph(), consts);
    if found.is_empty() {
        return Err(Error::Model(format!(
            "{}: no attention out-projection found: no MatMul/Gemm is named like a known family's \
             (in node names, dynamo name scopes or weight names: {}), and none is fed by the head merge \
             (Reshape/Transpose) of a softmax(Q K^T) V; pass a hook pattern REGEX to name the tensors to attribute",
            model.path.display(),
            presets::describe()
        )));
    }
    found
        .into_iter()
        .enumerate()
        .map(|(layer, f)| {
            Ok(Hook {
                layer,
                node: f.node.name.clone(),
                op_type: f.node.op_type.clone(),
                tensor: f.tensor,
                matched_by: BY_STRUCTURE.to_string(),
            })
        })
        .collect()
}

/// The one non-constant input among a projection's first two.
fn activation_input(model: &OnnxModel, n: &NodeProto, layer: usize, consts: &HashSet<String>) -> Result<String> {
    let acts: Vec<&String> = n.input.iter().take(2).filter(|i| !consts.contains(*i)).collect();
    match acts.as_slice() {
        [one] => Ok((*one).clone()),
        _ => Err(Error::Model(format!(
            "{}: node '{}' ({}) of layer {layer} should have exactly one activation input and one weight, found {} activation inputs",
            model.path.display(),
            n.name,
            n.op_type,
            acts.len()
        ))),
    }
}

/// The output holding the logits: named `logits`, else the only float output of rank 3.
pub fn find_logits(model: &OnnxModel, facts: &attrpatch_onnx::facts::Facts) -> Result<String> {
    let g = model.graph();
    if let Some(o) = g.output.iter().find(|o| o.name == "logits") {
        return Ok(o.name.clone());
    }
    let cands: Vec<&str> = g
        .output
        .iter()
        .filter(|o| {
            facts.rank(&o.name) == Some(3) && facts.dtype(&o.name).is_some_and(attrpatch_onnx::consts::is_float)
        })
        .map(|o| o.name.as_str())
        .collect();
    match cands.as_slice() {
        [one] => Ok(one.to_string()),
        _ => Err(Error::Model(format!(
            "{}: no logits-like output: expected an output named 'logits' or exactly one float output of shape [batch, sequence, vocab]; outputs are: {}",
            model.path.display(),
            g.output.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The head count with every size known: the model's token inputs probed at
/// 3 prompts of 7 tokens (symbolic facts often leave the [.., heads,
/// head_dim] reshape unresolved).
pub fn infer_heads_probed(model: &OnnxModel, hook: &str) -> Result<Option<usize>> {
    let g = model.graph();
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let probe: Vec<(&str, Vec<usize>)> =
        g.input.iter().filter(|i| !inits.contains(i.name.as_str())).map(|i| (i.name.as_str(), vec![3, 7])).collect();
    let facts = attrpatch_onnx::facts::analyse_with_probe(&model.proto, &model.path, &probe)?;
    Ok(infer_heads(g, &facts, hook))
}

/// The number of attention heads feeding a hook: walking back from the hook
/// through reshapes and transposes, the first rank-4 tensor whose last two
/// dims are fixed and multiply to the hook's width is [.., heads, head_dim].
pub fn infer_heads(
    g: &attrpatch_onnx::pb::GraphProto,
    facts: &attrpatch_onnx::facts::Facts,
    hook: &str,
) -> Option<usize> {
    use attrpatch_onnx::facts::Dim;
    let width = match facts.shape(hook)?.last()? {
        Dim::Known(w) => *w,
        _ => return None,
    };
    let mut t = hook.to_string();
    for _ in 0..8 {
        if let Some([.., Dim::Known(h), Dim::Known(d)]) = facts.shape(&t) {
            if facts.rank(&t) == Some(4) && h * d == width && *h > 1 {
                return Some(*h as usize);
            }
        }
        let producer = g.node.iter().find(|n| n.output.contains(&t))?;
        if !matches!(producer.op_type.as_str(), "Reshape" | "Transpose" | "Identity" | "Flatten") {
            return None;
        }
        t = producer.input.first()?.clone();
    }
    None
}

/// Which activations to attribute.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HookKind {
    /// The input of each layer's attention out-projection (per-head grids).
    AttnOut,
    /// The residual stream after each block (the block's output).
    Resid,
    /// Each MLP's output.
    Mlp,
    /// Tensors whose names match this regex, one "layer" each, in graph order.
    Tensors(String),
}

impl std::str::FromStr for HookKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "attn" | "attn-out" => HookKind::AttnOut,
            "resid" | "residual" => HookKind::Resid,
            "mlp" | "mlp-out" => HookKind::Mlp,
            pattern => {
                Regex::new(pattern).map_err(|e| {
                    Error::Input(format!(
                        "the hook pattern '{pattern}': not a preset (attn, resid, mlp) nor a valid regex: {e}"
                    ))
                })?;
                HookKind::Tensors(pattern.to_string())
            }
        })
    }
}

impl HookKind {
    /// Whether the hook tensors split into attention heads.
    pub fn has_heads(&self) -> bool {
        *self == HookKind::AttnOut
    }
}

/// Module paths a node belongs to, from its legacy-exporter name
/// (`/transformer/h.0/mlp/c_fc/Gemm` -> transformer, transformer.h.0, ...)
/// and its dynamo name scopes.
fn module_paths(model: &OnnxModel, n: &NodeProto) -> Vec<String> {
    let mut out: Vec<String> = model.scopes.get(&n.name).to_vec();
    if n.name.starts_with('/') {
        let parts: Vec<&str> = n.name.trim_start_matches('/').split('/').collect();
        for k in 1..parts.len() {
            out.push(parts[..k].join("."));
        }
    }
    out
}

/// The hooks of `kind` in the model, one per layer (see `HookKind`).
pub fn find_hooks(model: &OnnxModel, kind: &HookKind) -> Result<Vec<Hook>> {
    match kind {
        HookKind::AttnOut => find_attention_out_hooks(model),
        HookKind::Resid => module_outputs(model, r"(?:^|\.)(?:h|layers|layer)\.(\d+)$", "block"),
        HookKind::Mlp => module_outputs(model, r"(?:^|\.)(?:h|layers|layer)\.(\d+)\.mlp$", "mlp"),
        HookKind::Tensors(p) => matching_tensors(model, p),
    }
}

/// Per layer, the output of the last node inside the module.
fn module_outputs(model: &OnnxModel, module_re: &str, what: &str) -> Result<Vec<Hook>> {
    let re = Regex::new(module_re).expect("valid regex");
    let mut last: BTreeMap<usize, &NodeProto> = BTreeMap::new();
    for n in &model.graph().node {
        for p in module_paths(model, n) {
            if let Some(c) = re.captures(&p) {
                if let Ok(l) = c[1].parse::<usize>() {
                    last.insert(l, n);
                }
            }
        }
    }
    if last.is_empty() {
        return Err(Error::Model(format!(
            "{}: no {what} modules found (looked for module paths like 'h.N' / 'layers.N'{} in node names and dynamo name scopes); use a hook pattern REGEX on tensor names",
            model.path.display(),
            if what == "mlp" { " + '.mlp'" } else { "" }
        )));
    }
    Ok(last
        .into_iter()
        .map(|(layer, n)| Hook {
            layer,
            node: n.name.clone(),
            op_type: n.op_type.clone(),
            tensor: n.output[0].clone(),
            matched_by: format!("{what} output"),
        })
        .collect())
}

fn matching_tensors(model: &OnnxModel, pattern: &str) -> Result<Vec<Hook>> {
    let re = Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| Error::Input(format!("the hook pattern '{pattern}': {e}")))?;
    let hooks: Vec<Hook> = model
        .graph()
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (n, o)))
        .filter(|(_, o)| re.is_match(o))
        .enumerate()
        .map(|(layer, (n, o))| Hook {
            layer,
            node: n.name.clone(),
            op_type: n.op_type.clone(),
            tensor: o.clone(),
            matched_by: format!("the hook pattern {pattern}"),
        })
        .collect();
    if hooks.is_empty() {
        let names: Vec<&str> = model.graph().node.iter().flat_map(|n| n.output.iter().map(String::as_str)).collect();
        return Err(Error::Input(format!(
            "{}: the hook pattern '{pattern}' matches no tensor name (the whole name must match); {}",
            model.path.display(),
            suggest(&re, pattern, &names)
        )));
    }
    Ok(hooks)
}

/// What to try instead of a pattern that matched nothing: names it matches
/// somewhere inside (the usual slip: the whole name must match), else the
/// names closest to it as text.
fn suggest(anchored: &Regex, pattern: &str, names: &[&str]) -> String {
    const SHOWN: usize = 5;
    let inside = Regex::new(pattern).ok();
    let partial: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| inside.as_ref().is_some_and(|r| r.is_match(n)) && !anchored.is_match(n))
        .collect();
    if !partial.is_empty() {
        let more = partial.len().saturating_sub(SHOWN);
        let list = partial.iter().take(SHOWN).map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ");
        let tail = if more > 0 { format!(" and {more} more") } else { String::new() };
        return format!(
            "it matches inside {list}{tail}: write '.*{pattern}.*' or the whole name \
             (`attrpatch inspect MODEL --hook '.*{pattern}.*'` lists them)"
        );
    }
    let mut scored: Vec<(f64, &str)> = names.iter().map(|n| (strsim::normalized_levenshtein(pattern, n), *n)).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    let closest: Vec<String> = scored.iter().take(SHOWN).map(|(_, n)| format!("'{n}'")).collect();
    format!("the closest tensor names are {}", closest.join(", "))
}
