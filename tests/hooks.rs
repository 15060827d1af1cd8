//! Hook choices: presets for the residual stream and MLP outputs, and
//! user patterns over tensor names.

use crate::common::*;
use attrpatch::hooks::{find_hooks, HookKind};
use attrpatch::job::{run_job, JobOptions};
use attrpatch::onnx::OnnxModel;
use attrpatch::runtime::{Device, RuntimeKind, RuntimeOptions};

fn tensors(model: &std::path::Path, kind: &str) -> Vec<String> {
    let m = OnnxModel::load(model).unwrap();
    find_hooks(&m, &kind.parse().unwrap()).unwrap().into_iter().map(|h| h.tensor).collect()
}

#[test]
fn resid_and_mlp_presets_find_block_and_mlp_outputs_in_both_exporters() {
    assert_eq!(
        tensors(&legacy_op14(), "resid"),
        ["/transformer/h.0/Add_1_output_0", "/transformer/h.1/Add_1_output_0"]
    );
    assert_eq!(
        tensors(&legacy_op14(), "mlp"),
        ["/transformer/h.0/mlp/c_proj/Reshape_1_output_0", "/transformer/h.1/mlp/c_proj/Reshape_1_output_0"]
    );
    assert_eq!(tensors(&dynamo_op18(), "resid"), ["add_8", "add_13"]);
    assert_eq!(tensors(&dynamo_op18(), "mlp"), ["view_12", "view_23"]);
}

fn positions(kind: HookKind) -> Vec<Vec<f64>> {
    let mut o = JobOptions::new(legacy_op14());
    o.hooks = kind;
    o.runtime = RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 };
    run_job(&o).unwrap().unwrap().grids.positions
}

#[test]
fn a_tensor_pattern_naming_the_attention_hooks_gives_the_attn_positions_grid() {
    let by_pattern = positions(r"/transformer/h\.\d+/attn/c_proj/Reshape_output_0".parse().unwrap());
    assert_grid_close("pattern vs preset", &by_pattern, &reference("ioi-reference.json").positions);
}

#[test]
fn resid_grid_of_the_last_block_carries_the_whole_effect_at_the_last_position() {
    // After the last block only the last position reaches the metric: every
    // other position's gradient, hence attribution, is exactly zero there.
    let g = positions(HookKind::Resid);
    let last = g.last().unwrap();
    assert!(last[..last.len() - 1].iter().all(|&v| v == 0.0), "{last:?}");
    assert!(last[last.len() - 1] != 0.0);
}

#[test]
fn a_pattern_that_matches_nothing_or_is_invalid_says_so() {
    let m = OnnxModel::load(&legacy_op14()).unwrap();
    let e = find_hooks(&m, &"no_such_tensor".parse().unwrap()).unwrap_err().to_string();
    // The library names the setting; the binary names the flag (cli_usage::the_binary_names_the_flags_the_library_describes).
    assert!(e.contains("the hook pattern 'no_such_tensor' matches no tensor name"), "{e}");
    let e = "(unclosed".parse::<HookKind>().unwrap_err().to_string();
    assert!(e.contains("not a preset (attn, resid, mlp) nor a valid regex"), "{e}");
}

/// Every exporter x family fixture (tests/fixtures/arch/*.json): (name, hook tensors its
/// maker found from the family's own module path).
fn arch_fixtures() -> Vec<(String, Vec<String>)> {
    let dir = root().join("tests/fixtures/arch");
    let mut out = vec![];
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") && p.with_extension("onnx").exists() {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            let name = p.file_stem().unwrap().to_string_lossy().to_string();
            out.push((name, serde_json::from_value(v["hook_tensors"].clone()).unwrap()));
        }
    }
    out.sort();
    assert!(out.len() >= 8, "fixtures missing in {}", dir.display());
    out
}

fn arch_model(name: &str) -> std::path::PathBuf {
    root().join("tests/fixtures/arch").join(format!("{name}.onnx"))
}

#[test]
fn every_family_fixture_finds_its_out_projection_by_name_with_no_hook_option() {
    for (name, want) in arch_fixtures() {
        let m = OnnxModel::load(&arch_model(&name)).unwrap();
        let hooks = find_hooks(&m, &HookKind::AttnOut).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got: Vec<&str> = hooks.iter().map(|h| h.tensor.as_str()).collect();
        assert_eq!(got, want, "{name}");
        for h in &hooks {
            assert!(h.matched_by.contains("preset"), "{name}: layer {} matched by {}", h.layer, h.matched_by);
        }
    }
}

