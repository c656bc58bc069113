//! How a finished job's images reach the client (SPEC §4): inline as base64, or — when the job
//! asked (`"upload": true`) or the result would exceed the size cap and a bucket is configured —
//! uploaded, with presigned URLs in `image_urls`. [`finish_output`] is the one place that
//! decides; the RunPod loop and the local API's RunPod routes call it (the A1111 routes do not).

use std::sync::Arc;

use base64::Engine as _;

use crate::error::WorkerError;
use crate::job::ValidatedJob;
use crate::protocol::JobOutput;
use crate::upload::{BlockingUploader, BucketConfig, UploadItem, Uploader};

/// Bytes the result body adds around the serialized output: `{"output":` … `}` and a possible
/// `,"stopPod":true` (RunPod's `refresh_worker`).
const BODY_OVERHEAD: usize = 32;

/// The uploader of the `BUCKET_*` environment, or `None` without `BUCKET_ENDPOINT_URL`; an
/// incomplete or invalid configuration is an error naming the variable (never a credential).
pub fn uploader_from_env() -> anyhow::Result<Option<Arc<BlockingUploader>>> {
    let Some(config) = BucketConfig::from_env()? else {
        return Ok(None);
    };
    tracing::info!("result upload enabled: {config}");
    Ok(Some(Arc::new(BlockingUploader::new(Uploader::new(
        config,
    )?)?)))
}

/// Size in bytes of `output` serialized as JSON, without building the text.
pub fn serialized_len(output: &JobOutput) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, output);
    count.0
}

/// Decides how `output` (the handler's result for `job`, run as `job_id`) is delivered:
/// unchanged; uploaded (`images` emptied, `image_urls` set, a warning saying why) when the job
/// asked or the result body would exceed `cap` and `uploader` is set; `RESULT_TOO_LARGE` when
/// it would exceed `cap` without a bucket; `UPLOAD_FAILED` when the upload fails. `cap: None`
/// means no cap. Blocking: call it on the job's blocking thread.
pub fn finish_output(
    job: &ValidatedJob,
    mut output: JobOutput,
    job_id: &str,
    uploader: Option<&BlockingUploader>,
    cap: Option<usize>,
) -> Result<JobOutput, WorkerError> {
    let reason = if job.upload {
        Some("upload requested".to_string())
    } else {
        match cap {
            Some(cap) => {
                let size = serialized_len(&output).saturating_add(BODY_OVERHEAD);
                if size <= cap {
                    None
                } else if uploader.is_none() {
                    return Err(WorkerError::ResultTooLarge { size, cap });
                } else {
                    Some(format!(
                        "the result would be {size} bytes, over the cap of {cap} \
                         (SDXL_MAX_RESULT_BYTES)"
                    ))
                }
            }
            None => None,
        }
    };
    let Some(reason) = reason else {
        return Ok(output);
    };
    let Some(uploader) = uploader else {
        // The validator refuses `"upload": true` without a bucket; this is a frontend mix-up.
        return Err(WorkerError::InvalidInput(
            "`upload` is true but no bucket configured".into(),
        ));
    };
    let items = output
        .images
        .iter()
        .map(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(|bytes| UploadItem::from_format(bytes, job.output_format))
                .map_err(|e| WorkerError::Internal(format!("an output image is not base64: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let urls = uploader
        .upload_images(job_id, &items)
        .map_err(|e| WorkerError::UploadFailed(format!("uploading the result failed: {e}")))?;
    output.images = Vec::new();
    output.image_urls = Some(urls);
    output
        .warnings
        .push(format!("images uploaded to the bucket: {reason}"));
    Ok(output)
}
