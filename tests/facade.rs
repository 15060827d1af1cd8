//! The library facade (`attrpatch::{rewrite, Attributor, inspect}`,
//! `autodiff::differentiate`) on the bundled IOI model: the same numbers as
//! the job code the CLI runs, a kept graph and session, feeds that follow the
//! graph's metric, and old result files that still load.

use crate::common::root;
use attrpatch::augment::names;
use attrpatch::job::{run_job, JobOptions};
use attrpatch::runtime::{self, Device, RuntimeKind, RuntimeOptions, Value};
use attrpatch::{Attributor, Metric, Pairs, RewriteOptions, TokenPairs};
use prost::Message;
use std::path::PathBuf;

fn ioi_model() -> PathBuf {
    root().join("models/ioi-gpt2/model.onnx")
}

fn cpu() -> RuntimeOptions {
    RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 }
}

fn attributor(model: impl Into<attrpatch::ModelSource>) -> attrpatch::AttributorBuilder {
    Attributor::builder(model).runtime(cpu())
}

/// The tutorial's pairs as token ids, read with the bundled tokenizer.
fn tutorial_token_pairs() -> TokenPairs {
    let tok = attrpatch::prompts::PromptTokenizer::from_file(&root().join("models/ioi-gpt2/tokenizer.json")).unwrap();
    let t = attrpatch::prompts::tokenize(&tok, &attrpatch::prompts::ioi_default(), false, usize::MAX).unwrap();
    TokenPairs {
        clean: t.clean_ids.iter().zip(&t.lengths).map(|(r, &l)| r[..l].to_vec()).collect(),
        corrupted: t.corrupted_ids.iter().zip(&t.lengths).map(|(r, &l)| r[..l].to_vec()).collect(),
        correct: t.correct_ids,
        incorrect: t.incorrect_ids,
    }
}

#[test]
fn the_attributor_gives_the_cli_jobs_numbers_and_reuses_its_session() {
    let mut o = JobOptions::new(ioi_model());
    o.runtime = cpu();
    let cli = run_job(&o).unwrap().unwrap();

    let mut a = attributor(ioi_model()).build().unwrap();
    let first = a.attribute(&Pairs::Tutorial).unwrap();
    assert_eq!(first.grids.heads, cli.grids.heads);
    assert_eq!(first.grids.positions, cli.grids.positions);
    assert_eq!((first.clean_metric, first.corrupted_metric), (cli.clean_metric, cli.corrupted_metric));
    assert!(first.seconds.session > 0.0, "the first call makes the session: {:?}", first.seconds);

    // Other pairs (the first two), then the tutorial's again: one graph, one session.
    let two = Pairs::Prompts(attrpatch::prompts::ioi_default()[..2].to_vec());
    let r2 = a.attribute(&two).unwrap();
    assert_eq!(r2.manifest.prompts.len(), 2);
    assert_ne!(r2.grids.heads, first.grids.heads);
    let again = a.attribute(&Pairs::Tutorial).unwrap();
    assert_eq!(a.graphs_built(), 1);
    assert_eq!((again.seconds.load, again.seconds.rewrite, again.seconds.session), (0.0, 0.0, 0.0));
    assert_eq!(again.grids.heads, first.grids.heads);

    // Labelled grids: layers x heads, first prompt's tokens on the positions.
    let h = again.heads();
    assert_eq!((h.rows.len(), h.cols.len()), (3, 4));
    assert_eq!(h.to_array().shape(), &[3, 4]);
    assert_eq!(h.to_array()[[1, 2]], again.grids.heads[1][2]);
    let p = again.positions();
    assert!(p.cols[1].ends_with(&again.token_labels()[1]), "{:?} vs {:?}", p.cols, again.token_labels());
}

#[test]
fn token_ids_and_an_in_memory_model_give_the_same_grids_as_texts_and_a_file() {
    let mut from_file = attributor(ioi_model()).build().unwrap();
    let texts = from_file.attribute(&Pairs::Tutorial).unwrap();
    let bytes = std::fs::read(ioi_model()).unwrap();
    let mut in_memory = attributor(bytes).build().unwrap();
    let ids = in_memory.attribute(&Pairs::Tokens(tutorial_token_pairs())).unwrap();
    assert_eq!(ids.manifest.model, attrpatch::IN_MEMORY_MODEL);
    let d = max_abs_diff(&ids.grids.heads, &texts.grids.heads);
    assert!(d < 1e-6, "heads differ by {d}");
    // Text pairs need a tokenizer, which a model in memory does not have beside it.
    let e = in_memory.attribute(&Pairs::Tutorial).err().expect("an error").to_string();
    assert!(e.contains("need a tokenizer"), "{e}");
}

