//! Reading and writing model files without holding the file's bytes and the
//! decoded weights at the same time: the graph's initializers are decoded and
//! encoded one by one, so the peak is the model plus one weight tensor.

use super::pb::{GraphProto, ModelProto, TensorProto};
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
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let bad = |e: &dyn std::fmt::Display| {
        Error::Model(format!("{}: not a valid ONNX model (protobuf decoding failed: {e})", path.display()))
    };
    let mut rest = vec![];
    let mut graph: Option<(GraphProto, NodeScopes)> = None;
    while let Some(key) = read_varint(&mut r).map_err(|e| bad(&e))? {
        if key >> 3 == MODEL_GRAPH && key & 7 == 2 {
            let len = need_varint(&mut r).map_err(|e| bad(&e))?;
            if len > size {
                return Err(bad(&format!("graph of {len} bytes in a file of {size}")));
            }
            graph = Some(read_graph(&mut (&mut r).take(len), size).map_err(|e| bad(&e))?);
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

fn read_graph(r: &mut impl BufRead, size: u64) -> std::io::Result<(GraphProto, NodeScopes)> {
    let mut rest = vec![];
    let mut initializers = vec![];
    let mut buf = vec![];
    while let Some(key) = read_varint(r)? {
        if key >> 3 == GRAPH_INITIALIZER && key & 7 == 2 {
            let len = need_varint(r)?;
            if len > size {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("initializer of {len} bytes in a file of {size}"),
                ));
            }
            buf.clear();
            copy_exact(r, len, &mut buf)?;
            initializers.push(TensorProto::decode(buf.as_slice())?);
        } else {
            copy_field(r, key, &mut rest, size)?;
        }
    }
    let mut g = GraphProto::decode(rest.as_slice())?;
    g.initializer = initializers;
    Ok((g, NodeScopes::decode_graph(&rest)))
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
