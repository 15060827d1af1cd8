//! The edge score table and its files: `edges.json` and `edges.csv` (from, to,
//! score), with node scores aggregated from the edges.

use attrpatch_onnx::error::Result;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// One edge's score. Denoising: sum over pairs and positions of
/// (a_clean[from] - a_corrupted[from]) . dM/d(input of `to`) on the corrupted run,
/// M normalised. Noising: mean over pairs of the sum over positions of
/// (a_ablated[from] - a_clean[from]) . dm/d(input of `to`) on the clean run, m raw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeScore {
    /// Writer name, e.g. "a3.h7".
    pub from: String,
    /// Reader name, e.g. "a5.h1.q".
    pub to: String,
    /// The score, in units of the normalised metric (noising: of the raw metric).
    pub score: f64,
}

/// One writer's score: the sum of its outgoing edge scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeScore {
    /// Writer name.
    pub node: String,
    /// Sum of the scores of the edges out of it.
    pub score: f64,
}

/// Every edge's score for one job, with what produced them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeScores {
    /// "EAP", "EAP-IG-inputs", "EAP-IG-activations" or "clean-corrupted" (`Method::label`).
    pub method: String,
    /// Integration steps of the IG methods (1 for the others).
    pub ig_steps: usize,
    /// "denoising" (gradient at the corrupted run, normalised metric) or "noising"
    /// (the EAP-IG codebase's: gradient at the clean run, raw metric over the pairs).
    #[serde(default = "denoising")]
    pub convention: String,
    /// Each writer's counterfactual: "patching" (corrupted), "zero", "mean", "mean-positional".
    #[serde(default = "patching")]
    pub ablation: String,
    /// The metric's name, as `run` names it.
    pub metric: String,
    /// Layers, heads and key/value heads of the model.
    pub layers: usize,
    /// Query heads per layer.
    pub heads: usize,
    /// Key/value heads per layer.
    pub kv_heads: usize,
    /// Whether attention and MLP read the same residual.
    pub parallel: bool,
    /// Every edge, in the order of `Topology::edges`.
    pub edges: Vec<EdgeScore>,
    /// Every writer, in residual order, its score aggregated from `edges`.
    pub nodes: Vec<NodeScore>,
}

impl EdgeScores {
    /// The writers' and readers' graph these scores are over.
    pub fn topology(&self) -> super::Topology {
        super::Topology { layers: self.layers, heads: self.heads, kv_heads: self.kv_heads, parallel: self.parallel }
    }

    /// Renames readers given by the name earlier versions wrote under
    /// grouped-query attention (`a1.h0.k` for key/value head 0's key) to
    /// today's (`a1.kv0.k`), so that tables written before read as tables
    /// written now; returns how many were renamed. Names this topology does
    /// not know are left as they are (whoever reads them names the bad one).
    pub fn upgrade_reader_names(&mut self) -> usize {
        let topo = self.topology();
        let mut renamed = 0;
        for e in &mut self.edges {
            if let Some(name) = topo.parse_reader(&e.to).map(|r| r.to_string()).filter(|n| *n != e.to) {
                e.to = name;
                renamed += 1;
            }
        }
        renamed
    }
}

fn denoising() -> String {
    "denoising".into()
}

fn patching() -> String {
    "patching".into()
}

/// Sum each writer's outgoing edge scores, writers in first-seen order.
pub fn node_scores(edges: &[EdgeScore]) -> Vec<NodeScore> {
    let mut out: Vec<NodeScore> = vec![];
    let mut index = std::collections::HashMap::new();
    for e in edges {
        let i = *index.entry(e.from.as_str()).or_insert_with(|| {
            out.push(NodeScore { node: e.from.clone(), score: 0.0 });
            out.len() - 1
        });
        out[i].score += e.score;
    }
    out
}

/// `edges.csv`: header `from,to,score`, one line per edge, scores at full
/// precision (shortest round-trip text). Names never need quoting.
pub fn csv_text(edges: &[EdgeScore]) -> String {
    let mut out = String::with_capacity(24 * edges.len() + 16);
    out.push_str("from,to,score\n");
    for e in edges {
        let _ = writeln!(out, "{},{},{}", e.from, e.to, e.score);
    }
    out
}

/// Write `edges.json` and `edges.csv` into `dir`, atomically.
pub fn write(dir: &Path, scores: &EdgeScores) -> Result<()> {
    let json =
        serde_json::to_vec(scores).map_err(|e| attrpatch_onnx::error::Error::Input(format!("edge scores: {e}")))?;
    attrpatch_onnx::fsutil::write_atomic(&dir.join("edges.json"), &json)?;
    attrpatch_onnx::fsutil::write_atomic(&dir.join("edges.csv"), csv_text(&scores.edges).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tables written before key/value heads had names of their own read as today's.
    #[test]
    fn old_gqa_reader_names_are_upgraded() {
        let topo = crate::edges::Topology { layers: 2, heads: 4, kv_heads: 2, parallel: false };
        let today: Vec<EdgeScore> = topo.edges().iter().map(|(w, r)| e(&w.to_string(), &r.to_string(), 1.0)).collect();
        let old: Vec<EdgeScore> =
            today.iter().map(|x| EdgeScore { to: x.to.replace(".kv", ".h"), ..x.clone() }).collect();
        assert_ne!(old, today);
        let table = |edges: Vec<EdgeScore>| EdgeScores {
            method: "EAP".into(),
            ig_steps: 1,
            convention: "denoising".into(),
            ablation: "patching".into(),
            metric: "logit diff".into(),
            layers: 2,
            heads: 4,
            kv_heads: 2,
            parallel: false,
            nodes: node_scores(&edges),
            edges,
        };
        let mut t = table(old);
        let kv_edges = today.iter().filter(|x| x.to.contains(".kv")).count();
        assert!(kv_edges > 0);
        assert_eq!(t.upgrade_reader_names(), kv_edges);
        assert_eq!(t, table(today.clone()));
        assert_eq!(t.upgrade_reader_names(), 0, "today's names stay");
    }

    fn e(from: &str, to: &str, score: f64) -> EdgeScore {
        EdgeScore { from: from.into(), to: to.into(), score }
    }

    #[test]
    fn nodes_sum_outgoing_edges() {
        let edges = [e("input", "a0.h0.q", 0.5), e("a0.h0", "logits", -1.0), e("input", "logits", 0.25)];
        let nodes = node_scores(&edges);
        assert_eq!(
            nodes,
            vec![NodeScore { node: "input".into(), score: 0.75 }, NodeScore { node: "a0.h0".into(), score: -1.0 }]
        );
    }

    #[test]
    fn csv_round_trips_scores() {
        let text = csv_text(&[e("a1.h2", "m3", 1.0 / 3.0)]);
        let line = text.lines().nth(1).unwrap();
        assert_eq!(line.rsplit(',').next().unwrap().parse::<f64>().unwrap(), 1.0 / 3.0);
        assert!(text.starts_with("from,to,score\n"));
    }
}
