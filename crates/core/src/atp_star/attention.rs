//! One layer's attention as the QK-fix needs it: the `Q K^T` product, the
//! nodes between it and the Softmax (scale, masks, ALiBi, views), and the
//! Softmax itself, found behind each hook (`edges::anatomy::attention_of`). `recompute` replays
//! those nodes on another score product, so a patched query or key gets the
//! pattern the model itself would compute: every attention form the tool
//! reads (eager, SDPA decompositions, GQA, ALiBi, rotary) alike, since rotary
//! and the head expansion of GQA come before the product.

use attrpatch_onnx::builder::GraphBuilder;
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::pb::{GraphProto, NodeProto};
use std::collections::{HashMap, HashSet};

/// A layer's attention scores and pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// The layer.
    pub layer: usize,
    /// The queries entering `Q K^T` (after rotary and scaling, if any).
    pub q: String,
    /// The keys entering `Q K^T` (transposed, after rotary and head expansion).
    pub kt: String,
    /// The product's output.
    pub product: String,
    /// The nodes from the product to the Softmax's input, in graph order.
    pub chain: Vec<NodeProto>,
    /// The Softmax node (its attributes are replayed).
    pub softmax: NodeProto,
}

impl Pattern {
    /// Reads a layer's attention from `g` (the original graph), given its
    /// `Q K^T` MatMul and its Softmax by node name.
    pub fn read(g: &GraphProto, layer: usize, scores: &str, softmax: &str) -> Result<Pattern> {
        let find = |name: &str| g.node.iter().find(|n| n.name == name);
        let (Some(qk), Some(sm)) = (find(scores), find(softmax)) else {
            return Err(Error::Model(format!(
                "layer {layer}: the attention's Q K^T MatMul '{scores}' or Softmax '{softmax}' is not in the graph"
            )));
        };
        let product = qk.output[0].clone();
        let chain = between(g, &product, &sm.input[0]);
        Ok(Pattern { layer, q: qk.input[0].clone(), kt: qk.input[1].clone(), product, chain, softmax: sm.clone() })
    }

    /// The Softmax's input (the scores after scale and masks).
    pub fn logits(&self) -> &str {
        &self.softmax.input[0]
    }

    /// The Softmax's output (the pattern).
    pub fn probs(&self) -> &str {
        &self.softmax.output[0]
    }

    /// Emits the chain on `product` instead of the model's product: the
    /// Softmax input the model would compute from it. Inputs of the chain
    /// that are not on it (masks, biases, scales) are the corrupted run's.
    pub fn recompute(&self, b: &mut GraphBuilder, product: &str) -> String {
        let mut map: HashMap<String, String> = HashMap::from([(self.product.clone(), product.to_string())]);
        for n in &self.chain {
            let inputs: Vec<String> =
                n.input.iter().map(|x| map.get(x).cloned().unwrap_or_else(|| x.clone())).collect();
            let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            let outs = b.node_n(&n.op_type, &refs, n.output.len(), n.attribute.clone());
            for (o, fresh) in n.output.iter().zip(outs) {
                map.insert(o.clone(), fresh);
            }
        }
        map.get(self.logits()).cloned().unwrap_or_else(|| product.to_string())
    }

    /// Emits the Softmax, with the model's attributes, of `logits`.
    pub fn softmax(&self, b: &mut GraphBuilder, logits: &str) -> String {
        b.node(&self.softmax.op_type, &[logits], self.softmax.attribute.clone())
    }
}

/// The nodes on a path from `from` to `to`, in graph order.
fn between(g: &GraphProto, from: &str, to: &str) -> Vec<NodeProto> {
    let mut reached: HashSet<&str> = HashSet::from([from]);
    let mut forward = vec![false; g.node.len()];
    for (i, n) in g.node.iter().enumerate() {
        if n.input.iter().any(|x| reached.contains(x.as_str())) {
            forward[i] = true;
            reached.extend(n.output.iter().map(String::as_str));
        }
    }
    let mut needed: HashSet<&str> = HashSet::from([to]);
    let mut on = vec![false; g.node.len()];
    for (i, n) in g.node.iter().enumerate().rev() {
        if forward[i] && n.output.iter().any(|o| needed.contains(o.as_str())) {
            on[i] = true;
            needed.extend(n.input.iter().map(String::as_str));
        }
    }
    g.node.iter().zip(on).filter(|(_, on)| *on).map(|(n, _)| n.clone()).collect()
}
