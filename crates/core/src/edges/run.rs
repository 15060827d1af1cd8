//! The edge job: the edge graph run over the prompt pairs in batches (as
//! many runtime calls as `run` makes), each batch's score matrix turned into
//! the attribution of its pairs' summed metric, and the sum normalised as
//! `run` normalises its grids: by N (CLEAN - CORR) over the whole prompt set.
//! Noising scores are the raw metric's, divided by N alone (the EAP-IG
//! codebase's mean over items); a mean ablation first runs every batch once
//! for the corrupted activations' means (`means`).

use super::convention::{Ablation, Convention, Method};
use super::graph::{self, out, EdgeGraph, EdgeGraphOptions};
use super::means::WriterMeans;
use super::scores::{node_scores, EdgeScore, EdgeScores};
use super::{Reader, Writer};
use crate::augment::names;
use crate::batches::Totals;
use crate::graph_cache::GraphKey;
use crate::job::{pair_inputs, prepare, JobGraph, JobOptions, Prepared};
use crate::memory::{choose_scaled, Budget, Workload};
use crate::runtime::{take_output, Runtime};
use attrpatch_onnx::error::{Error, Result};
use std::collections::HashMap;

/// An edge job's scores and what checks read beside them.
pub struct EdgeRun {
    /// The scores, normalised as `run`'s grids.
    pub scores: EdgeScores,
    /// Per layer and head (plain EAP only; empty with EAP-IG): the head's node
    /// attribution summed over positions, normalised alike. The identity says it
    /// equals the sum of the head's outgoing edge scores.
    pub head_attribution: Vec<Vec<f64>>,
    /// Each edge's score before the normalisation, in `scores.edges` order: the
    /// attribution of the pairs' summed metric change. Sums of jobs on disjoint
    /// pairs add up; divided by N (CLEAN - CORR) of their union they are its scores.
    pub unnormalised: Vec<f64>,
    /// Each pair's raw (clean, corrupted) metric, in prompt order.
    pub pair_metrics: Vec<(f64, f64)>,
    /// The clean prompts' mean metric.
    pub clean_metric: f64,
    /// The corrupted prompts' mean metric.
    pub corrupted_metric: f64,
    /// Whether the baselines make the normalised scores meaningful (`run`'s checks).
    pub baselines: crate::sanity::BaselineCheck,
    /// Width of the residual stream (MIB's importance files record it).
    pub d_model: usize,
    /// Runtime calls made.
    pub runtime_calls: usize,
    /// Seconds spent in runtime calls.
    pub run_seconds: f64,
    /// Where the time went (load, rewrite and session are 0 when a kept graph ran).
    pub seconds: crate::job::Timings,
    /// What ran the graph, e.g. "onnxruntime 1.31.1 (CPU)".
    pub runtime: String,
    /// With a mean ablation: the writers' corrupted activations summed over the set,
    /// for exact edge patching under the same ablation (`patching::Intervention`).
    pub means: Option<WriterMeans>,
}

/// How the edges are scored: the method, its steps, the convention and the ablation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeMethod {
    /// How the reader gradients are taken.
    pub method: Method,
    /// Integration steps of EAP-IG-inputs and EAP-IG-activations (1 for the others).
    pub ig_steps: usize,
    /// Which run is differentiated.
    pub convention: Convention,
    /// Each writer's counterfactual (noising only).
    pub ablation: Ablation,
}

impl EdgeMethod {
    /// Denoising with corrupted activations (attrpatch's default): EAP with
    /// `ig_steps` = 1, EAP-IG-inputs with more.
    pub fn steps(ig_steps: usize) -> Self {
        let method = if ig_steps > 1 { Method::EapIgInputs } else { Method::Eap };
        EdgeMethod { method, ig_steps, convention: Convention::Denoising, ablation: Ablation::Patching }
    }

    /// Denoising with corrupted activations, `method` with `ig_steps` steps.
    pub fn new(method: Method, ig_steps: usize) -> Self {
        EdgeMethod { method, ..EdgeMethod::steps(ig_steps) }
    }

    /// What edges.json and the printed method line call it, e.g. "EAP-IG-activations
    /// (5 steps, noising, zero ablation)".
    pub fn describe(&self) -> String {
        let steps = if self.method.has_steps() { format!("{} steps, ", self.ig_steps) } else { String::new() };
        format!("{} ({steps}{}, {} ablation)", self.method.label(), self.convention.label(), self.ablation.label())
    }
}

/// Refuses a method without a definition (`convention::check`), before any work.
pub fn check_method(m: &EdgeMethod, metric: crate::augment::Metric) -> Result<()> {
    super::convention::check(m.method, m.convention, m.ablation, m.ig_steps, metric)
}

/// Every edge's score (EAP with `ig_steps` = 1, EAP-IG-inputs with more):
/// edges in `Topology::edges` order, nodes aggregated from them.
pub fn run_edges(opts: &JobOptions, ig_steps: usize) -> Result<EdgeScores> {
    Ok(run_edges_detailed(opts, ig_steps)?.scores)
}

