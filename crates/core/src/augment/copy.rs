//! A second copy of the forward graph, for the clean prompts.
//!
//! Clean and corrupted prompts run through separate copies so that the
//! backward graph is built for the corrupted copy alone: the clean rows'
//! gradients are zero, and computing them would cost as much as the rest.
//! The copy shares every constant (initializers and what is computed from
//! them only) and renames every other tensor.

use super::{names, TokenInput};
use attrpatch_onnx::pb::NodeProto;
use std::collections::{HashMap, HashSet};

pub struct Renamer<'a> {
    pub prefix: &'a str,
    pub inputs: HashMap<String, String>,
    pub constants: &'a HashSet<String>,
}

impl<'a> Renamer<'a> {
    /// The clean copy's names: `clean.X` for each token input X, `clean/t`
    /// for every other tensor that is not constant.
    pub fn clean(token_inputs: &[&TokenInput], constants: &'a HashSet<String>) -> Self {
        let inputs = input_map(token_inputs, |t| t.clean.clone());
        Renamer { prefix: names::CLEAN_PREFIX, inputs, constants }
    }

    pub fn name(&self, t: &str) -> String {
        if t.is_empty() || self.constants.contains(t) {
            return t.to_string();
        }
        match self.inputs.get(t) {
            Some(n) => n.clone(),
            None => format!("{}{t}", self.prefix),
        }
    }

    /// The nodes that depend on a graph input, renamed; constant nodes are shared, not copied.
    pub fn copy(&self, nodes: &[NodeProto]) -> Vec<NodeProto> {
        nodes
            .iter()
            .filter(|n| !n.output.iter().all(|o| o.is_empty() || self.constants.contains(o)))
            .map(|n| {
                let mut c = n.clone();
                // Unnamed nodes stay unnamed (ONNX allows several); "clean/" alone would clash.
                if !n.name.is_empty() {
                    c.name = format!("{}{}", self.prefix, n.name);
                }
                c.input = n.input.iter().map(|t| self.name(t)).collect();
                c.output = n.output.iter().map(|t| self.name(t)).collect();
                c
            })
            .collect()
    }
}

/// Renames graph inputs in place (for the corrupted copy, which keeps every other name).
pub fn rename_inputs(nodes: &mut [NodeProto], map: &HashMap<String, String>) {
    for n in nodes {
        for i in n.input.iter_mut() {
            if let Some(new) = map.get(i.as_str()) {
                *i = new.clone();
            }
        }
    }
}

/// Each token input's model name, mapped to the name `to` gives it in a copy.
pub fn input_map(token_inputs: &[&TokenInput], to: impl Fn(&TokenInput) -> String) -> HashMap<String, String> {
    token_inputs.iter().map(|t| (t.model_name.clone(), to(t))).collect()
}
