//! The two CLIP BPE tokenizers of SDXL, embedded in the binary (no Hub, no files at run time).
//!
//! Both share one vocabulary; they differ only in the padding token, exactly as in diffusers:
//! tokenizer 1 (CLIP ViT-L) pads with `<|endoftext|>` (49407), tokenizer 2 (OpenCLIP bigG) with
//! `!` (id 0). Because `!` is a *special* token of tokenizer 2, every `!` in a prompt becomes its
//! own id 0 there (diffusers issue #4153); we keep that quirk, since HF ids are what diffusers feeds
//! the encoders.

use tokenizers::Tokenizer;

use crate::{PipelineError, Result};

/// Id of `<|startoftext|>`.
pub const BOS_ID: u32 = 49406;
/// Id of `<|endoftext|>` (also the largest id of the vocabulary).
pub const EOS_ID: u32 = 49407;
/// Length of one encoder input sequence (BOS + 75 content tokens + EOS).
pub const SEQ_LEN: usize = 77;
/// Content tokens that fit in one sequence between BOS and EOS.
pub const CHUNK_LEN: usize = SEQ_LEN - 2;

const CLIP_L_JSON: &[u8] = include_bytes!("../assets/tokenizer/tokenizer.json");
const CLIP_G_JSON: &[u8] = include_bytes!("../assets/tokenizer_2/tokenizer.json");

/// Which of the two SDXL tokenizers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// Tokenizer 1 (CLIP ViT-L): pads with `<|endoftext|>` = 49407.
    ClipL,
    /// Tokenizer 2 (OpenCLIP bigG): pads with `!` = 0.
    ClipG,
}

impl TokenizerKind {
    /// The padding id used after the EOS token.
    pub fn pad_id(self) -> u32 {
        match self {
            Self::ClipL => EOS_ID,
            Self::ClipG => 0,
        }
    }
}

/// One CLIP tokenizer with SDXL's padding rule.
#[derive(Clone)]
pub struct ClipTokenizer {
    kind: TokenizerKind,
    inner: Tokenizer,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl ClipTokenizer {
    /// Loads the embedded `tokenizer.json` of `kind`.
    pub fn new(kind: TokenizerKind) -> Result<Self> {
        let json = match kind {
            TokenizerKind::ClipL => CLIP_L_JSON,
            TokenizerKind::ClipG => CLIP_G_JSON,
        };
        let inner = Tokenizer::from_bytes(json)
            .map_err(|e| PipelineError::Tokenizer(format!("loading {kind:?}: {e}")))?;
        Ok(Self { kind, inner })
    }

    /// Which tokenizer this is.
    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// The id of a vocabulary token such as `",</w>"`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token ids of the whole text without BOS/EOS and without truncation.
    pub fn content_ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| PipelineError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// diffusers' `tokenizer(text, padding="max_length", max_length=77, truncation=True)`:
    /// `[BOS] + first 75 content ids + [EOS] + pad` to 77.
    pub fn encode_padded(&self, text: &str) -> Result<Vec<u32>> {
        let ids = self.content_ids(text)?;
        Ok(self.wrap_chunk(&ids))
    }

    /// `[BOS] + chunk + [EOS] + pad` to 77; a chunk longer than 75 ids is cut to its first 75.
    pub fn wrap_chunk(&self, chunk: &[u32]) -> Vec<u32> {
        let body = chunk.get(..CHUNK_LEN).unwrap_or(chunk);
        let mut out = Vec::with_capacity(SEQ_LEN);
        out.push(BOS_ID);
        out.extend_from_slice(body);
        out.push(EOS_ID);
        out.resize(SEQ_LEN, self.kind.pad_id());
        out
    }
}