/// The model with every node, tensor and weight renamed (t0, t1, ...; graph
/// inputs and outputs keep theirs) and no dynamo scopes: nothing left to match
/// a name preset. Returns the model and the old -> new tensor names.
fn stripped(path: &std::path::Path) -> (OnnxModel, std::collections::HashMap<String, String>) {
    use attrpatch::onnx::pb::ModelProto;
    let m = OnnxModel::load(path).unwrap();
    let mut p: ModelProto = m.proto.clone();
    let g = p.graph.as_mut().unwrap();
    let keep: std::collections::HashSet<String> =
        g.input.iter().chain(g.output.iter()).map(|v| v.name.clone()).collect();
    let mut map = std::collections::HashMap::new();
    let mut rename = |s: &mut String| {
        if s.is_empty() || keep.contains(s) {
            return;
        }
        let n = map.len();
        *s = map.entry(s.clone()).or_insert_with(|| format!("t{n}")).clone();
    };
    for t in &mut g.initializer {
        rename(&mut t.name);
    }
    for (i, n) in g.node.iter_mut().enumerate() {
        n.name = format!("n{i}");
        n.input.iter_mut().chain(n.output.iter_mut()).for_each(&mut rename);
    }
    g.value_info.clear();
    let bytes = prost::Message::encode_to_vec(&p);
    (OnnxModel::from_bytes(&bytes, path).unwrap(), map)
}

#[test]
fn a_stripped_graph_gives_the_same_hooks_by_structure_on_every_family() {
    for (name, want) in arch_fixtures() {
        let (m, map) = stripped(&arch_model(&name));
        let hooks = find_hooks(&m, &HookKind::AttnOut).unwrap_or_else(|e| panic!("{name} stripped: {e}"));
        let got: Vec<&str> = hooks.iter().map(|h| h.tensor.as_str()).collect();
        let want: Vec<&str> = want.iter().map(|t| map[t].as_str()).collect();
        assert_eq!(got, want, "{name}: structure vs names");
        assert!(hooks.iter().all(|h| h.matched_by == attrpatch::hooks::BY_STRUCTURE), "{name}");
    }
}

#[test]
fn a_graph_with_neither_names_nor_attention_says_what_was_looked_for() {
    // The fixture with its Softmax nodes retyped: no names, no attention pattern.
    let (mut m, _) = stripped(&arch_model("llama-legacy-op14"));
    for n in &mut m.proto.graph.as_mut().unwrap().node {
        if n.op_type == "Softmax" {
            n.op_type = "LogSoftmax".into();
        }
    }
    let e = find_hooks(&m, &HookKind::AttnOut).unwrap_err().to_string();
    assert!(e.contains("no attention out-projection found"), "{e}");
    assert!(e.contains("'h.N.self_attention.dense' (BLOOM, Falcon)"), "{e}");
    assert!(e.contains("softmax(Q K^T) V"), "{e}");
    assert!(e.contains("pass a hook pattern REGEX"), "{e}");
}

#[test]
fn a_stripped_model_gives_the_reference_grids_end_to_end() {
    for name in ["gpt2-legacy-op14", "llama-dynamo-op18"] {
        let (m, _) = stripped(&arch_model(name));
        let dir = fresh_dir(&format!("stripped-{name}"));
        let path = dir.join("model.onnx");
        std::fs::write(&path, prost::Message::encode_to_vec(&m.proto)).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root().join(format!("tests/fixtures/arch/{name}.json"))).unwrap())
                .unwrap();
        let ids = |k: &str| -> Vec<Vec<i64>> { serde_json::from_value(v[k].clone()).unwrap() };
        let mut o = JobOptions::new(path);
        o.with_token_ids(ids("input_ids"), ids("corrupted_ids"), &ids("answer_ids"));
        o.runtime = RuntimeOptions { kind: RuntimeKind::Ort, device: Device::Cpu, ort_lib: None, threads: 1 };
        let r = run_job(&o).unwrap_or_else(|e| panic!("{name} stripped: {e}")).unwrap();
        let grid = |k: &str| -> Vec<Vec<f64>> { serde_json::from_value(v[k].clone()).unwrap() };
        assert_grid_close(&format!("{name} stripped heads"), &r.grids.heads, &grid("heads"));
        assert_grid_close(&format!("{name} stripped positions"), &r.grids.positions, &grid("positions"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn inspect_says_how_each_hook_was_found() {
    let named = OnnxModel::load(&arch_model("falcon-legacy-op14")).unwrap();
    let s = attrpatch::inspect::inspect(&named, None).unwrap();
    assert!(s.contains("matched by node name, preset 'h.N.self_attention.dense' (BLOOM, Falcon)"), "{s}");
    let (m, _) = stripped(&arch_model("falcon-legacy-op14"));
    let s = attrpatch::inspect::inspect(&m, None).unwrap();
    assert_eq!(s.matches(attrpatch::hooks::BY_STRUCTURE).count(), 2, "{s}");
}

#[test]
fn every_family_fixture_gives_its_query_head_count_with_no_heads_option() {
    for (name, want) in arch_fixtures() {
        let m = OnnxModel::load(&arch_model(&name)).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root().join(format!("tests/fixtures/arch/{name}.json"))).unwrap())
                .unwrap();
        let heads = attrpatch::hooks::infer_heads_probed(&m, &want[0]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(heads, v["n_heads"].as_u64().map(|h| h as usize), "{name}");
    }
}