/// The bug: a model file without a tokenizer.json beside it was refused when
/// the attributor was built, though token-id pairs need no tokenizer.
#[test]
fn regression_token_ids_needed_a_tokenizer_beside_the_model_file() {
    let dir = crate::common::fresh_dir("no-tokenizer");
    let model = dir.join("model.onnx");
    std::fs::copy(ioi_model(), &model).unwrap();
    let mut a = attributor(model.clone()).build().unwrap();
    let ids = a.attribute(&Pairs::Tokens(tutorial_token_pairs())).unwrap();
    let texts = attributor(ioi_model()).build().unwrap().attribute(&Pairs::Tutorial).unwrap();
    let d = max_abs_diff(&ids.grids.heads, &texts.grids.heads);
    assert!(d < 1e-6, "heads differ by {d}");
    // Text pairs are refused, naming where the tokenizer was looked for.
    let e = a.attribute(&Pairs::Tutorial).err().expect("an error").to_string();
    assert!(e.contains("need a tokenizer") && e.contains(&dir.join("tokenizer.json").display().to_string()), "{e}");
}

fn max_abs_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn patching_and_compare_through_the_attributor_match_the_job_functions() {
    let mut o = JobOptions::new(ioi_model());
    o.runtime = cpu();
    let exact = attrpatch::patch::run_sized(&o, attrpatch::Estimator::Exact { positions: false }, None).unwrap();
    let mut a = attributor(ioi_model()).build().unwrap();
    let mine = a.patch(&Pairs::Tutorial, false).unwrap();
    assert_eq!(mine.grids.heads, exact.grids.heads);
    let c = a.compare(
        &Pairs::Tutorial,
        &attrpatch::CompareOptions { positions: false, ig_steps: None, rows_per_call: None, atp_star: false },
    );
    let c = c.unwrap();
    assert_eq!(c.exact.grids.heads, exact.grids.heads);
    // The exact graph was reused by compare; attribution added the second.
    assert_eq!(a.graphs_built(), 2);
    let agreement = c.estimates[0].heads.as_ref().expect("heads agreement");
    assert!(agreement.pearson.unwrap() > 0.5, "{:?}", agreement.pearson);
}

#[test]
fn edges_through_the_attributor_equal_the_cli_job_and_keep_a_graph_per_step_count() {
    let mut o = JobOptions::new(ioi_model());
    o.runtime = cpu();
    let cli = attrpatch::eap::run_edges_detailed(&o, 1).unwrap();
    let mut a = attributor(ioi_model()).build().unwrap();
    let mine = a.edges(&Pairs::Tutorial, 1).unwrap();
    assert_eq!(mine.scores, cli.scores);
    assert_eq!(mine.head_attribution, cli.head_attribution);
    assert_eq!(mine.pair_metrics.len(), 8);
    assert!(mine.seconds.session > 0.0, "{:?}", mine.seconds);
    // The unnormalised sums over N (CLEAN - CORR) are the scores.
    let k = 1.0 / (8.0 * (mine.clean_metric - mine.corrupted_metric));
    for (e, raw) in mine.scores.edges.iter().zip(&mine.unnormalised) {
        assert!((e.score - k * raw).abs() <= 1e-12 * e.score.abs().max(1e-12), "{} -> {}", e.from, e.to);
    }
    // EAP-IG builds its own graph; a second EAP call reuses the first one and its session.
    let ig = a.edges(&Pairs::Tutorial, 3).unwrap();
    assert_eq!(ig.scores, attrpatch::eap::run_edges(&o, 3).unwrap());
    let again = a.edges(&Pairs::Tutorial, 1).unwrap();
    assert_eq!(a.graphs_built(), 2);
    assert_eq!((again.seconds.load, again.seconds.rewrite, again.seconds.session), (0.0, 0.0, 0.0));
    assert_eq!(again.scores, cli.scores);
    // Other pairs on the kept graph: their own scores, and only theirs.
    let two = Pairs::Prompts(attrpatch::prompts::ioi_default()[..2].to_vec());
    assert_ne!(a.edges(&two, 1).unwrap().scores, cli.scores);
    let e = a.edges(&Pairs::Tutorial, 0).err().expect("0 steps refused").to_string();
    assert!(e.contains("at least 1 (1 is plain EAP)"), "{e}");
    let mut mlp = attributor(ioi_model()).hooks(attrpatch::HookKind::Mlp).build().unwrap();
    let e = mlp.edges(&Pairs::Tutorial, 1).err().expect("a hook choice refused").to_string();
    assert!(e.contains("hook: edge scores are defined by"), "{e}");
}

