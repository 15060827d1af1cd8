//! Small synthetic "transformers" built in the test, for bad-input cases:
//! input_ids -> Gather(wte) -> Tanh (the hook) -> c_proj MatMul -> + residual
//! -> lm_head MatMul -> logits. Width 8; run with --heads 2.

use attrpatch::onnx::consts::{float_tensor, FLOAT, INT64};
use attrpatch::onnx::facts::Dim;
use attrpatch::onnx::graph::value_info;
use attrpatch::onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataLocation, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto,
};
use prost::Message;
use std::path::Path;

pub const WIDTH: i64 = 8;

pub struct Synth {
    pub vocab: i64,
    /// Names of the out-projection MatMul nodes, one per layer normally.
    pub c_proj_names: Vec<String>,
    pub output_name: String,
    /// An extra unary op inserted on the path (e.g. "Cos"; "Square" for y * y).
    pub extra_op: Option<String>,
    pub logits_type: i32,
    /// Store the lm_head weight in this external file (relative or absolute);
    /// `write` puts that many of its bytes there (all when None).
    pub external: Option<(String, Option<usize>)>,
    pub opset: i64,
}

impl Default for Synth {
    fn default() -> Self {
        Synth {
            vocab: 50257,
            c_proj_names: vec!["/transformer/h.0/attn/c_proj/MatMul".into()],
            output_name: "logits".into(),
            extra_op: None,
            logits_type: FLOAT,
            external: None,
            opset: 17,
        }
    }
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn weights(name: &str, rows: i64, cols: i64, seed: u64) -> TensorProto {
    let mut x = seed.wrapping_add(0x9e3779b97f4a7c15);
    let values: Vec<f64> = (0..rows * cols)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2000) as f64 / 1000.0 - 1.0
        })
        .collect();
    float_tensor(name, FLOAT, &[rows, cols], &values)
}

impl Synth {
    pub fn build(&self) -> ModelProto {
        let d = WIDTH;
        let mut nodes = vec![node("Gather", "embed", &["wte", "input_ids"], &["emb"])];
        nodes.push(node("Tanh", "/transformer/h.0/attn/act", &["emb"], &["hook"]));
        let x = "hook".to_string();
        let mut sum = "emb".to_string();
        for (i, n) in self.c_proj_names.iter().enumerate() {
            let (w, mut y, r) = (format!("w_proj_{i}"), format!("proj_{i}"), format!("resid_{i}"));
            nodes.push(node("MatMul", n, &[&x, &w], &[&y]));
            if let (Some(op), 0) = (&self.extra_op, i) {
                // After the hook, so it is on the path to the logits.
                // "Square" is y * y: a graph quadratic in the hook.
                let (op, ins): (&str, Vec<&str>) = if op == "Square" { ("Mul", vec![&y, &y]) } else { (op, vec![&y]) };
                nodes.push(node(op, "/transformer/h.0/attn/extra", &ins, &["extra"]));
                y = "extra".into();
            }
            nodes.push(node("Add", &format!("add_{i}"), &[&sum, &y], &[&r]));
            sum = r;
        }
        let out = self.output_name.as_str();
        let logits_f32 = if self.logits_type == FLOAT { out.to_string() } else { "logits_f32".to_string() };
        nodes.push(node("MatMul", "/lm_head/MatMul", &[&sum, "w_unembed"], &[&logits_f32]));
        if self.logits_type != FLOAT {
            let mut c = node("Cast", "to_out_type", &[&logits_f32], &[out]);
            c.attribute.push(AttributeProto {
                name: "to".into(),
                r#type: AttributeType::Int as i32,
                i: self.logits_type as i64,
                ..Default::default()
            });
            nodes.push(c);
        }
        let mut inits = vec![weights("wte", self.vocab, d, 1), weights("w_unembed", d, self.vocab, 2)];
        for i in 0..self.c_proj_names.len() {
            inits.push(weights(&format!("w_proj_{i}"), d, d, 3 + i as u64));
        }
        if let Some((location, _)) = &self.external {
            let t = &mut inits[1];
            let n = t.raw_data.len();
            t.raw_data.clear();
            t.data_location = Some(DataLocation::External as i32);
            t.external_data = vec![
                StringStringEntryProto { key: "location".into(), value: location.clone() },
                StringStringEntryProto { key: "offset".into(), value: "0".into() },
                StringStringEntryProto { key: "length".into(), value: n.to_string() },
            ];
        }
        let bs = || vec![Dim::Sym("batch".into()), Dim::Sym("sequence".into())];
        let graph = GraphProto {
            name: "synth".into(),
            node: nodes,
            initializer: inits,
            input: vec![value_info("input_ids", INT64, &bs()), value_info("attention_mask", INT64, &bs())],
            output: vec![value_info(
                out,
                self.logits_type,
                &[Dim::Sym("batch".into()), Dim::Sym("sequence".into()), Dim::Known(self.vocab)],
            )],
            ..Default::default()
        };
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: self.opset }],
            graph: Some(graph),
            ..Default::default()
        }
    }

    /// Writes the model (and, for external data, the lm_head bytes beside it).
    pub fn write(&self, dir: &Path, name: &str) -> std::path::PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let m = self.build();
        if let Some((location, bytes)) = &self.external {
            let full = weights("w_unembed", WIDTH, self.vocab, 2).raw_data;
            if !Path::new(location).is_absolute() && !location.contains("..") {
                std::fs::write(dir.join(location), &full[..bytes.unwrap_or(full.len()).min(full.len())]).unwrap();
            }
        }
        let path = dir.join(name);
        std::fs::write(&path, m.encode_to_vec()).unwrap();
        path
    }
}
