//! MIB's circuit metrics (Mueller et al. 2025, `hannamw/MIB-circuit-track`):
//! faithfulness at MIB's circuit sizes and its two summaries, CPR and CMD.
//!
//! As `MIB_circuit_track/evaluation.py`, `evaluate_area_under_curve`, computes
//! them: circuit sizes are the fractions p = .001, .002, .005, .01, .02, .05,
//! .1, .2, .5, 1 of the edges, K = int(p * edges) (truncated); f(p) =
//! (m(C) - m(empty)) / (m(N) - m(empty)), not clipped; the x axis is p itself
//! (linear, `log_scale=False` as `run_evaluation.py` calls it), and the areas
//! are trapezoids between consecutive grid points, from p = .001 to 1 (no
//! point at p = 0):
//!   CPR = sum_i (p_{i+1} - p_i) (f_i + f_{i+1}) / 2          (higher is better)
//!   CMD = sum_i (p_{i+1} - p_i) (|1 - f_i| + |1 - f_{i+1}|) / 2 (lower is better)

use super::EdgeScores;
use attrpatch_onnx::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::Path;

/// MIB's circuit sizes, as fractions of the edges (`evaluation.py`, `percentages`).
pub const FRACTIONS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0];

/// The K of each of MIB's sizes for a model of `edges` edges: `int(p * edges)`,
/// Python's truncation of the same double product.
pub fn ks(edges: usize) -> Vec<usize> {
    FRACTIONS.iter().map(|&p| (p * edges as f64) as usize).collect()
}

/// (CPR, CMD) of the curve `f` over the fractions `x` (ascending), by the
/// trapezoid rule between consecutive points, as `evaluate_area_under_curve`
/// does with `log_scale=False`. Fewer than two points give zero areas.
pub fn areas(x: &[f64], f: &[f64]) -> (f64, f64) {
    let (mut cpr, mut cmd) = (0.0, 0.0);
    for i in 0..x.len().min(f.len()).saturating_sub(1) {
        let dx = x[i + 1] - x[i];
        cpr += dx * (f[i] + f[i + 1]) / 2.0;
        cmd += dx * ((1.0 - f[i]).abs() + (1.0 - f[i + 1]).abs()) / 2.0;
    }
    (cpr, cmd)
}

/// The faithfulness curve at MIB's sizes and its areas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MibCurve {
    /// The sizes in percent of the edges: 0.1, 0.2, 0.5, ..., 100.
    pub k_percent: Vec<f64>,
    /// The edges in each circuit: int(fraction x edges).
    pub k: Vec<usize>,
    /// Faithfulness of each circuit (not clipped).
    pub f: Vec<f64>,
    /// Circuit performance ratio: area under f over the fraction axis.
    pub cpr: f64,
    /// Circuit-model distance: area under |1 - f| over the fraction axis.
    pub cmd: f64,
}

impl MibCurve {
    /// The curve from `value(K)`, the faithfulness of the top-K circuit, for
    /// a model of `edges` edges; `None` when `value` lacks one of MIB's K.
    pub fn from_points(edges: usize, value: impl Fn(usize) -> Option<f64>) -> Option<Self> {
        let k = ks(edges);
        let f = k.iter().map(|&k| value(k)).collect::<Option<Vec<f64>>>()?;
        let (cpr, cmd) = areas(&FRACTIONS, &f);
        // Percent printed as MIB prints `pct*100`, rounded off its float noise.
        let k_percent = FRACTIONS.iter().map(|p| (p * 1000.0).round() / 10.0).collect();
        Some(MibCurve { k_percent, k, f, cpr, cmd })
    }
}

/// Where a file's edge is in attrpatch's terms: its writer and reader names
/// (`EdgeScore::from`, `EdgeScore::to`).
type EdgeKey = (String, String);

