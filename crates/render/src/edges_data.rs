//! The report page's "Edges" data: every edge's score for the sortable table,
//! the circuit layout for the largest K the slider offers (placed here, so
//! report.js only picks the top K edges and the boxes they touch, and draws
//! them where the circuit figure would), and the faithfulness curve when measured.

use super::circuit_layout::{
    control_points, layout, lead_in, method_label, top_edges, BoxKey, CircuitLayout, GUTTER, PORT_MARK,
};
#[cfg(feature = "figures")]
use super::faithfulness::faithfulness_svg;
use attrpatch_core::edges::{EdgeScore, EdgeScores};
use attrpatch_onnx::error::{Error, Result};
use serde_json::{json, Value};

/// The largest K the page's slider offers: beyond it a circuit is no longer readable.
pub const K_MAX: usize = 500;

/// At most this many edges go into the page's table, those of largest |score|
/// (GPT-2 small has 32,491; a 7B model's million would make a page of tens of
/// megabytes). edges.csv always has them all.
pub const TABLE_MAX: usize = 100_000;

/// What the report page's Edges section shows.
#[derive(Debug, Clone, Copy)]
pub struct EdgeReport<'a> {
    /// Every edge's score.
    pub scores: &'a EdgeScores,
    /// The circuit's K when the page opens (the slider's start; the circuit figure's K).
    pub top_k: usize,
    /// (edges in the circuit, fraction of the metric gap restored), when measured; may be empty.
    pub faithfulness: &'a [(usize, f64)],
}

fn kind(key: BoxKey) -> &'static str {
    match key {
        BoxKey::Input => "input",
        BoxKey::Head(..) => "head",
        BoxKey::Kv(..) => "kv",
        BoxKey::Mlp(_) => "mlp",
        BoxKey::Logits => "logits",
    }
}

fn layout_json(g: &CircuitLayout) -> Value {
    let boxes: Vec<Value> = g
        .boxes
        .iter()
        .map(|b| {
            let ports: Vec<Value> = b
                .ports
                .iter()
                .map(|p| json!({"label": p.label, "reader": p.reader, "x": p.at.0, "y": p.at.1}))
                .collect();
            json!({
                "label": b.label, "kind": kind(b.key), "x": b.x, "y": b.y, "w": b.w, "h": b.h,
                "writer": b.writer.as_ref().map(|(name, _)| name),
                "ports": ports,
            })
        })
        .collect();
    // Each edge with its curve's control points, so the script draws the figure's curve.
    let edges: Vec<Value> = g
        .edges
        .iter()
        .map(|e| {
            let lead = lead_in(e.end);
            let (c1, c2) = control_points(e.start, lead);
            let [r, gr, b] = e.colour;
            let (s, t) = (e.start, e.end);
            json!({
                "from": e.from, "to": e.to, "score": e.score, "a": e.from_box, "b": e.to_box,
                "d": format!("M{},{} C{},{} {},{} {},{} L{},{}", s.0, s.1, c1.0, c1.1, c2.0, c2.1, lead.0, lead.1, t.0, t.1),
                "colour": format!("rgb({r},{gr},{b})"), "width": e.width, "opacity": e.opacity,
            })
        })
        .collect();
    let bands: Vec<Value> =
        g.bands.iter().map(|b| json!({"layer": b.layer, "top": b.top, "bottom": b.bottom})).collect();
    json!({
        "width": g.width, "height": g.height, "gutter": GUTTER, "port_mark": [PORT_MARK.0, PORT_MARK.1],
        "boxes": boxes, "edges": edges, "bands": bands, "max_abs": g.max_abs,
    })
}

/// The Edges section's data (see report.js, `renderEdges`).
pub fn edges_json(r: &EdgeReport) -> Result<Value> {
    edges_json_with(r, TABLE_MAX)
}

/// The table's rows: every edge in table order, or the `cap` of largest |score|.
fn table_json(s: &EdgeScores, cap: usize) -> Result<Vec<Value>> {
    let row = |e: &EdgeScore| json!([e.from, e.to, e.score]);
    Ok(if s.edges.len() <= cap {
        s.edges.iter().map(row).collect()
    } else {
        top_edges(s, cap)?.into_iter().map(row).collect()
    })
}

