//! Cheap structural checks of safetensors files and streaming sha256.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Largest header accepted (safetensors itself caps it at 100 MB).
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// What is wrong with a file that should be safetensors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SafetensorsProblem {
    /// Could not read it.
    #[error("cannot read: {0}")]
    Io(String),
    /// Shorter than the 8-byte length prefix.
    #[error("file is {0} bytes, too short for a safetensors header")]
    TooShort(u64),
    /// The header length is absurd or runs past the end of the file.
    #[error(
        "header length {len} is not sane for a file of {file_len} bytes (not a safetensors file?)"
    )]
    HeaderLength {
        /// Declared header length.
        len: u64,
        /// File size.
        file_len: u64,
    },
    /// The header is not a JSON object.
    #[error("header is not valid JSON: {0}")]
    HeaderJson(String),
    /// A tensor entry is malformed or points outside the file.
    #[error("tensor {tensor:?}: {problem}")]
    Tensor {
        /// The first bad tensor.
        tensor: String,
        /// What is wrong.
        problem: String,
    },
}

/// Whether the first bytes of a stream can start a safetensors file: a little-endian u64 header
/// length within limits followed by `{`. Needs at least 9 bytes.
pub(crate) fn plausible_prefix(first: &[u8]) -> bool {
    let (Some(len_bytes), Some(&brace)) = (first.get(..8), first.get(8)) else {
        return false;
    };
    let mut b = [0u8; 8];
    b.copy_from_slice(len_bytes);
    let len = u64::from_le_bytes(b);
    (2..=MAX_HEADER_BYTES).contains(&len) && brace == b'{'
}

/// Checks that `path` is a structurally valid safetensors file: sane header length, a JSON
/// header, and every tensor's `data_offsets` ordered, within the data section and matching its
/// dtype and shape. Reads only the header.
pub fn check_safetensors(path: &Path) -> Result<(), SafetensorsProblem> {
    let io = |e: std::io::Error| SafetensorsProblem::Io(e.to_string());
    let mut f = File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    if file_len < 8 {
        return Err(SafetensorsProblem::TooShort(file_len));
    }
    let mut len_bytes = [0u8; 8];
    f.read_exact(&mut len_bytes).map_err(io)?;
    let len = u64::from_le_bytes(len_bytes);
    if !(2..=MAX_HEADER_BYTES).contains(&len) || len > file_len - 8 {
        return Err(SafetensorsProblem::HeaderLength { len, file_len });
    }
    let mut header = vec![0u8; len as usize];
    f.seek(SeekFrom::Start(8)).map_err(io)?;
    f.read_exact(&mut header).map_err(io)?;
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| SafetensorsProblem::HeaderJson(e.to_string()))?;
    let data_len = file_len - 8 - len;
    for (name, info) in &json {
        if name == "__metadata__" {
            continue;
        }
        check_tensor(info, data_len).map_err(|problem| SafetensorsProblem::Tensor {
            tensor: name.clone(),
            problem,
        })?;
    }
    Ok(())
}

fn dtype_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

fn check_tensor(info: &serde_json::Value, data_len: u64) -> Result<(), String> {
    let dtype = info
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or("no dtype")?;
    let shape = info
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or("no shape")?;
    let offsets = info
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .ok_or("no data_offsets")?;
    let (Some(start), Some(end), 2) = (
        offsets.first().and_then(|v| v.as_u64()),
        offsets.get(1).and_then(|v| v.as_u64()),
        offsets.len(),
    ) else {
        return Err("data_offsets is not [start, end]".to_string());
    };
    if start > end || end > data_len {
        return Err(format!(
            "data_offsets [{start}, {end}] outside the data section of {data_len} bytes"
        ));
    }
    let mut elements: u64 = 1;
    for d in shape {
        let d = d.as_u64().ok_or("shape has a non-integer dimension")?;
        elements = elements.checked_mul(d).ok_or("shape overflows")?;
    }
    if let Some(bytes) = dtype_bytes(dtype) {
        let want = elements.checked_mul(bytes).ok_or("shape overflows")?;
        if want != end - start {
            return Err(format!(
                "{dtype} {shape:?} needs {want} bytes but data_offsets span {}",
                end - start,
                shape = shape.iter().map(|v| v.to_string()).collect::<Vec<_>>()
            ));
        }
    }
    Ok(())
}

/// Lowercase hex sha256 of a whole file (streamed in 1 MiB blocks).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_check() {
        let mut b = 20u64.to_le_bytes().to_vec();
        b.push(b'{');
        assert!(plausible_prefix(&b));
        assert!(!plausible_prefix(b"<!DOCTYPE html>"));
        assert!(!plausible_prefix(b"{\"error\":\"x\"}"));
        assert!(!plausible_prefix(&b[..8]));
    }
}
