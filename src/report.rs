//! Writing a job's results: PNG heatmaps, CSV grids and one JSON file with
//! everything (baselines, grids, prompts, hooks, runtime), each atomically.

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::job::JobResult;
use crate::render::{grid_json, write_csv, write_heatmap_png, Grid};
use std::path::{Path, PathBuf};

pub const VALUE_LABEL: &str = "Norm. logit diff";

pub fn heads_grid(r: &JobResult) -> Grid {
    Grid {
        name: "heads".into(),
        title: "Attribution patching over attention heads (last position)".into(),
        row_label: "Layer".into(),
        col_label: "Head".into(),
        row_names: (0..r.grids.heads.len()).map(|l| l.to_string()).collect(),
        col_names: (0..r.n_heads).map(|h| h.to_string()).collect(),
        value_label: VALUE_LABEL.into(),
        values: r.grids.heads.clone(),
    }
}

pub fn positions_grid(r: &JobResult) -> Grid {
    Grid {
        name: "positions".into(),
        title: "Attribution patching over token positions".into(),
        row_label: "Layer".into(),
        col_label: "Token position (first prompt's tokens)".into(),
        row_names: (0..r.grids.positions.len()).map(|l| l.to_string()).collect(),
        col_names: r.token_labels.iter().enumerate().map(|(i, t)| format!("{i} {t}")).collect(),
        value_label: VALUE_LABEL.into(),
        values: r.grids.positions.clone(),
    }
}

pub fn write_results(r: &JobResult, model: &Path, out_dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let mut written = vec![];
    let heads = heads_grid(r);
    let positions = positions_grid(r);
    for g in [&heads, &positions] {
        let png = out_dir.join(format!("{}.png", g.name));
        write_heatmap_png(g, &png)?;
        let csv = out_dir.join(format!("{}.csv", g.name));
        write_csv(g, &csv)?;
        written.extend([png, csv]);
    }
    let clean = r.clean_logit_diff;
    let corr = r.corrupted_logit_diff;
    let json = serde_json::json!({
        "model": model.display().to_string(),
        "runtime": r.runtime,
        "runtime_calls": r.runtime_calls,
        "clean_logit_diff": clean,
        "corrupted_logit_diff": corr,
        "clean_metric": (clean - corr) / (clean - corr),
        "corrupted_metric": 0.0,
        "n_pairs": r.pairs.len(),
        "seq_len": r.tokens.seq_len,
        "n_heads": r.n_heads,
        "hooks": r.hooks.iter().map(|h| serde_json::json!({
            "layer": h.layer, "node": h.node, "op_type": h.op_type, "tensor": h.tensor, "matched_by": h.matched_by,
        })).collect::<Vec<_>>(),
        "prompts": r.pairs,
        "clean_ids": r.tokens.clean_ids,
        "corrupted_ids": r.tokens.corrupted_ids,
        "answer_ids": r.tokens.correct_ids.iter().zip(&r.tokens.incorrect_ids).map(|(a, b)| [*a, *b]).collect::<Vec<_>>(),
        "heads": grid_json(&heads),
        "positions": grid_json(&positions),
        "seconds": r.seconds,
    });
    let path = out_dir.join("results.json");
    let text = serde_json::to_vec_pretty(&json).map_err(|e| Error::Runtime(format!("serialising results: {e}")))?;
    write_atomic(&path, &text)?;
    written.push(path);
    Ok(written)
}
