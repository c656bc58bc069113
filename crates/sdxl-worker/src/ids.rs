//! Random numbers the worker needs without a model: seeds for `seed: -1` and local job ids.

use std::hash::{BuildHasher, Hasher};

/// A random seed in A1111's range (32 bits), from the OS-seeded hasher keys.
pub fn random_seed() -> u64 {
    random_u64() & 0xFFFF_FFFF
}

/// A new job id in the runpod SDK's local style (`test-<uuid-like>`).
pub fn new_job_id() -> String {
    let (a, b, c, d) = (random_seed(), random_seed(), random_seed(), random_seed());
    format!(
        "test-{a:08x}-{:04x}-{:04x}-{:04x}-{:04x}{d:08x}",
        b >> 16,
        b & 0xffff,
        c >> 16,
        c & 0xffff
    )
}

fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_fit_32_bits_and_ids_look_like_the_sdk() {
        assert!(super::random_seed() <= u64::from(u32::MAX));
        let id = super::new_job_id();
        assert!(id.starts_with("test-") && id.len() == 41, "{id}");
    }
}
