//! Reading and writing model files without holding the file's bytes and the
//! decoded weights at the same time: the graph's initializers are decoded and
//! encoded one by one, so the peak is the model plus one weight tensor.

use super::pb::{tensor_proto::DataLocation, GraphProto, ModelProto, StringStringEntryProto, TensorProto};
use super::scopes::NodeScopes;
use crate::error::{Error, Result};
use prost::encoding::{encode_varint, encoded_len_varint};
use prost::Message;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

const MODEL_GRAPH: u64 = 7;
const GRAPH_INITIALIZER: u64 = 5;

/// Reads a varint from a stream; Ok(None) at a clean end of stream.
fn read_varint(r: &mut impl BufRead) -> std::io::Result<Option<u64>> {
    let mut v = 0u64;
    for i in 0..10 {
        let mut b = [0u8; 1];
        if r.read(&mut b)? == 0 {
            return if i == 0 { Ok(None) } else { Err(std::io::ErrorKind::UnexpectedEof.into()) };
        }
        v |= ((b[0] & 0x7f) as u64) << (7 * i);
        if b[0] < 0x80 {
            return Ok(Some(v));
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "varint longer than 10 bytes"))
}

fn need_varint(r: &mut impl BufRead) -> std::io::Result<u64> {
    read_varint(r)?.ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into())
}

/// Copies one field's payload (after its key) into `out`, key included.
fn copy_field(r: &mut impl BufRead, key: u64, out: &mut Vec<u8>, limit: u64) -> std::io::Result<()> {
    encode_varint(key, out);
    match key & 7 {
        0 => encode_varint(need_varint(r)?, out),
        1 => copy_exact(r, 8, out)?,
        5 => copy_exact(r, 4, out)?,
        2 => {
            let len = need_varint(r)?;
            if len > limit {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("field of {len} bytes in a file of {limit}"),
                ));
            }
            encode_varint(len, out);
            copy_exact(r, len, out)?;
        }
        w => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unsupported wire type {w}"))),
    }
    Ok(())
}

fn copy_exact(r: &mut impl Read, n: u64, out: &mut Vec<u8>) -> std::io::Result<()> {
    let start = out.len();
    r.take(n).read_to_end(out)?;
    if (out.len() - start) as u64 != n {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Reads a model file; returns the model and the node scopes of its graph.
pub fn read_model(path: &Path) -> Result<(ModelProto, NodeScopes)> {
    read_model_with(path, None)
}

/// Weights at least this big stay in the file with `read_model_leaving_weights`.
pub const LEAVE_MIN_BYTES: usize = 1 << 16;

/// As `read_model`, but the weights of `LEAVE_MIN_BYTES` or more (float32, half
/// precision or quantised codes: `LEFT_TYPES`) are not
/// read: each becomes an external-data reference to its own bytes inside the
/// model file (location = the file's name, offset, length), which ONNX Runtime
/// reads itself. attrpatch then never holds a copy of the weights.
pub fn read_model_leaving_weights(path: &Path) -> Result<(ModelProto, NodeScopes)> {
    read_model_with(path, Some(LEAVE_MIN_BYTES))
}

fn read_model_with(path: &Path, leave_min: Option<usize>) -> Result<(ModelProto, NodeScopes)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut r = Counting { inner: BufReader::with_capacity(1 << 20, file), pos: 0 };
    let bad = |e: &dyn std::fmt::Display| {
        Error::Model(format!("{}: not a valid ONNX model (protobuf decoding failed: {e})", path.display()))
    };
    let location = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let leave = leave_min.map(|min| Leave { location: &location, min });
    let mut rest = vec![];
    let mut graph: Option<(GraphProto, NodeScopes)> = None;
    while let Some(key) = read_varint(&mut r).map_err(|e| bad(&e))? {
        if key >> 3 == MODEL_GRAPH && key & 7 == 2 {
            let len = need_varint(&mut r).map_err(|e| bad(&e))?;
            if len > size {
                return Err(bad(&format!("graph of {len} bytes in a file of {size}")));
            }
            let pos = r.pos;
            let mut g = Counting { inner: (&mut r).take(len), pos };
            graph = Some(read_graph(&mut g, size, leave.as_ref()).map_err(|e| bad(&e))?);
        } else {
            copy_field(&mut r, key, &mut rest, size).map_err(|e| bad(&e))?;
        }
    }
    let mut model = ModelProto::decode(rest.as_slice()).map_err(|e| bad(&e))?;
    let scopes = match graph {
        Some((g, s)) => {
            model.graph = Some(g);
            s
        }
        None => NodeScopes::default(),
    };
    Ok((model, scopes))
}

/// Which weights stay in the file, and the name they are referenced by.
struct Leave<'a> {
    location: &'a str,
    min: usize,
}

