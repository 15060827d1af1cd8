//! report.html: one self-contained page per output folder (inline CSS, JS and
//! data; nothing fetched when opened) with the grids as interactive heatmaps in
//! the tutorial's plotly look (RdBu centred on zero, layer 0 at the top, the
//! value under the mouse), the baselines, prompts, options and timings; from
//! `compare`, the grids side by side, the scatter plots, the largest misses and
//! the recall curves; from `run --diagnostic`, the diagnostic's subsets.
//! The page is drawn by report.js from a JSON block, so the Rust side only
//! gathers data.

use super::data::grid_json;
use super::edges_data::{edges_json, EdgeReport};
use super::labels::{hook_label, model_label, subtitle};
use crate::report::{heads_grid, positions_grid};
use attrpatch_core::compare::{Agreement, Comparison};
use attrpatch_core::job::JobResult;
use attrpatch_core::patch::diagnostic::Diagnostic;
use attrpatch_core::recall::GridRecall;
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::fsutil::write_atomic;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const CSS: &str = include_str!("report/report.css");
const JS: &str = include_str!("report/report.js");

/// Writes `out_dir/report.html` for one job's result (run, patch, or one method of compare).
pub fn write_report_html(r: &JobResult, out_dir: &Path) -> Result<PathBuf> {
    write_report_html_with_edges(r, out_dir, None)
}

/// As `write_report_html`, with an "Edges" section when `edges` is given: the
/// sortable edge table, the circuit with its K slider, the faithfulness curve.
pub fn write_report_html_with_edges(r: &JobResult, out_dir: &Path, edges: Option<&EdgeReport>) -> Result<PathBuf> {
    let title = format!("attrpatch: {}", r.manifest.method.label());
    let mut data = job_data(r);
    data["edges"] = match edges {
        Some(e) => edges_json(e)?,
        None => Value::Null,
    };
    write_page(&out_dir.join("report.html"), &title, &data)
}

/// As `write_report_html`, with the diagnostic's section (`run --diagnostic`):
/// the bound in words and each subset's exact effect beside its estimate.
pub fn write_report_html_with_diagnostic(r: &JobResult, out_dir: &Path, d: &Diagnostic) -> Result<PathBuf> {
    let title = format!("attrpatch: {}", r.manifest.method.label());
    let mut data = job_data(r);
    data["diagnostic"] = serde_json::to_value(d)
        .map_err(|e| Error::Runtime(format!("serialising the diagnostic for report.html: {e}")))?;
    write_page(&out_dir.join("report.html"), &title, &data)
}

/// Writes `out/report.html` for a comparison, linking each method's own report.
pub fn write_compare_report_html(c: &Comparison, out: &Path) -> Result<PathBuf> {
    write_page(&out.join("report.html"), "attrpatch: estimates against exact activation patching", &compare_data(c)?)
}

fn write_page(path: &Path, title: &str, data: &Value) -> Result<PathBuf> {
    let json =
        serde_json::to_string(data).map_err(|e| Error::Runtime(format!("serialising {}: {e}", path.display())))?;
    write_atomic(path, page(title, &json).as_bytes())?;
    Ok(path.to_path_buf())
}

