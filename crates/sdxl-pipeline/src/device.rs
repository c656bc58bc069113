//! Device and dtype selection from user-facing strings (`cpu`, `cuda`, `cuda:N`; `f32`, `f16`, `bf16`).

use crate::{PipelineError, Result};
use candle_core::{DType, Device};

/// Parses `cpu`, `cuda` or `cuda:N` into a candle device. Without the `cuda` feature, or without
/// a GPU, asking for CUDA is a clear [`PipelineError::InvalidInput`].
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match spec.as_str() {
        "cuda" | "gpu" => 0,
        s if s.starts_with("cuda:") => s[5..].parse::<usize>().map_err(|_| {
            PipelineError::InvalidInput(format!(
                "device `{spec}`: expected cuda:N with N a GPU index"
            ))
        })?,
        _ => {
            return Err(PipelineError::InvalidInput(format!(
                "device `{spec}`: expected cpu, cuda or cuda:N"
            )))
        }
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(PipelineError::InvalidInput(format!(
            "device `{spec}`: this build has no CUDA support (rebuild with --features cuda)"
        )));
    }
    let device = Device::new_cuda(ordinal).map_err(|e| {
        PipelineError::InvalidInput(format!(
            "device `{spec}`: no usable CUDA GPU ({}); use --device cpu / SDXL_DEVICE=cpu to run on the CPU",
            crate::error::candle_message(&e)
        ))
    })?;
    disable_event_tracking(&device);
    Ok(device)
}

/// Turns off cudarc's per-allocation event tracking (two CUDA events recorded and waited on for
/// every tensor) for the tensors created from now on. Event tracking only orders work across
/// streams; a candle `CudaDevice` runs all its kernels and copies on its one stream, and the
/// pipeline never hands a tensor to another stream, so the events buy nothing here.
/// `SDXL_CUDA_EVENT_TRACKING=1` keeps them on (for debugging).
#[cfg(feature = "cuda")]
fn disable_event_tracking(device: &Device) {
    if std::env::var("SDXL_CUDA_EVENT_TRACKING").as_deref() == Ok("1") {
        return;
    }
    if let Ok(cuda) = device.as_cuda_device() {
        // SAFETY: see above: every tensor of this device lives and is used on the device's single
        // stream, so no cross-stream synchronisation is needed.
        unsafe { cuda.disable_event_tracking() };
        tracing::debug!(tracking = cuda.is_event_tracking(), "CUDA event tracking");
    }
}

#[cfg(not(feature = "cuda"))]
fn disable_event_tracking(_device: &Device) {}

/// Parses `f32`, `f16`/`fp16`/`half` or `bf16` into a candle dtype.
pub fn parse_dtype(spec: &str) -> Result<DType> {
    match spec.trim().to_ascii_lowercase().as_str() {
        "f32" | "fp32" | "float32" => Ok(DType::F32),
        "f16" | "fp16" | "float16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(PipelineError::InvalidInput(format!(
            "dtype `{other}`: expected f32, f16 or bf16"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_dtypes() {
        assert!(matches!(parse_device("CPU").unwrap(), Device::Cpu));
        assert_eq!(parse_dtype("bf16").unwrap(), DType::BF16);
        assert_eq!(parse_dtype("fp16").unwrap(), DType::F16);
        assert!(parse_dtype("int8").is_err());
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:x").is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_a_clear_error() {
        let e = parse_device("cuda").unwrap_err().to_string();
        assert!(e.contains("no CUDA support"), "{e}");
    }
}