/// The edge graph's options for a job (what its cache key covers).
pub fn graph_options(opts: &JobOptions, ig_steps: usize) -> EdgeGraphOptions {
    graph_options_for(opts, &EdgeMethod::steps(ig_steps))
}

/// `graph_options` for any method.
pub fn graph_options_for(opts: &JobOptions, m: &EdgeMethod) -> EdgeGraphOptions {
    EdgeGraphOptions {
        metric: opts.metric,
        heads: opts.heads,
        method: m.method,
        ig_steps: m.ig_steps,
        convention: m.convention,
        ablation: m.ablation,
        ..Default::default()
    }
}

/// `run_edges`, with the head attributions and call count.
pub fn run_edges_detailed(opts: &JobOptions, ig_steps: usize) -> Result<EdgeRun> {
    run_edges_method(opts, &EdgeMethod::steps(ig_steps))
}

/// `run_edges_detailed` with a convention and an ablation.
pub fn run_edges_method(opts: &JobOptions, m: &EdgeMethod) -> Result<EdgeRun> {
    check_options(opts)?;
    check_method(m, opts.metric)?;
    let gopts = graph_options_for(opts, m);
    let mut p = prepare(opts, GraphKey::new("edges", &gopts), |model| graph::build(model, &gopts))?;
    run_prepared(opts, m.ig_steps, &mut p, &mut None)
}

fn check_options(opts: &JobOptions) -> Result<()> {
    if opts.shard.is_some() {
        return Err(Error::Input("edge scores run in one process: shards are not supported".into()));
    }
    Ok(())
}