/// Every method through `Attributor::edges_method` equals the job's, each on its own kept
/// graph; a method without a definition is refused before any graph is built.
#[test]
fn edge_methods_through_the_attributor_equal_the_cli_job() {
    use attrpatch::eap::{Ablation, Convention, EdgeMethod, Method};
    let mut o = JobOptions::new(ioi_model());
    o.runtime = cpu();
    let mut a = attributor(ioi_model()).build().unwrap();
    let methods = [
        EdgeMethod::new(Method::EapIgActivations, 2),
        EdgeMethod {
            convention: Convention::Noising,
            ablation: Ablation::Mean,
            ..EdgeMethod::new(Method::EapIgActivations, 2)
        },
        EdgeMethod::new(Method::CleanCorrupted, 1),
    ];
    for m in &methods {
        let mine = a.edges_method(&Pairs::Tutorial, m).unwrap();
        let job = attrpatch::eap::run_edges_method(&o, m).unwrap();
        assert_eq!(mine.scores, job.scores, "{}", m.describe());
        assert_eq!(mine.scores.method, m.method.label());
    }
    assert_eq!(a.graphs_built(), methods.len());
    let bad = EdgeMethod { ablation: Ablation::Zero, ..EdgeMethod::new(Method::CleanCorrupted, 1) };
    let e = a.edges_method(&Pairs::Tutorial, &bad).err().expect("refused").to_string();
    assert!(e.contains("--ablation zero"), "{e}");
    assert_eq!(a.graphs_built(), methods.len());
}

/// The answer selectors follow the metric the graph was built with: `prob`
/// weights only the correct answer, logit difference both (+1, -1). Before,
/// the caller passed a metric of its own to the feed builder.
#[test]
fn feeds_follow_the_augmented_models_metric() {
    let pairs = tutorial_token_pairs();
    for (metric, incorrect_weight) in [(Metric::LogitDiff, -1.0), (Metric::Prob, 0.0)] {
        let opts = RewriteOptions { metric, ..Default::default() };
        let m = attrpatch::rewrite(ioi_model().as_path(), &opts).unwrap();
        assert_eq!(m.metric(), metric);
        let feeds = m.feeds(&pairs).unwrap();
        let ans = feeds.iter().find(|(n, _)| n == names::ANSWER_ONEHOT).expect("answer selector fed");
        let Value::F32(a) = &ans.1 else { panic!("float selector") };
        let row0 = a.index_axis(ndarray::Axis(0), 0);
        assert_eq!(row0[[pairs.correct[0] as usize, 0]], 1.0);
        assert_eq!(row0[[pairs.incorrect[0] as usize, 0]], incorrect_weight, "{metric:?}");
    }
}

/// `rewrite`'s bytes decode, describe symbolic inputs, and run on the
/// runtime with the feeds it builds, giving the attribution job's baselines.
#[test]
fn the_rewritten_bytes_run_with_their_own_feeds() {
    let m = attrpatch::rewrite(ioi_model().as_path(), &RewriteOptions::default()).unwrap();
    assert_eq!((m.hooks().len(), m.heads()), (3, Some(4)));
    let ids = m.inputs().into_iter().find(|i| i.name == "clean.input_ids").expect("clean.input_ids");
    assert_eq!(ids.dtype.as_deref(), Some("int64"));
    let shape = ids.shape.expect("declared shape");
    assert!(shape.iter().all(|d| matches!(d, attrpatch::DimSpec::Symbolic(_))), "{shape:?}");
    assert!(m.outputs().iter().any(|o| o.name == names::grad(0)));
    let bytes = m.to_bytes().unwrap();
    attrpatch::onnx::pb::ModelProto::decode(bytes.as_slice()).unwrap();

    let pairs = tutorial_token_pairs();
    let mut rt = runtime::create(&bytes, &cpu()).unwrap();
    let mut out = rt.run(m.feeds(&pairs).unwrap()).unwrap();
    let clean = runtime::take_output(&mut out, names::CLEAN_LD).unwrap();
    let mut a = attributor(ioi_model()).build().unwrap();
    let r = a.attribute(&Pairs::Tutorial).unwrap();
    let got = clean.iter().next().copied().unwrap() as f64;
    assert!((got - r.clean_metric).abs() < 1e-4 * r.clean_metric.abs(), "{got} vs {}", r.clean_metric);
}

