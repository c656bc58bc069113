//! A memory-mapped safetensors file whose header we validate ourselves (length, JSON, dtypes,
//! offsets inside the file, sizes) so that garbage (HTML, JSON, truncated or empty files) is a
//! [`PipelineError::ModelInvalid`] naming the file, never a panic.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::{Mmap, UncheckedAdvice};
use serde::Deserialize;

#[cfg(target_os = "linux")]
use super::host_alloc::read_vec;
use super::host_alloc::{vec_from_bytes, PlainData};
use crate::{PipelineError, Result};

/// Headers larger than this are refused (real SDXL files have ~200 KB headers).
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// Element type of a stored tensor, as named in the safetensors header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    /// A dtype candle can load.
    Candle(DType),
    /// Any other safetensors dtype (BOOL, I8, U16, ...), with its size in bytes.
    Other(&'static str, usize),
}

impl StoredDtype {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "F16" => Self::Candle(DType::F16),
            "BF16" => Self::Candle(DType::BF16),
            "F32" => Self::Candle(DType::F32),
            "F64" => Self::Candle(DType::F64),
            "I64" => Self::Candle(DType::I64),
            "I32" => Self::Candle(DType::I32),
            "I16" => Self::Candle(DType::I16),
            "U32" => Self::Candle(DType::U32),
            "U8" => Self::Candle(DType::U8),
            "F8_E4M3" => Self::Candle(DType::F8E4M3),
            "BOOL" => Self::Other("BOOL", 1),
            "I8" => Self::Other("I8", 1),
            "F8_E5M2" => Self::Other("F8_E5M2", 1),
            "U16" => Self::Other("U16", 2),
            "U64" => Self::Other("U64", 8),
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(&self) -> usize {
        match self {
            Self::Candle(d) => d.size_in_bytes(),
            Self::Other(_, s) => *s,
        }
    }

    /// The candle float dtype, if this is one a weight can be stored in.
    pub fn float(&self) -> Option<DType> {
        match self {
            Self::Candle(
                d @ (DType::F16 | DType::BF16 | DType::F32 | DType::F64 | DType::F8E4M3),
            ) => Some(*d),
            _ => None,
        }
    }
}

impl std::fmt::Display for StoredDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Candle(d) => write!(f, "{d:?}"),
            Self::Other(n, _) => f.write_str(n),
        }
    }
}

/// One tensor of the header: dtype, shape and absolute byte range in the file.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub dtype: StoredDtype,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// A validated, memory-mapped safetensors file.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    /// Kept open for `pread` loads (Linux).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    file: File,
    mmap: Mmap,
    tensors: HashMap<String, TensorEntry>,
}

