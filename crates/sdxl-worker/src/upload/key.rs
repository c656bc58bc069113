//! Object keys: `<job id>/<i>.<ext>`. Job ids come from RunPod (or a local caller), so they are
//! checked rather than trusted: a `/`, `..` or empty id would write outside the job's prefix.

use super::UploadError;

/// Longest job id accepted in a key (RunPod ids are about 40 characters).
const MAX_JOB_ID_LEN: usize = 128;

/// Accepts a job id as a key prefix: 1 to 128 ASCII letters, digits, `.`, `_` or `-`, and not
/// made only of dots (`.`, `..`). Anything else is [`UploadError::InvalidJobId`] (never escaped,
/// so the key always equals the job id the caller sees).
pub fn check_job_id(job_id: &str) -> Result<(), UploadError> {
    let ok = !job_id.is_empty()
        && job_id.len() <= MAX_JOB_ID_LEN
        && job_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !job_id.bytes().all(|b| b == b'.');
    if ok {
        Ok(())
    } else {
        Err(UploadError::InvalidJobId(job_id.chars().take(64).collect()))
    }
}

/// The object key of image `index` of a job: `<job id>/<index>.<extension>`.
pub fn object_key(job_id: &str, index: usize, extension: &str) -> Result<String, UploadError> {
    check_job_id(job_id)?;
    Ok(format!("{job_id}/{index}.{extension}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runpod_ids_are_accepted() {
        for id in [
            "e3d2e250-ea81-4074-9838-1c52d006ddcb-u1",
            "sync-0d1f3c6a-4f2b-4b8e-9a7e-2b7f5d9c1e11",
            "local_test",
            "a",
            "v1.2",
        ] {
            assert_eq!(object_key(id, 3, "png").unwrap(), format!("{id}/3.png"));
        }
    }

    #[test]
    fn path_tricks_and_empty_ids_are_refused() {
        let long = "x".repeat(129);
        for id in [
            "", ".", "..", "...", "a/b", "../x", "a\\b", "a b", "é", "a?b", "a%2Fb", &long,
        ] {
            assert!(
                matches!(check_job_id(id), Err(UploadError::InvalidJobId(_))),
                "{id:?} accepted"
            );
        }
    }

    #[test]
    fn the_error_quotes_at_most_64_characters() {
        let err = check_job_id(&format!("/{}", "y".repeat(500))).unwrap_err();
        let UploadError::InvalidJobId(shown) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(shown.chars().count(), 64);
    }
}
