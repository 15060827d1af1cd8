//! Handing the weights to ONNX Runtime without serialising them. Best, the job
//! never reads them: they stay external-data references into the model's own
//! files and ONNX Runtime reads them (`external_dir`). Otherwise large float32
//! initializers leave the protobuf (marked as external data) and go to the
//! session as tensors (ONNX Runtime copies these: +630 MB measured with 1.32 on
//! GPT-2 small). Either way models over protobuf's 2 GB limit load.

use attrpatch_onnx::consts::FLOAT;
use attrpatch_onnx::pb::{tensor_proto::DataLocation, ModelProto, StringStringEntryProto};
use ndarray::ArrayD;
use prost::Message;

/// Initializers at least this big move out of the protobuf.
const MIN_BYTES: usize = 1 << 16;

/// The model's bytes and the weights that travel beside them.
pub struct ModelForRuntime {
    /// The serialised ModelProto (large float32 initializers marked as external data).
    pub bytes: Vec<u8>,
    /// The initializers taken out of the protobuf, by name, for the session to use as tensors (empty when none moved).
    pub weights: Vec<(String, ArrayD<f32>)>,
    /// The folder that tensors left as external data (`OnnxModel::load_leaving_weights`)
    /// are read from by ONNX Runtime itself.
    pub external_dir: Option<std::path::PathBuf>,
    /// The `--cache` entry where ONNX Runtime keeps its optimised graph (`ort_saved`).
    pub saved_dir: Option<std::path::PathBuf>,
    /// Whether weights are read at the file's precision through decompressing
    /// nodes (`onnx::file_precision`), which the session must not fold into
    /// float32 initializers nor merge.
    pub keeps_file_precision: bool,
}

impl ModelForRuntime {
    /// Everything in the protobuf (for runtimes that read only that).
    pub fn inline(proto: &ModelProto) -> Self {
        ModelForRuntime {
            bytes: proto.encode_to_vec(),
            weights: vec![],
            external_dir: None,
            saved_dir: None,
            keeps_file_precision: false,
        }
    }

    /// Takes large float32 weights out of `proto` (which keeps their names, types and shapes).
    /// Weights held at the file's precision are restored first (`onnx::file_precision`).
    pub fn split(proto: &mut ModelProto) -> Self {
        let mut weights = vec![];
        let mut keeps_file_precision = false;
        if let Some(g) = proto.graph.as_mut() {
            keeps_file_precision = attrpatch_onnx::file_precision::restore(g);
            for t in g.initializer.iter_mut() {
                if t.data_type != FLOAT || t.raw_data.len() < MIN_BYTES || t.raw_data.len() % 4 != 0 {
                    continue;
                }
                let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
                if dims.iter().product::<usize>() * 4 != t.raw_data.len() {
                    continue; // inconsistent: let the runtime report it
                }
                let raw = std::mem::take(&mut t.raw_data);
                let values: Vec<f32> =
                    raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                drop(raw);
                let Ok(arr) = ArrayD::from_shape_vec(dims, values) else { continue };
                t.data_location = Some(DataLocation::External as i32);
                let n = arr.len() * 4;
                t.external_data = vec![
                    StringStringEntryProto { key: "location".into(), value: "attrpatch-in-memory".into() },
                    StringStringEntryProto { key: "offset".into(), value: "0".into() },
                    StringStringEntryProto { key: "length".into(), value: n.to_string() },
                ];
                weights.push((t.name.clone(), arr));
            }
        }
        ModelForRuntime {
            bytes: proto.encode_to_vec(),
            weights,
            external_dir: None,
            saved_dir: None,
            keeps_file_precision,
        }
    }
}

impl ModelForRuntime {
    /// A graph derived from this one after its weights were split off (a
    /// subgraph, or the graph with more outputs): it gets the weights its
    /// initializers name and the same folder of external data.
    pub fn derived(&self, proto: &ModelProto) -> ModelForRuntime {
        let named: std::collections::HashSet<&str> =
            proto.graph.iter().flat_map(|g| g.initializer.iter().map(|t| t.name.as_str())).collect();
        let weights = self.weights.iter().filter(|(n, _)| named.contains(n.as_str())).cloned().collect();
        // Not the saved optimised graph: that is the whole graph's, not this one's.
        ModelForRuntime {
            bytes: proto.encode_to_vec(),
            weights,
            external_dir: self.external_dir.clone(),
            saved_dir: None,
            keeps_file_precision: self.keeps_file_precision,
        }
    }
}