impl SafetensorsFile {
    /// Maps `path` and validates its header.
    pub fn open(path: &Path) -> Result<Self> {
        let invalid = |reason: String| PipelineError::ModelInvalid {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(|source| PipelineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let len = file
            .metadata()
            .map_err(|source| PipelineError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        if len < 8 {
            return Err(invalid(format!(
                "not a safetensors file: {len} bytes, shorter than the 8-byte header length"
            )));
        }
        // SAFETY: the file is opened read-only and is not modified by this process; a model file
        // changed on disk by another process while mapped is outside what the worker supports.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| PipelineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let tensors = parse_header(&mmap, len).map_err(invalid)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            mmap,
            tensors,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor of the header.
    pub fn tensors(&self) -> &HashMap<String, TensorEntry> {
        &self.tensors
    }

    /// The tensor `name`, or `None`.
    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    /// Copies bytes `[from, to)` of tensor `entry` (relative to its data) into a tensor of `shape`
    /// on `device`. On Linux every device is served the same way: `pread` into a fresh host
    /// buffer, then (for a GPU) one copy to the device, so an I/O error of the model file (a
    /// network volume going away) is an `Err`, never a SIGBUS from a faulting mapped page.
    /// Elsewhere (and for dtypes other than f16/bf16/f32/f64) the bytes come from the map, whose
    /// pages are then released (they stay in the page cache), so loading keeps no second copy.
    pub fn load_bytes(
        &self,
        entry: &TensorEntry,
        dtype: DType,
        (from, to): (usize, usize),
        shape: &[usize],
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let start = entry.start + from;
        let end = entry.start + to;
        if start > end || end > self.mmap.len() {
            return Err(candle_core::Error::Msg(
                "tensor range outside the file".into(),
            ));
        }
        #[cfg(target_os = "linux")]
        if let Some(t) = self.read_cpu_tensor(start, end, dtype, shape)? {
            return match device {
                Device::Cpu => Ok(t),
                _ => t.to_device(device),
            };
        }
        let bytes = self
            .mmap
            .get(start..end)
            .ok_or_else(|| candle_core::Error::Msg("tensor range outside the file".into()))?;
        let t = match device {
            Device::Cpu => cpu_tensor(bytes, dtype, shape)?,
            _ => Tensor::from_raw_buffer(bytes, dtype, shape, device)?,
        };
        self.release(start, end);
        Ok(t)
    }

    /// A CPU tensor read with `pread` into a fresh huge-page-hinted buffer (no mapping touched);
    /// `None` for dtypes other than f16, bf16, f32, f64.
    #[cfg(target_os = "linux")]
    fn read_cpu_tensor(
        &self,
        start: usize,
        end: usize,
        dtype: DType,
        shape: &[usize],
    ) -> candle_core::Result<Option<Tensor>> {
        fn read<T: PlainData + candle_core::WithDType>(
            file: &File,
            start: usize,
            end: usize,
            shape: &[usize],
        ) -> candle_core::Result<Option<Tensor>> {
            match read_vec::<T>(file, start as u64, end - start)? {
                Some(v) => Tensor::from_vec(v, shape, &Device::Cpu).map(Some),
                None => Ok(None),
            }
        }
        match dtype {
            DType::F16 => read::<half::f16>(&self.file, start, end, shape),
            DType::BF16 => read::<half::bf16>(&self.file, start, end, shape),
            DType::F32 => read::<f32>(&self.file, start, end, shape),
            DType::F64 => read::<f64>(&self.file, start, end, shape),
            _ => Ok(None),
        }
    }

    /// `MADV_DONTNEED` on the whole pages inside `[start, end)`.
    fn release(&self, start: usize, end: usize) {
        const PAGE: usize = 4096;
        let first = start.div_ceil(PAGE) * PAGE;
        let last = end / PAGE * PAGE;
        if last > first {
            // SAFETY: the mapping is read-only and file-backed; dropping its pages only makes a
            // later access fault them in again from the file. No reference into this range is
            // alive: `from_raw_buffer` copied the bytes.
            let _ = unsafe {
                self.mmap
                    .unchecked_advise_range(UncheckedAdvice::DontNeed, first, last - first)
            };
        }
    }
}

/// A CPU tensor owning a copy of `bytes` in a huge-page-hinted buffer (see `host_alloc`).
fn cpu_tensor(bytes: &[u8], dtype: DType, shape: &[usize]) -> candle_core::Result<Tensor> {
    fn build<T: PlainData + candle_core::WithDType>(
        bytes: &[u8],
        shape: &[usize],
    ) -> candle_core::Result<Tensor> {
        let v = vec_from_bytes::<T>(bytes).ok_or_else(|| {
            candle_core::Error::Msg(format!("{} bytes are not whole elements", bytes.len()))
        })?;
        Tensor::from_vec(v, shape, &Device::Cpu)
    }
    match dtype {
        DType::F16 => build::<half::f16>(bytes, shape),
        DType::BF16 => build::<half::bf16>(bytes, shape),
        DType::F32 => build::<f32>(bytes, shape),
        DType::F64 => build::<f64>(bytes, shape),
        _ => Tensor::from_raw_buffer(bytes, dtype, shape, &Device::Cpu),
    }
}

fn parse_header(
    bytes: &[u8],
    file_len: u64,
) -> std::result::Result<HashMap<String, TensorEntry>, String> {
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(bytes.get(..8).ok_or("file shorter than 8 bytes")?);
    let n = u64::from_le_bytes(len8);
    if n == 0 || n > MAX_HEADER_BYTES {
        return Err(format!(
            "not a safetensors file: header length {n} is not in 1..={MAX_HEADER_BYTES}"
        ));
    }
    if 8 + n > file_len {
        return Err(format!(
            "truncated or not a safetensors file: header of {n} bytes but the file has {file_len}"
        ));
    }
    let header = bytes
        .get(8..8 + n as usize)
        .ok_or("header outside the file")?;
    if header.first() != Some(&b'{') {
        return Err("not a safetensors file: the header is not a JSON object".into());
    }
    let raw: HashMap<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| format!("not a safetensors file: header JSON is invalid: {e}"))?;
    let data_start = 8 + n;
    let data_len = file_len - data_start;
    let mut out = HashMap::with_capacity(raw.len());
    for (name, value) in raw {
        if name == "__metadata__" {
            continue;
        }
        let e: RawEntry = serde_json::from_value(value)
            .map_err(|err| format!("tensor `{name}`: bad header entry: {err}"))?;
        let dtype = StoredDtype::parse(&e.dtype)
            .ok_or_else(|| format!("tensor `{name}`: unknown dtype {}", e.dtype))?;
        let [begin, end] = e.data_offsets;
        if begin > end || end > data_len {
            return Err(format!(
                "truncated: tensor `{name}` spans bytes {begin}..{end} of a {data_len}-byte data section"
            ));
        }
        let numel = e
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("tensor `{name}`: shape overflows"))?;
        let want = numel
            .checked_mul(dtype.size() as u64)
            .ok_or_else(|| format!("tensor `{name}`: size overflows"))?;
        if want != end - begin {
            return Err(format!(
                "tensor `{name}`: {} {:?} needs {want} bytes but spans {}",
                dtype,
                e.shape,
                end - begin
            ));
        }
        let to_usize =
            |v: u64| usize::try_from(v).map_err(|_| format!("tensor `{name}`: offset too large"));
        out.insert(
            name.clone(),
            TensorEntry {
                dtype,
                shape: e
                    .shape
                    .iter()
                    .map(|&d| to_usize(d))
                    .collect::<std::result::Result<_, _>>()?,
                start: to_usize(data_start + begin)?,
                end: to_usize(data_start + end)?,
            },
        );
    }
    Ok(out)
}
