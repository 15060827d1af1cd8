//! Every exporter x architecture fixture made by tools/make_fixtures.py
//! (tests/fixtures/arch/NAME.onnx + NAME.json) against its PyTorch autograd
//! reference, through ONNX Runtime and through tract, at the core tolerance.

use crate::common::*;
use attrpatch::job::{run_job, JobOptions};
use attrpatch::runtime::{Device, RuntimeKind, RuntimeOptions};

fn options(name: &str) -> (JobOptions, serde_json::Value) {
    options_on(name, RuntimeKind::Ort)
}

fn options_on(name: &str, kind: RuntimeKind) -> (JobOptions, serde_json::Value) {
    let dir = root().join("tests/fixtures/arch");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    let ids = |k: &str| -> Vec<Vec<i64>> { serde_json::from_value(v[k].clone()).unwrap() };
    let (clean, corrupted, answers) = (ids("input_ids"), ids("corrupted_ids"), ids("answer_ids"));
    let mut o = JobOptions::new(dir.join(format!("{name}.onnx")));
    o.with_token_ids(clean, corrupted, &answers);
    o.heads = v["n_heads"].as_u64().map(|h| h as usize);
    o.runtime = RuntimeOptions { kind, device: Device::Cpu, ort_lib: None, threads: 1 };
    (o, v)
}

fn check(name: &str, kind: RuntimeKind) {
    let what = format!("{name} ({kind:?})");
    let (mut o, v) = options_on(name, kind);
    o.heads = None; // as a user runs it: heads read from the graph, hooks by the family's preset
    let r = run_job(&o).unwrap_or_else(|e| panic!("{what}: {e}")).unwrap();
    let grid = |k: &str| -> Vec<Vec<f64>> { serde_json::from_value(v[k].clone()).unwrap() };
    assert!(close(r.clean_metric, v["clean_logit_diff"].as_f64().unwrap()), "{what}: clean ld");
    assert!(close(r.corrupted_metric, v["corrupted_logit_diff"].as_f64().unwrap()), "{what}: corrupted ld");
    let eh = assert_grid_close(&format!("{what} heads"), &r.grids.heads, &grid("heads"));
    let ep = assert_grid_close(&format!("{what} positions"), &r.grids.positions, &grid("positions"));
    eprintln!("{what}: max relative error heads {eh:.2e}, positions {ep:.2e}");
}

/// One test per fixture and runtime: `NAME::ort` and `NAME::tract`.
macro_rules! fixtures {
    ($($id:ident => $name:literal),* $(,)?) => {
        $(mod $id {
            use attrpatch::runtime::RuntimeKind;
            #[test]
            fn ort() {
                super::check($name, RuntimeKind::Ort);
            }
            #[test]
            fn tract() {
                super::check($name, RuntimeKind::Tract);
            }
        })*
        const ALL: &[&str] = &[$($name),*];
    };
}

