//! A hash of a model's content (for resuming and merging jobs, and the graph
//! cache's keys), with external data streamed from its files.

/// A fast non-cryptographic hash of bytes: four independent lanes of
/// `(lane ^ word) * odd constant`, rotated, so a multi-GB model hashes at
/// memory speed. Each step is a bijection of its lane, so a change in any
/// single 8-byte word always changes the result.
#[derive(Clone)]
pub struct ContentHash {
    lanes: [u64; 4],
    len: u64,
}

const HASH_MUL: u64 = 0x9E37_79B9_7F4A_7C15;

impl Default for ContentHash {
    fn default() -> Self {
        ContentHash {
            lanes: [0x243F_6A88_85A3_08D3, 0x1319_8A2E_0370_7344, 0xA409_3822_299F_31D0, 0x082E_FA98_EC4E_6C89],
            len: 0,
        }
    }
}

impl ContentHash {
    /// Adds one field; its length is mixed in too, so ["ab", "c"] and ["a", "bc"] differ.
    pub fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(32);
        for c in &mut chunks {
            for (k, lane) in self.lanes.iter_mut().enumerate() {
                let w = u64::from_le_bytes(c[8 * k..8 * k + 8].try_into().expect("8 bytes"));
                *lane = (*lane ^ w).wrapping_mul(HASH_MUL).rotate_left(29);
            }
        }
        let rest = chunks.remainder();
        let mut tail = [0u8; 32];
        tail[..rest.len()].copy_from_slice(rest);
        for (k, lane) in self.lanes.iter_mut().enumerate() {
            let w = u64::from_le_bytes(tail[8 * k..8 * k + 8].try_into().expect("8 bytes"));
            *lane = (*lane ^ w ^ bytes.len() as u64).wrapping_mul(HASH_MUL).rotate_left(29);
        }
        self.len = self.len.wrapping_add(bytes.len() as u64);
    }

    /// Adds a string's UTF-8 bytes as one field (as `write`).
    pub fn write_str(&mut self, s: &str) {
        self.write(s.as_bytes());
    }

    /// 32 hex digits.
    pub fn finish(&self) -> String {
        let mix = |mut h: u64| {
            h ^= h >> 33;
            h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
            h ^= h >> 33;
            h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
            h ^ (h >> 33)
        };
        let [a, b, c, d] = self.lanes;
        let hi = mix(a ^ mix(b ^ self.len));
        let lo = mix(c ^ mix(d ^ hi));
        format!("{hi:016x}{lo:016x}")
    }
}

/// A hash of everything in a loaded model that decides what it computes: the
/// opsets, every node (op, attributes, inputs, outputs), the graph's inputs and
/// outputs, and every initializer's name, type, shape and bytes (external data
/// is inlined at load, so the weights are hashed wherever they were stored).
/// Value-info annotations are left out. A resumed job and a
/// merge compare this, not the file's path, size or time: a re-export with new
/// weights differs, a copy of the same model elsewhere does not.
pub fn model_hash(proto: &super::pb::ModelProto) -> String {
    model_hash_reading(proto, |_, _| Ok(false)).expect("reading nothing cannot fail")
}

/// `model_hash` of a model whose weights may still be external-data
/// references (`OnnxModel::load_leaving_weights`): their bytes are streamed
/// from the files in `dir`, so the hash is the same as for the inlined model.
pub fn model_hash_external(
    proto: &super::pb::ModelProto,
    dir: &std::path::Path,
    model: &std::path::Path,
) -> crate::error::Result<String> {
    model_hash_reading(proto, |t, h| {
        if t.data_location != Some(super::pb::tensor_proto::DataLocation::External as i32) {
            return Ok(false);
        }
        super::external::stream_external(t, dir, model, |bytes| h.write(bytes))?;
        Ok(true)
    })
}

/// The hash, with `external` hashing a tensor's bytes itself where it can
/// (returns true) instead of its inline bytes.
fn model_hash_reading(
    proto: &super::pb::ModelProto,
    mut external: impl FnMut(&super::pb::TensorProto, &mut ContentHash) -> crate::error::Result<bool>,
) -> crate::error::Result<String> {
    use prost::Message;
    let mut h = ContentHash::default();
    h.write_str("attrpatch model hash v1");
    for o in &proto.opset_import {
        h.write_str(&o.domain);
        h.write(&o.version.to_le_bytes());
    }
    let Some(g) = &proto.graph else { return Ok(h.finish()) };
    for n in &g.node {
        h.write(&n.encode_to_vec());
    }
    for v in g.input.iter().chain(&g.output) {
        h.write(&v.encode_to_vec());
    }
    for t in &g.initializer {
        h.write_str(&t.name);
        h.write(&t.data_type.to_le_bytes());
        h.write(&t.dims.iter().flat_map(|d| d.to_le_bytes()).collect::<Vec<u8>>());
        if external(t, &mut h)? {
            continue;
        }
        if t.raw_data.is_empty() {
            h.write(&t.encode_to_vec());
        } else {
            // In the chunks `stream_external` reads, so a weight hashes the same inline or in its file.
            for c in t.raw_data.chunks(super::external::STREAM_CHUNK) {
                h.write(c);
            }
        }
    }
    for s in &g.sparse_initializer {
        h.write(&s.encode_to_vec());
    }
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{GraphProto, ModelProto, NodeProto, TensorProto};

    fn model(weight: &[u8]) -> ModelProto {
        let t = TensorProto {
            name: "W".into(),
            data_type: 1,
            dims: vec![weight.len() as i64 / 4],
            raw_data: weight.to_vec(),
            ..Default::default()
        };
        let n = NodeProto {
            op_type: "Mul".into(),
            input: vec!["x".into(), "W".into()],
            output: vec!["y".into()],
            ..Default::default()
        };
        ModelProto {
            graph: Some(GraphProto { node: vec![n], initializer: vec![t], ..Default::default() }),
            ..Default::default()
        }
    }

    /// One weight byte deep inside a tensor, or one op, changes the hash; the
    /// same content gives the same hash.
    #[test]
    fn model_hash_sees_every_weight_byte_and_node() {
        let w: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let base = model_hash(&model(&w));
        assert_eq!(base, model_hash(&model(&w)));
        for i in [0, 1, 2047, 4095] {
            let mut w2 = w.clone();
            w2[i] ^= 1;
            assert_ne!(base, model_hash(&model(&w2)), "byte {i}");
        }
        let mut m = model(&w);
        m.graph.as_mut().unwrap().node[0].op_type = "Add".into();
        assert_ne!(base, model_hash(&m));
    }

    #[test]
    fn content_hash_separates_fields() {
        let hash = |parts: &[&str]| {
            let mut h = ContentHash::default();
            parts.iter().for_each(|p| h.write_str(p));
            h.finish()
        };
        assert_ne!(hash(&["ab", "c"]), hash(&["a", "bc"]));
        assert_ne!(hash(&[""]), hash(&[]));
        assert_ne!(hash(&["x".repeat(40).as_str()]), hash(&["x".repeat(41).as_str()]));
    }
}
