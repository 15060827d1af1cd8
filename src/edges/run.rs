//! The edge job: the edge graph run over the prompt pairs in batches (as
//! many runtime calls as `run` makes), each batch's score matrix turned into
//! the attribution of its pairs' summed metric, and the sum normalised as
//! `run` normalises its grids: by N (CLEAN - CORR) over the whole prompt set.

use super::graph::{self, out, EdgeGraphOptions};
use super::scores::{node_scores, EdgeScore, EdgeScores};
use super::{Reader, Writer};
use crate::augment::names;
use crate::batches::Totals;
use crate::error::{Error, Result};
use crate::graph_cache::GraphKey;
use crate::job::{pair_inputs, prepare, JobGraph, JobOptions};
use crate::memory::{choose, Budget, Workload};
use crate::runtime::take_output;
use std::collections::HashMap;

/// An edge job's scores and what checks read beside them.
pub struct EdgeRun {
    /// The scores, normalised as `run`'s grids.
    pub scores: EdgeScores,
    /// Per layer and head (plain EAP only; empty with EAP-IG): the head's node
    /// attribution summed over positions, normalised alike. The identity says it
    /// equals the sum of the head's outgoing edge scores.
    pub head_attribution: Vec<Vec<f64>>,
    /// Runtime calls made.
    pub runtime_calls: usize,
    /// Seconds spent in runtime calls.
    pub run_seconds: f64,
}

/// Every edge's score (EAP with `ig_steps` = 1, EAP-IG-inputs with more):
/// edges in `Topology::edges` order, nodes aggregated from them.
pub fn run_edges(opts: &JobOptions, ig_steps: usize) -> Result<EdgeScores> {
    Ok(run_edges_detailed(opts, ig_steps)?.scores)
}

/// `run_edges`, with the head attributions and call count.
pub fn run_edges_detailed(opts: &JobOptions, ig_steps: usize) -> Result<EdgeRun> {
    if opts.shard.is_some() {
        return Err(Error::Input("edge scores run in one process: shards are not supported".into()));
    }
    let gopts = EdgeGraphOptions { metric: opts.metric, heads: opts.heads, ig_steps, ..Default::default() };
    let mut p = prepare(opts, GraphKey::new("edges", &gopts), |model| graph::build(model, &gopts))?;
    let n = p.pairs.len();
    let explicit = match opts.batch_size {
        Some(0) => Some(n.max(1)),
        other => other,
    };
    let per_call = choose(explicit, n, &p.shape, Workload::AttributionPair, &Budget::new(opts.max_memory)).per_call;
    let topo = p.graph.anatomy.topology();
    let (u, r) = (topo.writers().len(), topo.readers().len());
    let layers = topo.layers;
    crate::progress::stage(&opts.progress, "creating the runtime session");
    let mut rt = p.session(&opts.runtime)?;
    let mut scores = vec![0.0f64; u * r];
    let mut heads = vec![vec![0.0f64; topo.heads]; layers];
    let mut totals = Totals::default();
    let mut calls = 0;
    let clock = std::time::Instant::now();
    for start in (0..n).step_by(per_call.max(1)) {
        let range = start..(start + per_call).min(n);
        let t = p.tokens.slice(range.clone());
        let mut outs = rt.run(pair_inputs(&p.graph.token_inputs(), &t))?;
        calls += 1;
        let rows = range.len();
        let clean = take_output(&mut outs, names::CLEAN_LDS)?;
        let corrupted = take_output(&mut outs, names::CORRUPTED_LDS)?;
        // EAP-IG's corrupted rows are its n runs; run 0 is the plain corrupted one.
        let clean: Vec<f64> = clean.iter().map(|&v| v as f64).collect();
        let corrupted: Vec<f64> = corrupted.iter().take(rows).map(|&v| v as f64).collect();
        let graph_clean = take_output(&mut outs, names::CLEAN_LD)?.iter().next().copied().unwrap_or(f32::NAN) as f64;
        let graph_corr = take_output(&mut outs, names::CORRUPTED_LD)?.iter().next().copied().unwrap_or(f32::NAN) as f64;
        if crate::batches::indistinguishable(graph_clean, graph_corr) {
            return Err(Error::Numeric(format!(
                "pairs {}..{}: the clean and corrupted metric are equal ({graph_clean} and {graph_corr}); the normalised \
                 metric divides by their difference. Check that the corrupted prompts differ from the clean ones",
                range.start, range.end
            )));
        }
        // The graph differentiates (mean - CORR) / (CLEAN - CORR) over its rows: undo it.
        let scale = rows as f64 * (graph_clean - graph_corr);
        let s = take_output(&mut outs, out::SCORES)?;
        if s.len() != u * r {
            return Err(Error::Runtime(format!("'{}' has {} values, expected {u} x {r}", out::SCORES, s.len())));
        }
        for (acc, v) in scores.iter_mut().zip(s.iter()) {
            if !v.is_finite() {
                return Err(Error::Numeric(format!("an edge score of pairs {}..{} is {v}", range.start, range.end)));
            }
            *acc += scale * *v as f64;
        }
        if ig_steps == 1 {
            for (l, row) in heads.iter_mut().enumerate() {
                let a = take_output(&mut outs, &out::head_attribution(l))?;
                for (acc, v) in row.iter_mut().zip(a.iter()) {
                    *acc += scale * *v as f64;
                }
            }
        }
        totals.pairs += rows;
        totals.sum_clean += clean.iter().sum::<f64>();
        totals.sum_corrupted += corrupted.iter().sum::<f64>();
    }
    let run_seconds = clock.elapsed().as_secs_f64();
    let k = totals.normaliser()?;
    let writers: HashMap<Writer, usize> = topo.writers().into_iter().enumerate().map(|(i, w)| (w, i)).collect();
    let readers: HashMap<Reader, usize> = topo.readers().into_iter().enumerate().map(|(i, r)| (r, i)).collect();
    let edges: Vec<EdgeScore> = topo
        .edges()
        .into_iter()
        .map(|(w, rd)| EdgeScore {
            from: w.to_string(),
            to: rd.to_string(),
            score: k * scores[writers[&w] * r + readers[&rd]],
        })
        .collect();
    let nodes = node_scores(&edges);
    let head_attribution =
        if ig_steps == 1 { heads.iter().map(|row| row.iter().map(|v| k * v).collect()).collect() } else { vec![] };
    Ok(EdgeRun {
        scores: EdgeScores {
            method: if ig_steps == 1 { "EAP".into() } else { "EAP-IG".into() },
            ig_steps,
            metric: opts.metric.label().to_string(),
            layers,
            heads: topo.heads,
            kv_heads: topo.kv_heads,
            parallel: topo.parallel,
            edges,
            nodes,
        },
        head_attribution,
        runtime_calls: calls,
        run_seconds,
    })
}