fixtures! {
    gpt2_dynamo_op18 => "gpt2-dynamo-op18",
    gpt2_legacy_op14 => "gpt2-legacy-op14",
    gpt2_legacy_op17 => "gpt2-legacy-op17",
    gpt2_optimum => "gpt2-optimum",
    gptneox_dynamo_op18 => "gptneox-dynamo-op18",
    gptneox_legacy_op14 => "gptneox-legacy-op14",
    llama_dynamo_op18 => "llama-dynamo-op18",
    llama_legacy_op14 => "llama-legacy-op14",
    llama_sdpa_legacy_op17 => "llama-sdpa-legacy-op17",
    llama_sdpa_dynamo_op18 => "llama-sdpa-dynamo-op18",
    llama_sdpa_dynamo_op23 => "llama-sdpa-dynamo-op23",
    qwen3_sdpa_dynamo_op23 => "qwen3-sdpa-dynamo-op23",
    gptbigcode_legacy_op14 => "gptbigcode-legacy-op14",
    gptbigcode_sdpa_dynamo_op18 => "gptbigcode-sdpa-dynamo-op18",
    gptj_legacy_op14 => "gptj-legacy-op14",
    gptj_sdpa_dynamo_op18 => "gptj-sdpa-dynamo-op18",
    gptneo_legacy_op14 => "gptneo-legacy-op14",
    gptneo_dynamo_op18 => "gptneo-dynamo-op18",
    opt_legacy_op14 => "opt-legacy-op14",
    opt_sdpa_dynamo_op18 => "opt-sdpa-dynamo-op18",
    bloom_legacy_op14 => "bloom-legacy-op14",
    bloom_dynamo_op18 => "bloom-dynamo-op18",
    falcon_legacy_op14 => "falcon-legacy-op14",
    falcon_sdpa_dynamo_op18 => "falcon-sdpa-dynamo-op18",
    mistral_legacy_op14 => "mistral-legacy-op14",
    mistral_sdpa_dynamo_op18 => "mistral-sdpa-dynamo-op18",
    mixtral_legacy_op14 => "mixtral-legacy-op14",
    mixtral_sdpa_dynamo_op18 => "mixtral-sdpa-dynamo-op18",
    qwen2_legacy_op14 => "qwen2-legacy-op14",
    qwen2_sdpa_dynamo_op18 => "qwen2-sdpa-dynamo-op18",
    qwen3_legacy_op14 => "qwen3-legacy-op14",
    qwen3_sdpa_dynamo_op18 => "qwen3-sdpa-dynamo-op18",
    phi_legacy_op14 => "phi-legacy-op14",
    phi_sdpa_dynamo_op18 => "phi-sdpa-dynamo-op18",
    phi3_legacy_op14 => "phi3-legacy-op14",
    phi3_sdpa_dynamo_op18 => "phi3-sdpa-dynamo-op18",
    gemma_legacy_op14 => "gemma-legacy-op14",
    gemma_sdpa_dynamo_op18 => "gemma-sdpa-dynamo-op18",
    gemma2_legacy_op14 => "gemma2-legacy-op14",
    gemma2_dynamo_op18 => "gemma2-dynamo-op18",
    gemma3_legacy_op14 => "gemma3-legacy-op14",
    gemma3_sdpa_dynamo_op18 => "gemma3-sdpa-dynamo-op18",
    stablelm_legacy_op14 => "stablelm-legacy-op14",
    stablelm_sdpa_dynamo_op18 => "stablelm-sdpa-dynamo-op18",
    olmo_legacy_op14 => "olmo-legacy-op14",
    olmo_sdpa_dynamo_op18 => "olmo-sdpa-dynamo-op18",
    olmo2_legacy_op14 => "olmo2-legacy-op14",
    olmo2_sdpa_dynamo_op18 => "olmo2-sdpa-dynamo-op18",
}

#[test]
fn every_fixture_on_disk_has_its_tests() {
    let dir = root().join("tests/fixtures/arch");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().to_string())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = ALL.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "tests/fixtures/arch and the fixtures! list differ");
}

/// The patching graph on every exporter x architecture (rotary, GQA,
/// dynamo and legacy hooks, rank-2 and rank-3 hook tensors) against patching
/// by hand through the plain model.
#[test]
fn exact_patching_matches_patching_by_hand_on_every_architecture() {
    for name in [
        "gpt2-dynamo-op18",
        "gpt2-legacy-op14",
        "gpt2-legacy-op17",
        "gpt2-optimum",
        "gptneox-dynamo-op18",
        "gptneox-legacy-op14",
        "llama-dynamo-op18",
        "llama-legacy-op14",
        "llama-sdpa-dynamo-op23",
        "gptbigcode-legacy-op14",
        "opt-sdpa-dynamo-op18",
        "qwen3-sdpa-dynamo-op18",
        "gemma2-legacy-op14",
        "phi-sdpa-dynamo-op18",
    ] {
        let (o, v) = options(name);
        let ids = |k: &str| -> Vec<Vec<i64>> { serde_json::from_value(v[k].clone()).unwrap() };
        let pairs = by_hand::Pairs::new(&ids("input_ids"), &ids("corrupted_ids"), &ids("answer_ids"));
        let (want_heads, want_positions) = by_hand::exact_grids(&o.model, &pairs, o.heads.unwrap());
        let exact = attrpatch::patch::run(&o, attrpatch::patch::Estimator::Exact { positions: true }, 64)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // Float32 noise in a logit difference, amplified by 1 / (CLEAN - CORR) (up to ~30 here).
        let scale = want_positions.iter().flatten().fold(1f64, |m, v| m.max(v.abs()));
        let eh = by_hand::assert_abs_close(&format!("{name} heads"), &exact.grids.heads, &want_heads, 1e-4 * scale);
        let ep = by_hand::assert_abs_close(
            &format!("{name} positions"),
            &exact.grids.positions,
            &want_positions,
            1e-4 * scale,
        );
        eprintln!("{name}: exact vs by hand, max abs error heads {eh:.2e}, positions {ep:.2e}");
    }
}

