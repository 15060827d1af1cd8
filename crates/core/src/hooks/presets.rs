//! Name presets: where each model family puts its attention out-projection.
//! Exporters keep the module path in node names (legacy, optimum, the GenAI
//! builder), in dynamo `name_scopes` metadata, or in weight names; each preset
//! is matched against all three as `{h,layers,layer,blocks}.N.<tail>` with
//! `.` or `/` between parts.

use regex::Regex;
use std::sync::OnceLock;

/// One family's out-projection module, after the layer container and number.
pub struct Preset {
    /// The families (transformers model types) that name it so, for messages.
    pub families: &'static str,
    /// The layer container the family uses (`h` or `layers`), for messages; any of
    /// `h`, `layers`, `layer`, `blocks` matches.
    pub container: &'static str,
    /// Module path after `h.N` / `layers.N`, dot-separated.
    pub tail: &'static str,
}

/// Every family transformers exports, and the GenAI builder's naming. Order
/// matters only for messages: tails are disjoint.
pub const PRESETS: &[Preset] = &[
    Preset { families: "GPT-2, GPTBigCode", container: "h", tail: "attn.c_proj" },
    Preset { families: "GPT-J", container: "h", tail: "attn.out_proj" },
    Preset { families: "GPT-Neo", container: "h", tail: "attn.attention.out_proj" },
    Preset { families: "GPT-NeoX", container: "layers", tail: "attention.dense" },
    Preset { families: "OPT, BART-style decoders", container: "layers", tail: "self_attn.out_proj" },
    Preset { families: "BLOOM, Falcon", container: "h", tail: "self_attention.dense" },
    Preset {
        families: "Llama, Mistral, Mixtral, Qwen2, Qwen3, Phi-3, Gemma 1-3, StableLM, OLMo",
        container: "layers",
        tail: "self_attn.o_proj",
    },
    Preset { families: "Phi", container: "layers", tail: "self_attn.dense" },
    Preset { families: "onnxruntime-genai builder", container: "layers", tail: "attn.o_proj" },
];

fn regexes() -> &'static [Regex] {
    static RES: OnceLock<Vec<Regex>> = OnceLock::new();
    RES.get_or_init(|| {
        PRESETS
            .iter()
            .map(|p| {
                let tail = p.tail.split('.').map(regex::escape).collect::<Vec<_>>().join("[./]");
                Regex::new(&format!(r"(?:^|[./])(?:h|layers|layer|blocks)[./](\d+)[./]{tail}(?:$|[./])"))
                    .expect("valid preset regex")
            })
            .collect()
    })
}

/// The layer number and preset whose module path occurs in `text` (a node
/// name, a module scope or a weight name).
pub fn match_text(text: &str) -> Option<(usize, &'static Preset)> {
    regexes().iter().zip(PRESETS).find_map(|(re, p)| {
        let c = re.captures(text)?;
        c[1].parse().ok().map(|layer| (layer, p))
    })
}

/// The presets as one line for error messages.
pub fn describe() -> String {
    PRESETS.iter().map(|p| format!("'{}' ({})", p.shown(), p.families)).collect::<Vec<_>>().join(", ")
}

impl Preset {
    /// The module path as the family names it, N for the layer: `h.N.attn.c_proj`.
    pub fn shown(&self) -> String {
        format!("{}.N.{}", self.container, self.tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_naming_matches_its_preset_and_layer() {
        for (text, layer, tail) in [
            ("/transformer/h.3/attn/c_proj/Gemm", 3, "attn.c_proj"),
            ("transformer.h.0.attn.out_proj", 0, "attn.out_proj"),
            ("/transformer/h.1/attn/attention/out_proj/MatMul", 1, "attn.attention.out_proj"),
            ("gpt_neox.layers.2.attention.dense", 2, "attention.dense"),
            ("/model/decoder/layers.1/self_attn/out_proj/MatMul", 1, "self_attn.out_proj"),
            ("/transformer/h.0/self_attention/dense/MatMul", 0, "self_attention.dense"),
            ("model.layers.11.self_attn.o_proj.weight", 11, "self_attn.o_proj"),
            ("/model/layers.1/self_attn/dense/MatMul", 1, "self_attn.dense"),
            ("/model/layers.5/attn/o_proj/MatMul", 5, "attn.o_proj"),
        ] {
            let (l, p) = match_text(text).unwrap_or_else(|| panic!("{text}: no preset"));
            assert_eq!((l, p.tail), (layer, tail), "{text}");
        }
    }

    #[test]
    fn mlp_and_query_projections_and_partial_names_do_not_match() {
        for text in [
            "/transformer/h.0/mlp/c_proj/Gemm",
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.mlp.dense_4h_to_h",
            "/model/layers.0/attn/qkv_proj/MatMul",
            "transformer.h.0.attn.c_proj_extra",
            "model.layers.x.self_attn.o_proj",
        ] {
            assert!(match_text(text).is_none(), "{text}");
        }
    }
}
