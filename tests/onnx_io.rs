//! The streaming reader and writer agree with plain protobuf decoding.

use crate::common::*;
use attrpatch::onnx::io::{read_model, write_model};
use attrpatch::onnx::pb::ModelProto;
use prost::Message;

#[test]
fn streaming_read_equals_plain_decode() {
    for path in [legacy_op14(), dynamo_op18()] {
        let bytes = std::fs::read(&path).unwrap();
        let plain = ModelProto::decode(bytes.as_slice()).unwrap();
        let (streamed, scopes) = read_model(&path).unwrap();
        assert!(plain == streamed, "{}", path.display());
        if path == dynamo_op18() {
            assert!(scopes.get("node_addmm_1").iter().any(|s| s == "transformer.h.0.attn.c_proj"));
        }
    }
}

#[test]
fn streaming_write_round_trips() {
    let (mut m, _) = read_model(&dynamo_op18()).unwrap();
    let mut out = vec![];
    write_model(&mut m, &mut out).unwrap();
    assert!(ModelProto::decode(out.as_slice()).unwrap() == m);
    assert_eq!(out.len(), m.encoded_len());
}

#[test]
fn truncated_file_is_an_error_not_a_panic() {
    let bytes = std::fs::read(dynamo_op18()).unwrap();
    let dir = fresh_dir("io-truncated");
    let p = dir.join("truncated.onnx");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = read_model(&p).expect_err("truncated model must fail");
    let msg = e.to_string();
    assert!(msg.contains("truncated.onnx") && msg.contains("not a valid ONNX model"), "{msg}");
}