/// MIB's name of the edge `from -> to` (attrpatch names), as EAP-IG's `Edge`
/// names it (`eap/graph.py`): `parent->child`, and `parent->a{l}.h{h}<q>` for
/// a head's query, key or value input. Writers keep their names (`input`,
/// `a{l}.h{h}`, `m{l}`), as do the readers `m{l}` and `logits`.
pub fn edge_name(from: &str, to: &str) -> String {
    match to.rsplit_once('.') {
        Some((head, qkv @ ("q" | "k" | "v"))) => format!("{from}->{head}<{qkv}>"),
        _ => format!("{from}->{to}"),
    }
}

/// MIB's (EAP-IG's `Graph.to_json`) file can name a key/value input per query
/// head only: refuse grouped-query attention, whose k/v readers are shared.
fn check_ungrouped(scores: &EdgeScores, what: &str) -> Result<()> {
    if scores.kv_heads != scores.heads {
        return Err(Error::Input(format!(
            "{what}: the model has {} query heads and {} key/value heads per layer; MIB's importance files name one \
             key and value input per query head (TransformerLens' ungroup_grouped_query_attention), which attrpatch's \
             shared key/value readers do not split into. Use edges.json for this model",
            scores.heads, scores.kv_heads
        )));
    }
    Ok(())
}

/// The edge scores as an EAP-IG `Graph.to_json` file (MIB's importance file,
/// `circuits/<method>/<task>_<model>/importances.json`): `cfg` (n_layers,
/// n_heads, parallel_attn_mlp, d_model), `nodes` {name: {in_graph}} and
/// `edges` {name: {score, in_graph}}; `in_graph` marks the edges of
/// `circuit` (indices into `scores.edges`) and the nodes they touch.
pub fn importances(scores: &EdgeScores, circuit: &[usize], d_model: usize) -> Result<Value> {
    check_ungrouped(scores, "--mib")?;
    let mut inside = vec![false; scores.edges.len()];
    for &i in circuit {
        if let Some(x) = inside.get_mut(i) {
            *x = true;
        }
    }
    let topo = scores.topology();
    let mut nodes = Map::new();
    for w in topo.writers() {
        nodes.insert(w.to_string(), json!({"in_graph": false}));
    }
    nodes.insert("logits".into(), json!({"in_graph": true}));
    let mut edges = Map::new();
    for (e, &on) in scores.edges.iter().zip(&inside) {
        edges.insert(edge_name(&e.from, &e.to), json!({"score": e.score, "in_graph": on}));
        if on {
            let child = edge_name(&e.from, &e.to);
            let child = child.split_once("->").map_or("", |c| c.1).split('<').next().unwrap_or("");
            for n in [e.from.as_str(), child] {
                if let Some(v) = nodes.get_mut(n) {
                    v["in_graph"] = json!(true);
                }
            }
        }
    }
    let cfg = json!({"n_layers": scores.layers, "n_heads": scores.heads, "parallel_attn_mlp": scores.parallel, "d_model": d_model});
    Ok(json!({"cfg": cfg, "nodes": nodes, "edges": edges}))
}

/// Writes `importances` to `path`, atomically.
pub fn write_importances(path: &Path, scores: &EdgeScores, circuit: &[usize], d_model: usize) -> Result<()> {
    let v = importances(scores, circuit, d_model)?;
    let text = serde_json::to_vec(&v).map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
    attrpatch_onnx::fsutil::write_atomic(path, &text)
}

/// An importance file read back onto `model`'s edges.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    /// `model`'s scores with every edge's score the file's (0 where the file
    /// lists none, as EAP-IG's `Graph.from_json` leaves it); method "MIB file".
    pub scores: EdgeScores,
    /// The model's edges the file does not list.
    pub missing: usize,
}