#[test]
fn inspect_returns_the_model_as_data_and_the_cli_text() {
    let i = attrpatch::inspect(ioi_model().as_path(), None).unwrap();
    assert_eq!((i.hooks.len(), i.heads), (3, Some(4)));
    assert!(i.problems.is_empty(), "{:?}", i.problems);
    assert!(i.path_ops.contains_key("MatMul"), "{:?}", i.path_ops);
    let json = serde_json::to_value(&i).unwrap();
    assert_eq!(json["hooks"].as_array().unwrap().len(), 3);
    let cli = attrpatch::inspect::inspect(&attrpatch::onnx::OnnxModel::load(&ioi_model()).unwrap(), None).unwrap();
    assert_eq!(attrpatch::format_inspection(&i), cli);
    assert!(cli.contains("layers: 3 (attention heads: 4)"), "{cli}");
}

/// Batch files written before the rename (`clean_logit_diff`) still load.
#[test]
fn old_batch_files_with_logit_diff_names_still_load() {
    let old = r#"{"index":0,"key":"k","first_pair":0,"pairs":1,
        "sum_clean_logit_diff":2.5,"sum_corrupted_logit_diff":-1.5,"heads":[[1.0]],"positions":[[1.0]],
        "per_pair":[{"index":0,"clean_logit_diff":2.5,"corrupted_logit_diff":-1.5,"grid":{"heads":[[1.0]],"positions":[[1.0]]}}]}"#;
    let b: attrpatch::batches::BatchResult = serde_json::from_str(old).unwrap();
    assert_eq!((b.sum_clean_metric, b.sum_corrupted_metric), (2.5, -1.5));
    assert_eq!((b.per_pair[0].clean_metric, b.per_pair[0].corrupted_metric), (2.5, -1.5));
    let new = serde_json::to_value(&b).unwrap();
    assert_eq!(new["sum_clean_metric"], 2.5);
    assert!(new.get("sum_clean_logit_diff").is_none());
}

/// `differentiate` on y = ReduceSum(Tanh(x) * x): dy/dx = tanh(x) + x (1 - tanh(x)^2).
#[test]
fn differentiate_adds_gradient_outputs_that_match_the_derivative() {
    use attrpatch::onnx::builder::GraphBuilder;
    use attrpatch::onnx::consts::FLOAT;
    use attrpatch::onnx::facts::Dim;
    use attrpatch::onnx::pb::{GraphProto, ModelProto, OperatorSetIdProto};
    let mut g = GraphProto { name: "g".into(), ..Default::default() };
    g.input.push(attrpatch::augment::value_info("x", FLOAT, &[Dim::Known(2), Dim::Known(3)]));
    let mut b = GraphBuilder::new(17, "", Default::default());
    let t = b.node("Tanh", &["x"], vec![]);
    let p = b.mul(&t, "x");
    b.node_named("ReduceSum", &[&p], "y", vec![attrpatch::onnx::builder::attr_i("keepdims", 0)]);
    b.apply(&mut g);
    g.output.push(attrpatch::augment::value_info("y", FLOAT, &[]));
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(g),
        ..Default::default()
    };
    let d = attrpatch::autodiff::differentiate(model.clone(), &["x"], "y").unwrap();
    assert_eq!(d.gradients, vec![("x".to_string(), "x_grad".to_string())]);
    let mut rt = runtime::create(&d.model.encode_to_vec(), &cpu()).unwrap();
    let x: Vec<f32> = vec![-1.5, -0.3, 0.0, 0.2, 0.9, 2.0];
    let xa = ndarray::ArrayD::from_shape_vec(vec![2, 3], x.clone()).unwrap();
    let mut out = rt.run(vec![("x".into(), Value::F32(xa))]).unwrap();
    let grad = runtime::take_output(&mut out, "x_grad").unwrap();
    for (g, x) in grad.iter().zip(&x) {
        let want = x.tanh() + x * (1.0 - x.tanh().powi(2));
        assert!((g - want).abs() < 1e-5, "d/dx at {x}: {g} vs {want}");
    }
    let e = attrpatch::autodiff::differentiate(model, &["nope"], "y").err().expect("unknown tensor");
    assert!(e.to_string().contains("no tensor named 'nope'"), "{e}");
}
