//! `attrpatch rewrite` keeps a model's weights beside it when the input did
//! (issue 15: a rewrite of a 3.2 GB external-data model wrote one 3.35 GB
//! protobuf that no ONNX tool could read). The 2 GB threshold itself is tested
//! with a lowered limit in `crates/onnx/src/io.rs`.

use crate::common::synth::Synth;
use crate::common::*;
use attrpatch::onnx::OnnxModel;
use std::process::Command;

fn rewrite(input: &std::path::Path, output: &std::path::Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_attrpatch"))
        .args(["rewrite", input.to_str().unwrap(), "-o", output.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn rewrite_of_external_data_model_writes_external_data() {
    let d = fresh_dir("rewrite-external-in");
    let input = Synth { external: Some(("weights.bin".into(), None)), ..Default::default() }.write(&d, "ext.onnx");
    let out_dir = fresh_dir("rewrite-external-out");
    let output = out_dir.join("aug.onnx");
    rewrite(&input, &output);

    let data = out_dir.join("aug.onnx.data");
    assert!(data.is_file(), "no {} beside the rewritten model", data.display());
    let weights_len = std::fs::metadata(d.join("weights.bin")).unwrap().len();
    let graph_len = std::fs::metadata(&output).unwrap().len();
    assert!(graph_len < weights_len / 4, "the graph file ({graph_len} bytes) still holds the weights ({weights_len})");
    assert!(std::fs::metadata(&data).unwrap().len() >= weights_len);

    // Read back (external data inlined), the rewritten pair holds exactly the weights of a
    // rewrite done in memory, and ONNX Runtime accepts it.
    let back = OnnxModel::load(&output).unwrap();
    assert!(back.had_external_data);
    let expected = attrpatch::augment::augment(OnnxModel::load(&input).unwrap()).unwrap().base.proto;
    let expected = &expected.graph.as_ref().unwrap().initializer;
    let got = &back.graph().initializer;
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(expected) {
        assert!(g.name == e.name && g.raw_data == e.raw_data && g.dims == e.dims, "initializer '{}' differs", e.name);
    }
    use prost::Message;
    attrpatch::runtime::create(&back.proto.encode_to_vec(), &Default::default()).unwrap();
}

#[test]
fn rewrite_of_small_inline_model_stays_one_file() {
    let d = fresh_dir("rewrite-inline");
    let input = Synth::default().write(&d, "plain.onnx");
    let output = d.join("aug.onnx");
    rewrite(&input, &output);
    assert!(output.is_file());
    assert!(!d.join("aug.onnx.data").exists(), "a small model with inline weights needs no data file");
    assert!(!OnnxModel::load(&output).unwrap().had_external_data);
}

/// The resume key's model hash is the same whether the weights were read into
/// memory (tract) or left in their file for ONNX Runtime to read (streamed):
/// otherwise a merge of shards run on the two runtimes would call the same
/// model different, and a re-export with new weights left in the file would
/// not change the hash at all.
#[test]
fn regression_model_hash_of_weights_left_in_the_file_equals_the_inlined_one() {
    use attrpatch::onnx::hash::{model_hash, model_hash_external};
    let ioi = root().join("models/ioi-gpt2/model.onnx");
    let d = fresh_dir("hash-external");
    let mut inline = OnnxModel::load(&ioi).unwrap();
    let want = model_hash(&inline.proto);
    let path = d.join("ext.onnx");
    let files = attrpatch::onnx::io::save_model(&mut inline.proto, &path, true).unwrap();
    assert_eq!(files.len(), 2, "{files:?}");
    let left = OnnxModel::load_leaving_weights(&path).unwrap();
    assert!(left.proto.graph.as_ref().unwrap().initializer.iter().any(|t| t.raw_data.is_empty()));
    assert_eq!(model_hash_external(&left.proto, left.dir(), &path).unwrap(), want);
    // One weight byte changed in the data file: another hash.
    let data = d.join("ext.onnx.data");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[4096 + 7] ^= 1;
    std::fs::write(&data, bytes).unwrap();
    let left = OnnxModel::load_leaving_weights(&path).unwrap();
    assert_ne!(model_hash_external(&left.proto, left.dir(), &path).unwrap(), want);
}
