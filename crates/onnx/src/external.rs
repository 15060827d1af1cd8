//! External data: tensors whose bytes live in files beside the model. They are
//! read into the protobuf so the augmented model is one self-contained buffer,
//! or, for ONNX Runtime, checked and left for it to read. Only files inside the
//! model's folder are read.

use super::pb::{tensor_proto::DataLocation, GraphProto, TensorProto};
use crate::error::{Error, Result};
use std::path::Path;

/// Reads every external tensor of `graph` into it; returns whether there was any
/// (a model that kept its weights beside it is written back the same way).
pub fn inline_external_data(graph: &mut GraphProto, dir: &Path, model: &Path) -> Result<bool> {
    let mut any = false;
    for t in graph.initializer.iter_mut() {
        if t.data_location == Some(DataLocation::External as i32) {
            inline_one(t, dir, model)?;
            any = true;
        }
    }
    // Constant nodes can carry external tensors too.
    for n in graph.node.iter_mut() {
        for a in n.attribute.iter_mut() {
            if let Some(t) = a.t.as_mut() {
                if t.data_location == Some(DataLocation::External as i32) {
                    inline_one(t, dir, model)?;
                    any = true;
                }
            }
        }
    }
    Ok(any)
}

fn entry<'a>(t: &'a TensorProto, key: &str) -> Option<&'a str> {
    t.external_data.iter().find(|e| e.key == key).map(|e| e.value.as_str())
}

/// Checks every external reference of the graph's initializers as `inline_external_data`
/// would (inside the model's folder, file long enough, length matching the shape) without
/// reading the bytes: for a runtime that reads them itself. Returns the files referenced.
pub fn check_external_data(graph: &GraphProto, dir: &Path, model: &Path) -> Result<Vec<String>> {
    let mut files: Vec<String> = vec![];
    for t in &graph.initializer {
        if t.data_location == Some(DataLocation::External as i32) {
            locate(t, dir, model)?;
            let location = entry(t, "location").unwrap_or_default().to_string();
            if !files.contains(&location) {
                files.push(location);
            }
        }
    }
    Ok(files)
}

/// The chunk size of `stream_external` (and of `hash::model_hash` on inline bytes).
pub const STREAM_CHUNK: usize = 1 << 20;

/// Streams an external tensor's bytes to `sink` in chunks of 1 MiB, checked as
/// `inline_external_data` checks them: hashing weights left in their file
/// reads them without ever holding a copy.
pub fn stream_external(t: &TensorProto, dir: &Path, model: &Path, mut sink: impl FnMut(&[u8])) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let (canon, offset, length) = locate(t, dir, model)?;
    let mut f = std::fs::File::open(&canon).map_err(|e| Error::io(&canon, e))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(&canon, e))?;
    let mut buf = vec![0u8; STREAM_CHUNK];
    let mut left = length as usize;
    while left > 0 {
        let n = left.min(buf.len());
        f.read_exact(&mut buf[..n]).map_err(|e| Error::io(&canon, e))?;
        sink(&buf[..n]);
        left -= n;
    }
    Ok(())
}

/// The file, offset and length an external tensor's bytes are at, checked.
fn locate(t: &TensorProto, dir: &Path, model: &Path) -> Result<(std::path::PathBuf, u64, u64)> {
    let bad = |what: String| Error::Model(format!("{}: tensor '{}': {what}", model.display(), t.name));
    let location = entry(t, "location").ok_or_else(|| bad("external data without a location".into()))?;
    let rel = Path::new(location);
    if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(bad(format!(
            "external data path '{location}' points outside the model's folder; only relative paths inside it are read"
        )));
    }
    let file = dir.join(rel);
    let canon_dir = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    let canon = file.canonicalize().map_err(|e| bad(format!("external data file {}: {e}", file.display())))?;
    if !canon.starts_with(&canon_dir) {
        return Err(bad(format!("external data file '{location}' resolves outside the model's folder")));
    }
    let parse = |key: &str| -> Result<Option<u64>> {
        entry(t, key)
            .map(|v| v.parse::<u64>().map_err(|_| bad(format!("external data {key} '{v}' is not a number"))))
            .transpose()
    };
    let offset = parse("offset")?.unwrap_or(0);
    let length = parse("length")?;
    let file_len = std::fs::metadata(&canon).map_err(|e| Error::io(&canon, e))?.len();
    let length = length.unwrap_or(file_len.saturating_sub(offset));
    if offset.checked_add(length).is_none_or(|end| end > file_len) {
        return Err(bad(format!(
            "external data file '{location}' is too short: needs bytes {offset}..{} but has {file_len}",
            offset.saturating_add(length)
        )));
    }
    let expected = expected_bytes(t);
    if let Some(exp) = expected {
        if exp != length {
            return Err(bad(format!("external data holds {length} bytes, the tensor's shape and type need {exp}")));
        }
    }
    Ok((canon, offset, length))
}

/// Reads one external tensor's bytes into it (a no-op for an inline tensor):
/// for a rewrite that needs the values of a weight otherwise left in its file.
pub fn inline_tensor(t: &mut TensorProto, dir: &Path, model: &Path) -> Result<()> {
    if t.data_location != Some(DataLocation::External as i32) {
        return Ok(());
    }
    inline_one(t, dir, model)
}

fn inline_one(t: &mut TensorProto, dir: &Path, model: &Path) -> Result<()> {
    let (canon, offset, length) = locate(t, dir, model)?;
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(&canon).map_err(|e| Error::io(&canon, e))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(&canon, e))?;
    let mut buf = vec![0u8; length as usize];
    f.read_exact(&mut buf).map_err(|e| Error::io(&canon, e))?;
    t.raw_data = buf;
    t.external_data.clear();
    t.data_location = Some(DataLocation::Default as i32);
    Ok(())
}

/// Bytes a dense tensor of this shape and type occupies, when the type has a fixed size.
fn expected_bytes(t: &TensorProto) -> Option<u64> {
    // A half weight declared float32 (`file_precision`) holds its stored type's bytes.
    let stored = super::file_precision::stored_type(t).unwrap_or(t.data_type);
    let size = super::consts::elem_size(stored)?;
    let mut n: u64 = size;
    for &d in &t.dims {
        n = n.checked_mul(u64::try_from(d).ok()?)?;
    }
    Some(n)
}