/// Runs a prepared edge job; `session` is the runtime session on its graph,
/// made here when None and kept for the next call (the facade's `Attributor`).
pub fn run_prepared(
    opts: &JobOptions,
    ig_steps: usize,
    p: &mut Prepared<EdgeGraph>,
    session: &mut Option<Box<dyn Runtime>>,
) -> Result<EdgeRun> {
    check_options(opts)?;
    let n = p.pairs.len();
    let explicit = match opts.batch_size {
        Some(0) => Some(n.max(1)),
        other => other,
    };
    // A pair's corrupted copy runs `rows` rows (EAP-IG); an attribution pair is one clean
    // and one corrupted row, so it costs about (1 + rows) / 2 pairs.
    let rows = p.graph.corrupted_rows();
    let scale = (1 + rows) as f64 / 2.0;
    let budget = Budget::new(opts.max_memory);
    let per_call = choose_scaled(explicit, n, &p.shape, Workload::AttributionPair, &budget, scale).per_call;
    let topo = p.graph.anatomy.topology();
    let (u, r) = (topo.writers().len(), topo.readers().len());
    let layers = topo.layers;
    if session.is_none() {
        crate::progress::stage(&opts.progress, "creating the runtime session");
        *session = Some(p.session(&opts.runtime)?);
    }
    let rt = session.as_deref_mut().expect("made above");
    let mut scores = vec![0.0f64; u * r];
    let mut heads = vec![vec![0.0f64; topo.heads]; layers];
    let mut totals = Totals::default();
    let mut pair_metrics = Vec::with_capacity(n);
    let mut calls = 0;
    let (method, convention, ablation) = (p.graph.method, p.graph.convention, p.graph.ablation);
    let with_heads = method == Method::Eap && !ablation.is_mean();
    let z_means = method == Method::EapIgActivations && ablation.is_mean();
    let anat = &p.graph.anatomy;
    let z_width = anat.heads * anat.head_dim;
    let clock = std::time::Instant::now();
    let batches: Vec<std::ops::Range<usize>> =
        (0..n).step_by(per_call.max(1)).map(|start| start..(start + per_call).min(n)).collect();
    // A mean ablation's first pass: every batch's corrupted writers (the fed ABLATION unused).
    let mut means = WriterMeans::new(u, anat.d_model);
    let mut z_sums = WriterMeans::new(layers, z_width);
    let zeros = |rows: usize, seq: usize, width: usize| {
        crate::runtime::Value::F32(ndarray::Array3::<f32>::zeros((rows, seq, width)).into_dyn())
    };
    if ablation.is_mean() {
        crate::progress::stage(&opts.progress, "averaging the writers' corrupted activations");
        for range in &batches {
            let t = p.tokens.slice(range.clone());
            let mut inputs = pair_inputs(&p.graph.token_inputs(), &t);
            inputs.push((graph::ABLATION.into(), zeros(u, t.seq_len, anat.d_model)));
            if z_means {
                inputs.push((super::interpolate::ABLATION_Z.into(), zeros(layers, t.seq_len, z_width)));
            }
            let mut outs = rt.run(inputs)?;
            calls += 1;
            means.add(&take_output(&mut outs, out::CORRUPTED_WRITERS)?, &t.lengths, t.seq_len)?;
            if z_means {
                z_sums.add(&take_output(&mut outs, out::CORRUPTED_Z)?, &t.lengths, t.seq_len)?;
            }
        }
    }
    for range in batches {
        let t = p.tokens.slice(range.clone());
        let mut inputs = pair_inputs(&p.graph.token_inputs(), &t);
        if ablation.is_mean() {
            let a = means.input(ablation, t.seq_len)?;
            inputs.push((graph::ABLATION.into(), crate::runtime::Value::F32(a.into_dyn())));
        }
        if z_means {
            let a = z_sums.input(ablation, t.seq_len)?;
            inputs.push((super::interpolate::ABLATION_Z.into(), crate::runtime::Value::F32(a.into_dyn())));
        }
        let mut outs = rt.run(inputs)?;
        calls += 1;
        let rows = range.len();
        let clean = take_output(&mut outs, names::CLEAN_LDS)?;
        let corrupted = take_output(&mut outs, names::CORRUPTED_LDS)?;
        // EAP-IG's corrupted rows are its n runs; run 0 is the plain corrupted one.
        let clean: Vec<f64> = clean.iter().map(|&v| v as f64).collect();
        let corrupted: Vec<f64> = corrupted.iter().take(rows).map(|&v| v as f64).collect();
        let graph_clean = take_output(&mut outs, names::CLEAN_LD)?.iter().next().copied().unwrap_or(f32::NAN) as f64;
        let graph_corr = take_output(&mut outs, names::CORRUPTED_LD)?.iter().next().copied().unwrap_or(f32::NAN) as f64;
        if convention == Convention::Denoising && crate::batches::indistinguishable(graph_clean, graph_corr) {
            return Err(Error::Numeric(format!(
                "pairs {}..{}: the clean and corrupted metric are equal ({graph_clean} and {graph_corr}); the normalised \
                 metric divides by their difference. Check that the corrupted prompts differ from the clean ones",
                range.start, range.end
            )));
        }
        // The graph differentiates (mean - CORR) / (CLEAN - CORR) over its rows (noising: the
        // raw mean): undo it, to the attribution of the rows' summed metric.
        let scale = match convention {
            Convention::Denoising => rows as f64 * (graph_clean - graph_corr),
            Convention::Noising => rows as f64,
        };
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
        if with_heads {
            for (l, row) in heads.iter_mut().enumerate() {
                let a = take_output(&mut outs, &out::head_attribution(l))?;
                for (acc, v) in row.iter_mut().zip(a.iter()) {
                    *acc += scale * *v as f64;
                }
            }
        }
        pair_metrics.extend(clean.iter().copied().zip(corrupted.iter().copied()));
        totals.pairs += rows;
        totals.sum_clean += clean.iter().sum::<f64>();
        totals.sum_corrupted += corrupted.iter().sum::<f64>();
    }
    let run_seconds = clock.elapsed().as_secs_f64();
    p.seconds.run = run_seconds;
    let k = match convention {
        Convention::Denoising => totals.normaliser()?,
        Convention::Noising => 1.0 / totals.pairs.max(1) as f64,
    };
    let writers: HashMap<Writer, usize> = topo.writers().into_iter().enumerate().map(|(i, w)| (w, i)).collect();
    let readers: HashMap<Reader, usize> = topo.readers().into_iter().enumerate().map(|(i, r)| (r, i)).collect();
    let order = topo.edges();
    let unnormalised: Vec<f64> = order.iter().map(|(w, rd)| scores[writers[w] * r + readers[rd]]).collect();
    let edges: Vec<EdgeScore> = order
        .iter()
        .zip(&unnormalised)
        .map(|((w, rd), v)| EdgeScore { from: w.to_string(), to: rd.to_string(), score: k * v })
        .collect();
    let nodes = node_scores(&edges);
    let (clean, corrupted): (Vec<f64>, Vec<f64>) = pair_metrics.iter().copied().unzip();
    let baselines = crate::sanity::check_baselines(opts.metric, &clean, &corrupted);
    let head_attribution =
        if with_heads { heads.iter().map(|row| row.iter().map(|v| k * v).collect()).collect() } else { vec![] };
    Ok(EdgeRun {
        scores: EdgeScores {
            method: method.label().to_string(),
            ig_steps,
            convention: convention.label().to_string(),
            ablation: ablation.label().to_string(),
            metric: opts.metric.label().to_string(),
            layers,
            heads: topo.heads,
            kv_heads: topo.kv_heads,
            parallel: topo.parallel,
            edges,
            nodes,
        },
        head_attribution,
        unnormalised,
        pair_metrics,
        baselines,
        clean_metric: totals.clean(),
        corrupted_metric: totals.corrupted(),
        d_model: p.graph.anatomy.d_model,
        runtime_calls: calls,
        run_seconds,
        seconds: p.seconds.clone(),
        runtime: rt.describe(),
        means: if ablation.is_mean() { Some(means) } else { None },
    })
}
