//! Textual-inversion embeddings of models.toml `[[embeddings]]` (SPEC §5a): fetched and verified
//! like LoRAs, read with [`TextualInversion::load`] and handed to the model each time a
//! checkpoint loads; what `GET /sdapi/v1/embeddings` lists; their `TI hashes` for the infotext.

use sdxl_pipeline::embedding::TextualInversion;
use sdxl_pipeline::pipeline::SdxlModel;
use serde_json::{json, Map, Value};

use crate::error::WorkerError;
use crate::store::ModelStore;

/// What the worker knows about one loaded embedding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingInfo {
    /// The word that triggers it.
    pub name: String,
    /// Number of vectors (tokens) it stands for.
    pub vectors: usize,
    /// A1111's `shape`: the summed vector widths (`clip_g` + `clip_l`, 2048 for SDXL).
    pub shape: usize,
    /// sha256 of the file when known (models.toml or the cache's verified-hash record).
    pub sha256: Option<String>,
}

/// Fetches (downloading on first use), verifies and reads every models.toml embedding. A file
/// that is not an SDXL embedding is `MODEL_INVALID` naming the entry and the file.
pub fn load_all(
    store: &ModelStore,
) -> Result<(Vec<TextualInversion>, Vec<EmbeddingInfo>), WorkerError> {
    let mut loaded = Vec::new();
    let mut infos = Vec::new();
    for entry in &store.config().embeddings {
        let path = store.fetch(entry, None)?;
        let ti = TextualInversion::load(&path, &entry.name).map_err(|e| {
            WorkerError::ModelInvalid(format!(
                "embedding {:?} ({}): {e}",
                entry.name,
                path.display()
            ))
        })?;
        let width = |t: &candle_core::Tensor| t.dims().get(1).copied().unwrap_or(0);
        infos.push(EmbeddingInfo {
            name: entry.name.clone(),
            vectors: ti.vectors(),
            shape: width(ti.clip_g()) + width(ti.clip_l()),
            sha256: store.known_sha256(entry, &path),
        });
        loaded.push(ti);
    }
    Ok((loaded, infos))
}

/// Gives `embeddings` to `model`; one whose widths do not fit this model's text encoders is
/// `MODEL_INVALID` naming it (checked one by one so the message names the right file).
pub fn install(
    model: &mut SdxlModel,
    embeddings: Vec<TextualInversion>,
    store: &ModelStore,
) -> Result<(), WorkerError> {
    for e in &embeddings {
        if let Err(err) = model.set_embeddings(vec![e.clone()]) {
            let file = store
                .config()
                .embedding(e.name())
                .map(|entry| entry.filename.clone())
                .unwrap_or_default();
            return Err(WorkerError::ModelInvalid(format!(
                "embedding {:?} ({file}) does not fit this checkpoint: {err}",
                e.name()
            )));
        }
    }
    model.set_embeddings(embeddings).map_err(WorkerError::from)
}

/// A1111's `GET /sdapi/v1/embeddings` reply (`EmbeddingsResponse`): every loaded embedding
/// under `loaded` with `step`, `sd_checkpoint`, `sd_checkpoint_name` (null: SDXL safetensors
/// embeddings carry none), `shape` and `vectors`; `skipped` is always empty (an embedding that
/// does not fit fails the model load instead).
pub fn a1111_reply(infos: &[EmbeddingInfo]) -> Value {
    let loaded: Map<String, Value> = infos
        .iter()
        .map(|i| {
            (
                i.name.clone(),
                json!({
                    "step": null,
                    "sd_checkpoint": null,
                    "sd_checkpoint_name": null,
                    "shape": i.shape,
                    "vectors": i.vectors,
                }),
            )
        })
        .collect();
    json!({"loaded": loaded, "skipped": {}})
}

/// The `TI hashes` entries of the embeddings a render used, in use order, each once: A1111's
/// `name: shorthash` (first 12 hex digits of the file's sha256; `:` and `,` removed from the
/// name), only for embeddings whose sha256 is known.
pub fn ti_hashes(used: &[String], infos: &[EmbeddingInfo]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for name in used {
        let Some(sha) = infos
            .iter()
            .find(|i| &i.name == name)
            .and_then(|i| i.sha256.as_deref())
        else {
            continue;
        };
        let alias = crate::runtime::output::hash_alias(name);
        if out.iter().any(|(a, _)| *a == alias) {
            continue;
        }
        out.push((alias, crate::runtime::output::shorthash(sha)));
    }
    out
}