/// A reader that knows its offset in the file.
struct Counting<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counting<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, n: usize) {
        self.inner.consume(n);
        self.pos += n as u64;
    }
}

fn read_graph<R: BufRead>(
    r: &mut Counting<R>,
    size: u64,
    leave: Option<&Leave>,
) -> std::io::Result<(GraphProto, NodeScopes)> {
    let mut rest = vec![];
    let mut initializers = vec![];
    while let Some(key) = read_varint(r)? {
        if key >> 3 == GRAPH_INITIALIZER && key & 7 == 2 {
            let len = need_varint(r)?;
            if len > size {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("initializer of {len} bytes in a file of {size}"),
                ));
            }
            let start = r.pos;
            // Sized once and dropped after decoding: a buffer grown by doubling and reused
            // would add up to twice the largest weight to the peak, to the end of the load.
            let mut buf = Vec::with_capacity(len as usize);
            copy_exact(r, len, &mut buf)?;
            initializers.push(match leave.and_then(|l| leave_in_file(&buf, start, l)) {
                Some(t) => t?,
                None => TensorProto::decode(buf.as_slice())?,
            });
        } else {
            copy_field(r, key, &mut rest, size)?;
        }
    }
    let mut g = GraphProto::decode(rest.as_slice())?;
    g.initializer = initializers;
    Ok((g, NodeScopes::decode_graph(&rest)))
}

/// The element types a weight may be left in the file as: float32, the half
/// types and the quantised codes (MatMulNBits' uint8 blocks, QDQ's 8- and 4-bit
/// codes). ONNX Runtime reads them in place, at the file's precision.
const LEFT_TYPES: [u64; 7] = [1, 10, 16, 2, 3, 21, 22];

const TENSOR_DATA_TYPE: u64 = 2;
const TENSOR_RAW_DATA: u64 = 9;

/// A weight (of `LEFT_TYPES`) whose raw bytes (at file offset `start` + their place in
/// `buf`) are big enough: decoded without them, as a reference to them. None
/// for any other tensor, or one this scan cannot follow (decoded as usual).
fn leave_in_file(buf: &[u8], start: u64, leave: &Leave) -> Option<std::io::Result<TensorProto>> {
    let mut s = buf;
    let (mut data_type, mut raw) = (None, None);
    while !s.is_empty() {
        let field_start = buf.len() - s.len();
        let key = prost::encoding::decode_varint(&mut s).ok()?;
        match key & 7 {
            0 => {
                let v = prost::encoding::decode_varint(&mut s).ok()?;
                if key >> 3 == TENSOR_DATA_TYPE {
                    data_type = Some(v);
                }
            }
            1 => s = s.get(8..)?,
            5 => s = s.get(4..)?,
            2 => {
                let len = usize::try_from(prost::encoding::decode_varint(&mut s).ok()?).ok()?;
                let payload = buf.len() - s.len();
                s = s.get(len..)?;
                if key >> 3 == TENSOR_RAW_DATA {
                    raw = Some((field_start, payload, len));
                }
            }
            _ => return None,
        }
    }
    let (field_start, payload, len) = raw?;
    if !data_type.is_some_and(|t| LEFT_TYPES.contains(&t)) || len < leave.min {
        return None;
    }
    let mut rest = buf[..field_start].to_vec();
    rest.extend_from_slice(&buf[payload + len..]);
    Some(TensorProto::decode(rest.as_slice()).map_err(Into::into).map(|mut t| {
        set_external(&mut t, leave.location, start + payload as u64, len as u64);
        t
    }))
}