#[test]
fn tract_names_every_op_it_cannot_run_before_running_anything() {
    use attrpatch::onnx::pb::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto};
    let node = |op: &str, name: &str, i: &str, o: &str| NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: vec![i.into()],
        output: vec![o.into()],
        ..Default::default()
    };
    let m = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 20 }],
        graph: Some(GraphProto {
            node: vec![
                node("Col2Im", "fold_a", "x", "a"),
                node("Relu", "relu", "a", "b"),
                node("Col2Im", "fold_b", "b", "c"),
                node("AffineGrid", "grid", "c", "y"),
            ],
            ..Default::default()
        }),
        ..Default::default()
    };
    let Err(e) = attrpatch::runtime::tract_rt::TractRuntime::new(&prost::Message::encode_to_vec(&m), false) else {
        panic!("tract accepted ops it does not implement")
    };
    let e = e.to_string();
    assert!(e.contains("AffineGrid (1 node(s), first 'grid')"), "{e}");
    assert!(e.contains("Col2Im (2 node(s), first 'fold_a')"), "{e}");
    assert!(!e.contains("Relu"), "{e}");
}

/// BLOOM's alibi positions: the cumulative sum of the int64 attention mask.
/// tract evaluated it as symbolic dims ("TDim is not a number") until the
/// runtime moved integer CumSum to float64.
#[test]
fn tract_runs_a_cumsum_of_the_attention_mask() {
    use attrpatch::onnx::builder::attr_i;
    use attrpatch::onnx::consts::{i64_tensor, FLOAT, INT64};
    use attrpatch::onnx::facts::Dim;
    use attrpatch::onnx::pb::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto};
    use attrpatch::runtime::{Runtime, Value};
    let node = |op: &str, i: &[&str], o: &str, attrs| NodeProto {
        op_type: op.into(),
        name: o.into(),
        input: i.iter().map(|s| s.to_string()).collect(),
        output: vec![o.into()],
        attribute: attrs,
        ..Default::default()
    };
    let dims = [Dim::Sym("batch".into()), Dim::Sym("sequence".into())];
    let m = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 14 }],
        graph: Some(GraphProto {
            node: vec![
                node("Cast", &["attention_mask"], "mask", vec![attr_i("to", INT64 as i64)]),
                node("CumSum", &["mask", "axis"], "positions", vec![]),
                node("Cast", &["positions"], "out", vec![attr_i("to", FLOAT as i64)]),
            ],
            initializer: vec![i64_tensor("axis", &[], &[1])],
            input: vec![attrpatch::augment::value_info("attention_mask", INT64, &dims)],
            output: vec![attrpatch::augment::value_info("out", FLOAT, &dims)],
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut rt = attrpatch::runtime::tract_rt::TractRuntime::new(&prost::Message::encode_to_vec(&m), false).unwrap();
    let mask = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[2, 4]), vec![1i64, 1, 1, 1, 0, 1, 1, 1]).unwrap();
    let out = rt.run(vec![("attention_mask".into(), Value::I64(mask))]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out["out"].iter().copied().collect::<Vec<f32>>(), [1., 2., 3., 4., 0., 1., 2., 3.]);
}

/// Falcon's fused QKV split: GatherND with negative constant indices, which
/// tract read as huge unsigned ones until the runtime made them non-negative.
#[test]
fn tract_runs_gather_nd_with_negative_indices() {
    use attrpatch::onnx::consts::{i64_tensor, FLOAT};
    use attrpatch::onnx::facts::Dim;
    use attrpatch::onnx::pb::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto};
    use attrpatch::runtime::{Runtime, Value};
    let m = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 14 }],
        graph: Some(GraphProto {
            node: vec![NodeProto {
                op_type: "GatherND".into(),
                name: "pick".into(),
                input: vec!["x".into(), "idx".into()],
                output: vec!["y".into()],
                ..Default::default()
            }],
            initializer: vec![i64_tensor("idx", &[2, 1], &[-1, -3])],
            input: vec![attrpatch::augment::value_info("x", FLOAT, &[Dim::Known(3), Dim::Sym("s".into())])],
            output: vec![attrpatch::augment::value_info("y", FLOAT, &[Dim::Known(2), Dim::Sym("s".into())])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut rt = attrpatch::runtime::tract_rt::TractRuntime::new(&prost::Message::encode_to_vec(&m), false).unwrap();
    let x = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[3, 2]), vec![0f32, 1., 2., 3., 4., 5.]).unwrap();
    let out = rt.run(vec![("x".into(), Value::F32(x))]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out["y"].iter().copied().collect::<Vec<f32>>(), [4., 5., 0., 1.]);
}