/// Reads an EAP-IG/MIB importance file (`Graph.to_json`'s layout) onto the
/// edges of `model` (scores of the same model, e.g. from `run_edges`): the
/// file's `cfg` must match the model's layers and heads, and every edge name
/// must be one of the model's edges. `in_graph` is not read: the circuits
/// are the top K of the file's scores, as MIB's `apply_topn` takes them.
pub fn read_importances(path: &Path, model: &EdgeScores) -> Result<Imported> {
    let file = path.display();
    let bytes = std::fs::read(path).map_err(|e| Error::Input(format!("{file}: {e}")))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Input(format!("{file}: not an importance file (JSON: {e})")))?;
    check_ungrouped(model, &format!("{file}"))?;
    let cfg = |key: &str| v["cfg"][key].as_u64().map(|n| n as usize);
    if (cfg("n_layers"), cfg("n_heads")) != (Some(model.layers), Some(model.heads)) {
        return Err(Error::Input(format!(
            "{file}: cfg has n_layers {:?} and n_heads {:?}, the model {} and {}: an importance file of another model?",
            v["cfg"]["n_layers"], v["cfg"]["n_heads"], model.layers, model.heads
        )));
    }
    if let Some(p) = v["cfg"]["parallel_attn_mlp"].as_bool().filter(|&p| p != model.parallel) {
        return Err(Error::Input(format!(
            "{file}: cfg has parallel_attn_mlp {p}, the model's blocks are {}",
            if model.parallel { "parallel" } else { "sequential" }
        )));
    }
    let Some(edges) = v["edges"].as_object() else {
        return Err(Error::Input(format!(
            "{file}: no 'edges' object (EAP-IG's Graph.to_json layout: cfg, nodes, edges)"
        )));
    };
    let index: HashMap<EdgeKey, usize> =
        model.edges.iter().enumerate().map(|(i, e)| ((e.from.clone(), e.to.clone()), i)).collect();
    let mut out = model.clone();
    out.edges.iter_mut().for_each(|e| e.score = 0.0);
    let mut seen = vec![false; model.edges.len()];
    for (name, info) in edges {
        let key = parse_edge(name, model).map_err(|why| Error::Input(format!("{file}: edge '{name}': {why}")))?;
        let Some(&i) = index.get(&key) else {
            return Err(Error::Input(format!(
                "{file}: edge '{name}' ({} -> {}) is not an edge of the model: a reader only reads writers of earlier \
                 layers (and, in sequential blocks, its own layer's heads for the MLP)",
                key.0, key.1
            )));
        };
        let Some(score) = info["score"].as_f64() else {
            return Err(Error::Input(format!(
                "{file}: edge '{name}': expected {{\"score\": number, ...}}, got {info}"
            )));
        };
        out.edges[i].score = score;
        seen[i] = true;
    }
    out.method = "MIB file".into();
    out.ig_steps = 1;
    out.nodes = super::scores::node_scores(&out.edges);
    Ok(Imported { scores: out, missing: seen.iter().filter(|&&s| !s).count() })
}