fn write_len_delimited(w: &mut impl Write, field: u64, len: usize) -> std::io::Result<()> {
    let mut head = vec![];
    encode_varint(field << 3 | 2, &mut head);
    encode_varint(len as u64, &mut head);
    w.write_all(&head)
}

/// Writes a model, encoding one initializer at a time.
pub fn write_model(model: &mut ModelProto, w: &mut impl Write) -> std::io::Result<()> {
    let Some(mut graph) = model.graph.take() else {
        return w.write_all(&model.encode_to_vec());
    };
    let inits = std::mem::take(&mut graph.initializer);
    let result = (|| {
        w.write_all(&model.encode_to_vec())?;
        let shell = graph.encode_to_vec();
        let inits_len: usize = inits
            .iter()
            .map(|t| {
                let l = t.encoded_len();
                encoded_len_varint(GRAPH_INITIALIZER << 3 | 2) + encoded_len_varint(l as u64) + l
            })
            .sum();
        write_len_delimited(w, MODEL_GRAPH, shell.len() + inits_len)?;
        w.write_all(&shell)?;
        for t in &inits {
            write_len_delimited(w, GRAPH_INITIALIZER, t.encoded_len())?;
            w.write_all(&t.encode_to_vec())?;
        }
        Ok(())
    })();
    graph.initializer = inits;
    model.graph = Some(graph);
    result
}

/// Protobuf refuses messages of 2 GB and more: a model file that size is
/// readable by no ONNX tool (ONNX Runtime says "Protobuf parsing failed").
pub const PROTOBUF_LIMIT: u64 = (1 << 31) - 1;

/// Tensors at least this big go to the data file (the `onnx` package's default threshold).
const EXTERNAL_MIN_BYTES: usize = 1024;

/// Offsets in the data file are multiples of this, so a runtime can map each
/// weight from the file instead of copying it (ONNX Runtime does when aligned).
const EXTERNAL_ALIGN: u64 = 4096;

/// Whether a model must be written with its weights in a data file beside it:
/// always when its input kept them there, and whenever one protobuf would pass `limit`.
pub fn needs_external_data(model: &ModelProto, input_had_external_data: bool, limit: u64) -> bool {
    input_had_external_data || model.encoded_len() as u64 > limit
}

/// The data file written beside `path` with `save_model`: `NAME.onnx.data`.
pub fn data_file_for(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".data");
    path.with_file_name(name)
}

/// Writes `model` to `path`, one initializer at a time, each file atomically.
/// With `external`, every initializer of 1 KB or more goes to the data file
/// (`data_file_for(path)`, referenced by its file name, so the pair can move
/// together) and `path` holds the graph. Returns the files written.
pub fn save_model(model: &mut ModelProto, path: &Path, external: bool) -> Result<Vec<std::path::PathBuf>> {
    if !external {
        crate::fsutil::write_atomic_with(path, |w| write_model(model, w))?;
        return Ok(vec![path.to_path_buf()]);
    }
    let data = data_file_for(path);
    let location = data.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let Some(graph) = model.graph.as_mut() else {
        crate::fsutil::write_atomic_with(path, |w| write_model(model, w))?;
        return Ok(vec![path.to_path_buf()]);
    };
    // The bytes leave the tensors while both files are written and come back after.
    let mut moved: Vec<(usize, Vec<u8>, Option<i32>)> = vec![];
    let written = crate::fsutil::write_atomic_with(&data, |w| {
        let mut offset = 0u64;
        for (i, t) in graph.initializer.iter_mut().enumerate() {
            if t.raw_data.len() < EXTERNAL_MIN_BYTES {
                continue;
            }
            let pad = offset.next_multiple_of(EXTERNAL_ALIGN) - offset;
            w.write_all(&vec![0u8; pad as usize])?;
            offset += pad;
            let bytes = std::mem::take(&mut t.raw_data);
            w.write_all(&bytes)?;
            let was = t.data_location;
            set_external(t, &location, offset, bytes.len() as u64);
            offset += bytes.len() as u64;
            moved.push((i, bytes, was));
        }
        Ok(())
    });
    let result = written.and_then(|()| {
        let shell = model.encoded_len() as u64;
        if shell > PROTOBUF_LIMIT {
            return Err(Error::Model(format!(
                "{}: the graph alone is {shell} bytes with its weights in {location}, past protobuf's limit of \
                 {PROTOBUF_LIMIT} bytes; weights stored in typed fields (float_data, ...) rather than raw_data \
                 stay inside it",
                path.display()
            )));
        }
        crate::fsutil::write_atomic_with(path, |w| write_model(model, w))
    });
    let graph = model.graph.as_mut().expect("taken above");
    for (i, bytes, was) in moved {
        let t = &mut graph.initializer[i];
        t.raw_data = bytes;
        t.external_data.clear();
        t.data_location = was;
    }
    result.map(|()| vec![path.to_path_buf(), data])
}