fn edges_json_with(r: &EdgeReport, table_cap: usize) -> Result<Value> {
    let s = r.scores;
    let n = s.edges.len();
    if r.top_k == 0 {
        return Err(Error::Input("report: the circuit's K must be at least 1 edge".into()));
    }
    let k_max = n.min(K_MAX.max(r.top_k));
    let table = table_json(s, table_cap)?;
    let faithfulness = if r.faithfulness.is_empty() {
        Value::Null
    } else {
        // The curve's SVG is drawn with plotters: without the `figures` feature the page lists the points.
        #[cfg(feature = "figures")]
        let svg = Value::String(faithfulness_svg(r.faithfulness, s)?);
        #[cfg(not(feature = "figures"))]
        let svg = Value::Null;
        json!({"points": r.faithfulness, "svg": svg})
    };
    Ok(json!({
        "method": method_label(s),
        "metric": s.metric,
        "n_edges": n,
        "heads": s.heads,
        "kv_heads": s.kv_heads,
        "k": r.top_k.min(n),
        "k_max": k_max,
        "table": table,
        "layout": layout_json(&layout(s, k_max)?),
        "faithfulness": faithfulness,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::circuit_layout::tests::{synthetic, GPT2_SMALL};
    use super::super::circuit_layout::LEAD_IN;
    use super::*;

    #[test]
    fn the_page_gets_every_edge_and_the_layout_for_the_largest_k() {
        let s = synthetic(GPT2_SMALL, 4);
        let v = edges_json(&EdgeReport { scores: &s, top_k: 30, faithfulness: &[(10, 0.5), (100, 0.9)] }).unwrap();
        assert_eq!(v["table"].as_array().unwrap().len(), 32491);
        assert_eq!(v["table"][7][2].as_f64().unwrap(), s.edges[7].score);
        assert_eq!((v["k"].as_u64(), v["k_max"].as_u64()), (Some(30), Some(K_MAX as u64)));
        let edges = v["layout"]["edges"].as_array().unwrap();
        assert_eq!(edges.len(), K_MAX);
        // Edge a's path starts at its writer box's top and ends on its reader box's lower edge.
        let boxes = v["layout"]["boxes"].as_array().unwrap();
        for e in edges {
            let (a, b) = (&boxes[e["a"].as_u64().unwrap() as usize], &boxes[e["b"].as_u64().unwrap() as usize]);
            assert_eq!(a["writer"], e["from"]);
            assert!(b["ports"].as_array().unwrap().iter().any(|p| p["reader"] == e["to"]), "{e}");
            let d = e["d"].as_str().unwrap();
            let x = a["x"].as_i64().unwrap() + a["w"].as_i64().unwrap() / 2;
            assert!(d.starts_with(&format!("M{x},{} C", a["y"])), "{d}");
            // ... and rises straight into its port, as in the circuit figure.
            let port = b["ports"].as_array().unwrap().iter().find(|p| p["reader"] == e["to"]).unwrap();
            let (px, py) = (port["x"].as_i64().unwrap(), port["y"].as_i64().unwrap());
            assert!(d.ends_with(&format!(" {px},{} L{px},{py}", py + LEAD_IN as i64)), "{d}");
        }
        assert_eq!(v["layout"]["port_mark"], json!([PORT_MARK.0, PORT_MARK.1]));
        // The curve's SVG is drawn with plotters: without the figures the page has only its points.
        #[cfg(feature = "figures")]
        assert!(v["faithfulness"]["svg"].as_str().unwrap().starts_with("<svg"));
        assert_eq!(v["faithfulness"]["points"].as_array().map(Vec::len), Some(2));
        let small = synthetic(attrpatch_core::edges::Topology { layers: 1, heads: 1, kv_heads: 1, parallel: false }, 1);
        let v = edges_json(&EdgeReport { scores: &small, top_k: 3, faithfulness: &[] }).unwrap();
        assert_eq!(v["k_max"].as_u64(), Some(small.edges.len() as u64));
        assert!(v["faithfulness"].is_null());
    }

    #[test]
    fn a_big_table_keeps_the_edges_of_largest_score() {
        let s = synthetic(GPT2_SMALL, 8);
        let v = edges_json_with(&EdgeReport { scores: &s, top_k: 10, faithfulness: &[] }, 1000).unwrap();
        let kept: Vec<f64> = v["table"].as_array().unwrap().iter().map(|r| r[2].as_f64().unwrap()).collect();
        assert_eq!(kept.len(), 1000);
        assert_eq!(v["n_edges"].as_u64(), Some(32491));
        let smallest_kept = kept.iter().fold(f64::INFINITY, |m, v| m.min(v.abs()));
        let larger = s.edges.iter().filter(|e| e.score.abs() > smallest_kept).count();
        assert!(larger < 1000, "{larger} edges outside the table beat its smallest");
    }
}