/// The page: an error catcher first (so even a failing script leaves its error
/// in the page, where the browser test finds it), the data, then the script.
fn page(title: &str, json: &str) -> String {
    // "</" cannot end the script block early once escaped; JSON reads "<\/" as "</".
    let json = json.replace("</", "<\\/");
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<script>
window.attrpatchErrors = [];
window.addEventListener("error", function (e) {{ window.attrpatchErrors.push(String(e.message)); }});
(function () {{
  var log = console.error;
  console.error = function () {{ window.attrpatchErrors.push(Array.prototype.join.call(arguments, " ")); log.apply(console, arguments); }};
}})();
</script>
<style>
{CSS}
</style>
</head>
<body>
<main id="report"><p id="loading">This report is drawn by JavaScript; enable it to see the figures.</p></main>
<div id="tip" role="tooltip" hidden></div>
<pre id="errors" hidden></pre>
<pre id="selfcheck" hidden></pre>
<script type="application/json" id="data">{json}</script>
<script>
{JS}
</script>
<script>
document.getElementById("errors").textContent = window.attrpatchErrors.join("\n");
</script>
</body>
</html>
"#,
        title = escape(title)
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The grids a result has (heads only for hooks with heads; positions only when computed).
fn grids(r: &JobResult) -> Vec<Value> {
    let mut out = vec![];
    if r.manifest.n_heads > 0 && !r.grids.heads.is_empty() {
        out.push(grid_json(&heads_grid(r)));
    }
    if !r.grids.positions.is_empty() {
        out.push(grid_json(&positions_grid(r)));
    }
    out
}

fn job_data(r: &JobResult) -> Value {
    let m = &r.manifest;
    let per_pair: Vec<Value> = r
        .per_pair
        .iter()
        .map(|p| {
            json!({
                "index": p.index,
                "clean_logit_diff": p.clean_metric,
                "corrupted_logit_diff": p.corrupted_metric,
                "heads": p.grid.heads,
                "positions": p.grid.positions,
            })
        })
        .collect();
    json!({
        "kind": "job",
        "title": m.method.label(),
        "subtitle": subtitle(m),
        "method": m.method.label(),
        "metric": m.metric.label(),
        "hook": hook_label(&m.hooks_kind),
        "model": m.model,
        "model_label": model_label(&m.model),
        "runtime": m.runtime,
        "runtime_calls": r.runtime_calls,
        "batches_resumed": r.batches_resumed,
        "batch_size": m.batch_size,
        "n_batches": m.n_batches,
        "seq_len": m.seq_len,
        "n_heads": m.n_heads,
        "hooks": m.hooks.iter().map(|h| json!({"layer": h.layer, "tensor": h.tensor, "node": h.node})).collect::<Vec<_>>(),
        "clean_logit_diff": r.clean_metric,
        "corrupted_logit_diff": r.corrupted_metric,
        "prompts": m.prompts,
        "per_pair": per_pair,
        "pair_metrics": r.pair_metrics,
        "warnings": r.baselines.warnings,
        "clean_accuracy": r.baselines.clean_accuracy,
        "grids": grids(r),
        "seconds": r.seconds,
    })
}

fn agreement_json(a: &Agreement, exact: &Value) -> Value {
    // Each miss with its cell's name: the row's label and the column's (with its token).
    let misses: Vec<Value> = a
        .largest_misses
        .iter()
        .map(|m| {
            let token = exact["tokens"].get(m.index).cloned().unwrap_or(Value::Null);
            json!({"layer": m.layer, "index": m.index, "token": token, "estimate": m.estimate, "exact": m.exact})
        })
        .collect();
    json!({
        "pearson": a.pearson,
        "spearman": a.spearman,
        "mean_abs_error": a.mean_abs_error,
        "max_abs_error": a.max_abs_error,
        "largest_misses": misses,
    })
}

/// The recall section of one grid: each estimate's nodes to full recall per k,
/// and the figure's SVG (null without the `figures` feature).
fn recall_json(g: &GridRecall, subtitle: &str) -> Result<Value> {
    #[cfg(feature = "figures")]
    let svg = Value::String(super::recall::recall_svg(g, subtitle)?);
    #[cfg(not(feature = "figures"))]
    let svg = {
        let _ = subtitle;
        Value::Null
    };
    let methods: Vec<Value> = g
        .methods
        .iter()
        .map(|m| json!({"key": m.key, "label": m.label, "full_recall_at": m.curves.iter().map(|c| c.full_recall_at).collect::<Vec<_>>()}))
        .collect();
    Ok(json!({"nodes": g.nodes, "ks": g.ks, "methods": methods, "svg": svg}))
}

fn compare_data(c: &Comparison) -> Result<Value> {
    let x = &c.exact;
    let mut kinds = vec![];
    type GridOf = fn(&JobResult) -> super::Grid;
    let of: [(&str, GridOf); 2] = [("heads", heads_grid), ("positions", positions_grid)];
    for (name, grid_of) in of {
        let agreement_of =
            |e: &attrpatch_core::compare::Estimate| if name == "heads" { e.heads.clone() } else { e.positions.clone() };
        let compared: Vec<_> = c.estimates.iter().filter_map(|e| agreement_of(e).map(|a| (e, a))).collect();
        if compared.is_empty() {
            continue;
        }
        let panel = |r: &JobResult| {
            let mut g = grid_json(&grid_of(r));
            g["title"] = json!(r.manifest.method.label());
            g
        };
        let exact = panel(x);
        let mut panels: Vec<Value> = compared.iter().map(|(e, _)| panel(&e.result)).collect();
        panels.push(exact.clone());
        let estimates: Vec<Value> = compared
            .iter()
            .map(|(e, a)| json!({"key": e.key, "label": e.result.manifest.method.label(), "agreement": agreement_json(a, &exact)}))
            .collect();
        let recall = match c.recall.iter().find(|g| g.grid == name) {
            Some(g) => recall_json(g, &subtitle(&x.manifest))?,
            None => Value::Null,
        };
        kinds.push(json!({"name": name, "panels": panels, "estimates": estimates, "recall": recall}));
    }
    let methods: Vec<Value> = c
        .estimates
        .iter()
        .map(|e| &e.result)
        .chain([x])
        .zip(c.estimates.iter().map(|e| e.key).chain(["exact"]))
        .map(|(r, key)| {
            json!({"key": key, "label": r.manifest.method.label(), "seconds": r.seconds, "runtime_calls": r.runtime_calls})
        })
        .collect();
    Ok(json!({
        "kind": "compare",
        "title": "Estimates against exact activation patching",
        "subtitle": subtitle(&x.manifest),
        "metric": x.manifest.metric.label(),
        "hook": hook_label(&x.manifest.hooks_kind),
        "model": x.manifest.model,
        "n_pairs": x.manifest.prompts.len(),
        "clean_logit_diff": x.clean_metric,
        "corrupted_logit_diff": x.corrupted_metric,
        "prompts": x.manifest.prompts,
        "methods": methods,
        "kinds": kinds,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_cannot_close_the_script_block() {
        let p = page("a <b>", r#"{"s":"</script><script>alert(1)</script>"}"#);
        assert_eq!(p.matches("</script>").count(), 4, "{p}"); // the page's own four
        assert!(p.contains(r#"<\/script>"#));
        assert!(p.contains("<title>a &lt;b&gt;</title>"));
    }
}
