//! Writing a job's results: PNG heatmaps, CSV grids, one JSON file with
//! everything (baselines, grids, prompts, hooks, runtime) and, when asked,
//! each pair's grids as JSON lines; each file atomically.

use crate::{grid_json, write_csv, Grid};
use attrpatch_core::job::{head_labels, layer_labels, position_labels, JobResult};
use attrpatch_onnx::error::{Error, Result};
use attrpatch_onnx::fsutil::{write_atomic, write_atomic_with};
use std::io::Write;
use std::path::{Path, PathBuf};

fn value_label(r: &JobResult) -> String {
    format!("Norm. {}", r.manifest.metric.label())
}

/// The job's attribution over attention heads (layer x head, last position) as a `Grid` named "heads".
pub fn heads_grid(r: &JobResult) -> Grid {
    let title = format!("{} over attention heads (last position)", r.manifest.method.label());
    heads_grid_of(r, &r.grids, "heads", title)
}

/// `heads_grid` of other grids of the same job (AtP*'s queries and keys).
pub fn heads_grid_of(r: &JobResult, grids: &attrpatch_core::grids::Grids, name: &str, title: String) -> Grid {
    Grid {
        name: name.into(),
        title,
        subtitle: crate::subtitle(&r.manifest),
        row_label: "Layer".into(),
        col_label: "Head".into(),
        row_names: layer_labels(grids.heads.len()),
        col_names: head_labels(&r.manifest),
        tokens: vec![],
        value_label: value_label(r),
        values: grids.heads.clone(),
    }
}

/// The job's attribution over token positions (layer x position; with attention
/// hooks, the heads summed) as a `Grid` named "positions".
pub fn positions_grid(r: &JobResult) -> Grid {
    // Attention hooks: every head of a position together (the subtitle names the hook).
    let title = match r.manifest.n_heads {
        0 => format!("{} over token positions", r.manifest.method.label()),
        _ => format!("{} over token positions (heads summed)", r.manifest.method.label()),
    };
    positions_grid_of(r, &r.grids, "positions", title)
}

/// `positions_grid` of other grids of the same job (AtP*'s queries and keys).
pub fn positions_grid_of(r: &JobResult, grids: &attrpatch_core::grids::Grids, name: &str, title: String) -> Grid {
    Grid {
        name: name.into(),
        title,
        subtitle: crate::subtitle(&r.manifest),
        row_label: "Layer".into(),
        col_label: "Token position (first prompt's tokens)".into(),
        row_names: layer_labels(grids.positions.len()),
        col_names: position_labels(&r.manifest),
        tokens: (0..r.manifest.seq_len).map(|i| r.manifest.token_labels.get(i).cloned().unwrap_or_default()).collect(),
        value_label: value_label(r),
        values: grids.positions.clone(),
    }
}

/// Writes a result's files in `out_dir`: grids as CSV (and PNG/SVG with `figures`), results.json, report.html; returns them.
pub fn write_results(r: &JobResult, out_dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let mut written = vec![];
    let heads = heads_grid(r);
    let positions = positions_grid(r);
    // Hooks that do not split into heads have no heads grid; exact patching
    // computes the positions grid only when asked.
    let has_heads = r.manifest.n_heads > 0 && !r.grids.heads.is_empty();
    let has_positions = !r.grids.positions.is_empty();
    let grids: Vec<&Grid> =
        [(has_heads, &heads), (has_positions, &positions)].into_iter().filter(|(on, _)| *on).map(|(_, g)| g).collect();
    for g in grids {
        #[cfg(feature = "figures")]
        written.extend(crate::write_heatmap(g, &out_dir.join(format!("{}.png", g.name)))?);
        let csv = out_dir.join(format!("{}.csv", g.name));
        write_csv(g, &csv)?;
        written.push(csv);
    }
    let m = &r.manifest;
    let (clean, corr) = (r.clean_metric, r.corrupted_metric);
    let json = serde_json::json!({
        "method": m.method,
        "model": m.model,
        "model_hash": m.model_hash,
        "runtime": m.runtime,
        "runtime_calls": r.runtime_calls,
        "batches_resumed": r.batches_resumed,
        "metric": r.manifest.metric,
        "clean_logit_diff": clean,
        "corrupted_logit_diff": corr,
        "clean_metric": 1.0,
        "corrupted_metric": 0.0,
        "clean_accuracy": r.baselines.clean_accuracy,
        "warnings": r.baselines.warnings,
        "n_pairs": m.prompts.len(),
        "batch_size": m.batch_size,
        "memory": m.memory,
        "seq_len": m.seq_len,
        "n_heads": m.n_heads,
        "hooks": m.hooks,
        "prompts": m.prompts,
        "hooks_kind": m.hooks_kind,
        "heads": if has_heads { grid_json(&heads) } else { serde_json::Value::Null },
        "positions": if has_positions { grid_json(&positions) } else { serde_json::Value::Null },
        "seconds": r.seconds,
    });
    written.push(crate::write_report_html(r, out_dir)?);
    let path = out_dir.join("results.json");
    let text = serde_json::to_vec_pretty(&json).map_err(|e| Error::Runtime(format!("serialising results: {e}")))?;
    write_atomic(&path, &text)?;
    written.push(path);
    if !r.per_pair.is_empty() {
        let path = out_dir.join("per_prompt.jsonl");
        write_atomic_with(&path, |w| {
            for p in &r.per_pair {
                serde_json::to_writer(&mut *w, p)?;
                w.write_all(b"\n")?;
            }
            Ok(())
        })?;
        written.push(path);
    }
    Ok(written)
}