fn set_external(t: &mut TensorProto, location: &str, offset: u64, length: u64) {
    let entry = |key: &str, value: String| StringStringEntryProto { key: key.into(), value };
    t.external_data = vec![
        entry("location", location.into()),
        entry("offset", offset.to_string()),
        entry("length", length.to_string()),
    ];
    t.data_location = Some(DataLocation::External as i32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{NodeProto, OperatorSetIdProto};

    /// A one-node model with a 4 KB weight `w` and a 12-byte `b`.
    fn model() -> ModelProto {
        let w: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        let tensor = |name: &str, raw: Vec<u8>| TensorProto {
            name: name.into(),
            data_type: crate::consts::FLOAT,
            dims: vec![raw.len() as i64 / 4],
            raw_data: raw,
            ..Default::default()
        };
        let node = NodeProto {
            op_type: "Add".into(),
            input: vec!["w".into(), "b".into()],
            output: vec!["y".into()],
            ..Default::default()
        };
        let graph = GraphProto {
            name: "g".into(),
            node: vec![node],
            initializer: vec![tensor("w", w), tensor("b", vec![1; 12])],
            ..Default::default()
        };
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
            graph: Some(graph),
            ..Default::default()
        }
    }

    fn temp_dir(name: &str) -> crate::test_dir::TestDir {
        crate::test_dir::TestDir::new(&format!("attrpatch-io-unit-{}-{name}", std::process::id()))
    }

    #[test]
    fn external_data_past_the_protobuf_limit_or_when_the_input_had_it() {
        let m = model();
        let size = m.encoded_len() as u64;
        assert!(!needs_external_data(&m, false, PROTOBUF_LIMIT));
        assert!(!needs_external_data(&m, false, size), "exactly at the limit still fits");
        assert!(needs_external_data(&m, false, size - 1), "one byte past a lowered limit");
        assert!(needs_external_data(&m, true, PROTOBUF_LIMIT));
    }

    #[test]
    fn rewrite_of_model_over_2gb_writes_external_data() {
        // The 2 GB limit lowered to the model's size minus one: the writer must split.
        let mut m = model();
        let original = m.clone();
        let external = needs_external_data(&m, false, m.encoded_len() as u64 - 1);
        let d = temp_dir("split");
        let path = d.join("out.onnx");
        let files = save_model(&mut m, &path, external).unwrap();
        assert_eq!(files, vec![path.clone(), d.join("out.onnx.data")]);
        assert!(m == original, "the model in memory keeps its weights");
        let data = std::fs::read(d.join("out.onnx.data")).unwrap();
        assert_eq!(data.len(), 4096, "only the 4 KB weight, at offset 0");
        assert!(std::fs::metadata(&path).unwrap().len() < 200, "the graph file holds no weight bytes");
        let (on_disk, _) = read_model(&path).unwrap();
        let w = &on_disk.graph.as_ref().unwrap().initializer[0];
        assert!(w.raw_data.is_empty() && w.data_location == Some(DataLocation::External as i32));
        let entries: Vec<(&str, &str)> = w.external_data.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
        assert_eq!(entries, [("location", "out.onnx.data"), ("offset", "0"), ("length", "4096")]);
        // Loading the pair back inlines the same bytes.
        let back = crate::OnnxModel::load(&path).unwrap();
        assert!(back.had_external_data);
        let g = back.graph();
        assert_eq!(g.initializer[0].raw_data, original.graph.as_ref().unwrap().initializer[0].raw_data);
        assert_eq!(g.initializer[1].raw_data, vec![1; 12]);
    }

    #[test]
    fn external_weights_start_at_aligned_offsets() {
        let mut m = model();
        let g = m.graph.as_mut().unwrap();
        let mut second = g.initializer[0].clone();
        second.name = "w2".into();
        second.raw_data.truncate(2052); // 513 floats: the next offset needs padding
        g.initializer.push(second.clone());
        let mut third = second;
        third.name = "w3".into();
        g.initializer.push(third);
        let d = temp_dir("align");
        save_model(&mut m, &d.join("m.onnx"), true).unwrap();
        let (on_disk, _) = read_model(&d.join("m.onnx")).unwrap();
        let offsets: Vec<String> = on_disk.graph.unwrap().initializer[2..]
            .iter()
            .map(|t| t.external_data.iter().find(|e| e.key == "offset").unwrap().value.clone())
            .collect();
        assert_eq!(offsets, ["4096", "8192"]);
        assert_eq!(std::fs::metadata(d.join("m.onnx.data")).unwrap().len(), 8192 + 2052);
    }

    #[test]
    fn weights_left_in_the_file_point_at_their_own_bytes() {
        // A 64 KB float weight stays in the file; the small one and the int64 one are read.
        let mut m = model();
        let g = m.graph.as_mut().unwrap();
        let big: Vec<u8> = (0..LEAVE_MIN_BYTES as u32).map(|i| (i * 13 % 241) as u8).collect();
        g.initializer[0].raw_data = big.clone();
        g.initializer[0].dims = vec![big.len() as i64 / 4];
        let mut ints = g.initializer[0].clone();
        (ints.name, ints.data_type) = ("ints".into(), crate::consts::INT64);
        ints.dims = vec![big.len() as i64 / 8];
        g.initializer.push(ints);
        let d = temp_dir("leave");
        let path = d.join("m.onnx");
        std::fs::write(&path, m.encode_to_vec()).unwrap();
        let (left, _) = read_model_leaving_weights(&path).unwrap();
        let (read, _) = read_model(&path).unwrap();
        assert!(read == m);
        let (lg, g) = (left.graph.as_ref().unwrap(), m.graph.as_ref().unwrap());
        let w = &lg.initializer[0];
        assert!(w.raw_data.is_empty() && w.data_location == Some(DataLocation::External as i32));
        let get = |k: &str| w.external_data.iter().find(|e| e.key == k).unwrap().value.clone();
        assert_eq!(get("location"), "m.onnx");
        let (offset, length): (usize, usize) = (get("offset").parse().unwrap(), get("length").parse().unwrap());
        let file = std::fs::read(&path).unwrap();
        assert_eq!(&file[offset..offset + length], big.as_slice());
        assert!(w.dims == g.initializer[0].dims && w.name == "w");
        assert!(lg.initializer[1] == g.initializer[1], "the 12-byte weight is read");
        assert!(lg.initializer[2] == g.initializer[2], "non-float tensors are read");
        // Inlined again, the model is the one read whole.
        let mut back = left.clone();
        crate::external::inline_external_data(back.graph.as_mut().unwrap(), &d, &path).unwrap();
        let bg = back.graph.as_ref().unwrap();
        assert_eq!(bg.initializer[0].raw_data, big);
    }
}