/// attrpatch's (writer, reader) of MIB's edge name, or why not.
fn parse_edge(name: &str, model: &EdgeScores) -> std::result::Result<EdgeKey, String> {
    let (parent, child) = name.split_once("->").ok_or("expected 'parent->child' or 'parent->a{l}.h{h}<q|k|v>'")?;
    let node = |n: &str, writer: bool| -> std::result::Result<String, String> {
        let (l, h) = (model.layers, model.heads);
        let ok = match n {
            "input" => writer,
            "logits" => !writer,
            // Canonical names only ("a01.h2" is not EAP-IG's "a1.h2").
            _ => match n.strip_prefix('m').and_then(|x| x.parse::<usize>().ok()) {
                Some(m) => m < l && n == format!("m{m}"),
                None => n
                    .strip_prefix('a')
                    .and_then(|x| x.split_once(".h"))
                    .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
                    .is_some_and(|(a, b)| a < l && b < h && n == format!("a{a}.h{b}")),
            },
        };
        if ok {
            Ok(n.to_string())
        } else {
            let last = if writer { "input" } else { "logits" };
            Err(format!(
                "unknown {} node '{n}'; expected {last}, a{{l}}.h{{h}} or m{{l}} with l < {l} layers and h < {h} heads",
                if writer { "parent" } else { "child" }
            ))
        }
    };
    let from = node(parent, true)?;
    let to = match child.strip_suffix('>').and_then(|c| c.split_once('<')) {
        Some((head, qkv @ ("q" | "k" | "v"))) if head.starts_with('a') => format!("{}.{qkv}", node(head, false)?),
        Some((_, other)) => return Err(format!("unknown input '<{other}>'; expected <q>, <k> or <v> of a head")),
        None if child.starts_with('a') => {
            return Err(match child.rsplit_once('.') {
                Some((head, qkv @ ("q" | "k" | "v"))) => {
                    format!("unknown child node '{child}' (attrpatch's name); expected MIB's '{head}<{qkv}>'")
                }
                _ => format!("child '{child}' is a head: expected '{child}<q>', '{child}<k>' or '{child}<v>'"),
            })
        }
        None => node(child, false)?,
    };
    Ok((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edges::{EdgeScore, Topology};

    /// Every edge of a 2-layer, 2-head model, scores i / 7 - 3 (signed, distinct).
    fn model(kv_heads: usize, parallel: bool) -> EdgeScores {
        let t = Topology { layers: 2, heads: 2, kv_heads, parallel };
        let edges: Vec<EdgeScore> = t
            .edges()
            .iter()
            .enumerate()
            .map(|(i, (w, r))| EdgeScore { from: w.to_string(), to: r.to_string(), score: i as f64 / 7.0 - 3.0 })
            .collect();
        let nodes = crate::edges::scores::node_scores(&edges);
        EdgeScores {
            method: "EAP".into(),
            ig_steps: 1,
            metric: "logit diff".into(),
            convention: "denoising".into(),
            ablation: "patching".into(),
            layers: 2,
            heads: 2,
            kv_heads,
            parallel,
            edges,
            nodes,
        }
    }

    /// `name` in a temp folder unique to this test process and `name`, and the folder's guard.
    fn temp(name: &str) -> (crate::test_dir::TestDir, std::path::PathBuf) {
        let dir = crate::test_dir::TestDir::new(&format!("attrpatch-mib-{}-{name}", std::process::id()));
        let path = dir.join(name);
        (dir, path)
    }

    #[test]
    fn edge_names_are_eap_igs() {
        assert_eq!(edge_name("a0.h1", "a1.h0.q"), "a0.h1->a1.h0<q>");
        assert_eq!(edge_name("input", "m0"), "input->m0");
        assert_eq!(edge_name("m1", "logits"), "m1->logits");
    }

    #[test]
    fn importance_files_round_trip() {
        for parallel in [false, true] {
            let s = model(2, parallel);
            let (_dir, path) = temp(&format!("round-{parallel}.json"));
            let circuit = crate::edges::faithfulness::circuit(&s, 5);
            write_importances(&path, &s, &circuit, 16).unwrap();
            let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            assert_eq!(v["cfg"], json!({"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": parallel, "d_model": 16}));
            assert_eq!(v["edges"].as_object().unwrap().len(), s.edges.len());
            let on = v["edges"].as_object().unwrap().values().filter(|e| e["in_graph"] == json!(true)).count();
            assert_eq!(on, 5);
            assert_eq!(v["nodes"]["logits"]["in_graph"], json!(true));
            assert!(v["edges"]["a0.h1->a1.h0<k>"]["score"].as_f64().is_some());
            let mut zeroed = s.clone();
            zeroed.edges.iter_mut().for_each(|e| e.score = 0.0);
            let back = read_importances(&path, &zeroed).unwrap();
            assert_eq!(back.missing, 0);
            assert_eq!(back.scores.edges, s.edges, "the same edges, in order, with the same scores");
            assert_eq!(back.scores.method, "MIB file");
        }
    }

    /// Refusals name the file, the edge, the node and what is expected.
    #[test]
    fn bad_importance_files_are_refused_with_the_reason() {
        let s = model(2, false);
        let (_dir, path) = temp("bad.json");
        let file = path.display().to_string();
        let write = |edges: Value, cfg: Value| {
            std::fs::write(&path, json!({"cfg": cfg, "nodes": {}, "edges": edges}).to_string()).unwrap()
        };
        let cfg = json!({"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": false});
        let err = |edges: Value, cfg: &Value| {
            write(edges, cfg.clone());
            read_importances(&path, &s).unwrap_err().to_string()
        };
        let e = err(json!({"a0.h7->logits": {"score": 1.0}}), &cfg);
        assert!(e.contains(&file) && e.contains("'a0.h7'") && e.contains("h < 2 heads"), "{e}");
        let e = err(json!({"input->a1.h0.q": {"score": 1.0}}), &cfg);
        assert!(e.contains("'a1.h0.q'") && e.contains("'a1.h0<q>'"), "{e}");
        let e = err(json!({"input->a1.h0": {"score": 1.0}}), &cfg);
        assert!(e.contains("a1.h0<q>"), "{e}");
        let e = err(json!({"m1->m0": {"score": 1.0}}), &cfg);
        assert!(e.contains("not an edge of the model"), "{e}");
        let e = err(json!({"m0->logits": {"score": "big"}}), &cfg);
        assert!(e.contains("m0->logits") && e.contains("score"), "{e}");
        let e = err(json!({}), &json!({"n_layers": 3, "n_heads": 2}));
        assert!(e.contains("n_layers") && e.contains("another model"), "{e}");
        // Listed edges are read; the rest score 0, as EAP-IG leaves them.
        write(json!({"m0->logits": {"score": 2.5, "in_graph": true}}), cfg.clone());
        let back = read_importances(&path, &s).unwrap();
        assert_eq!(back.missing, s.edges.len() - 1);
        assert_eq!(back.scores.edges.iter().filter(|e| e.score != 0.0).count(), 1);
        // Grouped-query attention cannot be written or read.
        let gqa = model(1, false);
        let e = importances(&gqa, &[], 16).unwrap_err().to_string();
        assert!(e.contains("key/value heads") && e.contains("edges.json"), "{e}");
        assert!(read_importances(&path, &gqa).is_err());
        let e = read_importances(&temp("absent.json").1, &s).unwrap_err().to_string();
        assert!(e.contains("absent.json"), "{e}");
    }

    #[test]
    fn the_k_grid_truncates_as_python_int_does() {
        assert_eq!(ks(110), vec![0, 0, 0, 1, 2, 5, 11, 22, 55, 110]);
        assert_eq!(ks(32491), vec![32, 64, 162, 324, 649, 1624, 3249, 6498, 16245, 32491]);
        assert_eq!(ks(0), vec![0; 10]);
    }

    /// A hand-made curve: f = 0 up to p = .1, 1 from p = .2 on. By hand, with
    /// trapezoids: CPR = (.2 - .1)(0 + 1)/2 + (.5 - .2) + (1 - .5) = .85; CMD =
    /// (.1 - .001) x 1 + (.2 - .1)/2 = .149.
    #[test]
    fn areas_are_mibs_trapezoids_on_a_hand_made_curve() {
        let f = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let (cpr, cmd) = areas(&FRACTIONS, &f);
        assert!((cpr - 0.85).abs() < 1e-12, "CPR {cpr}");
        assert!((cmd - 0.149).abs() < 1e-12, "CMD {cmd}");
        // Not clipped: f = 2 everywhere is CPR 2 x .999 and CMD .999.
        let (cpr, cmd) = areas(&FRACTIONS, &[2.0; 10]);
        assert!((cpr - 1.998).abs() < 1e-12 && (cmd - 0.999).abs() < 1e-12, "{cpr} {cmd}");
        assert_eq!(areas(&[0.5], &[1.0]), (0.0, 0.0));
    }

    #[test]
    fn the_curve_needs_every_k() {
        let c = MibCurve::from_points(110, |k| Some(k as f64 / 110.0)).unwrap();
        assert_eq!(c.k_percent, vec![0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
        assert_eq!(c.f[9], 1.0);
        assert!(MibCurve::from_points(110, |k| (k != 22).then_some(0.5)).is_none());
    }
}
