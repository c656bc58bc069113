//! From prompt text to the 77-id encoder rows of both text encoders (no tensors involved).

use super::chunks::{a1111_chunks, blend_chunks};
use super::PromptMode;
use crate::tokenizer::{ClipTokenizer, TokenizerKind, CHUNK_LEN};
use crate::{PipelineError, Result};

/// How a prompt is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingKind {
    /// ≤ 75 content ids (or the fallback): one sequence, identical to diffusers `encode_prompt`.
    Standard,
    /// Chunks averaged into one 77-token context.
    Blend,
    /// Chunks concatenated along the sequence (A1111).
    Concat,
}

/// The encoder rows of one prompt: `ids1[i]` and `ids2[i]` are chunk i for text encoders 1 and 2,
/// each 77 ids (`[BOS] + chunk + [EOS] + pad`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedPrompt {
    /// How the rows are to be combined after encoding.
    pub kind: EncodingKind,
    /// Rows for text encoder 1 (pad 49407).
    pub ids1: Vec<Vec<u32>>,
    /// Rows for text encoder 2 (pad 0); always as many as `ids1`.
    pub ids2: Vec<Vec<u32>>,
    /// Number of content ids of the prompt for tokenizer 1.
    pub n_tokens: usize,
    /// Things the user should know (tokens dropped).
    pub warnings: Vec<String>,
}

impl ChunkedPrompt {
    /// Number of 77-id rows per encoder.
    pub fn n_chunks(&self) -> usize {
        self.ids1.len()
    }
}

/// Both SDXL tokenizers plus the chunking rules of SDXL prompt encoding.
///
/// Each tokenizer's content ids are chunked with the same rule. The two id lists differ only
/// where a prompt contains `!` (tokenizer 2 turns every `!` into its own id 0, so its list can
/// be longer). Tokenizer 1 decides: the prompt is standard when tokenizer 1 has ≤ 75 content ids,
/// and tokenizer 2 gets exactly as many chunks as tokenizer 1. Surplus tokenizer-2 chunks are
/// dropped with a warning (as diffusers truncates tokenizer 2 at 75 ids); missing ones are empty
/// chunks.
#[derive(Debug, Clone)]
pub struct PromptTokenizer {
    tok1: ClipTokenizer,
    tok2: ClipTokenizer,
    comma_id: u32,
}

impl PromptTokenizer {
    /// Loads both embedded tokenizers.
    pub fn new() -> Result<Self> {
        let tok1 = ClipTokenizer::new(TokenizerKind::ClipL)?;
        let tok2 = ClipTokenizer::new(TokenizerKind::ClipG)?;
        let comma_id = tok1
            .token_id(",</w>")
            .ok_or_else(|| PipelineError::Tokenizer("vocabulary has no `,</w>`".into()))?;
        Ok(Self {
            tok1,
            tok2,
            comma_id,
        })
    }

    /// Tokenizer 1 (CLIP ViT-L).
    pub fn clip_l(&self) -> &ClipTokenizer {
        &self.tok1
    }

    /// Tokenizer 2 (OpenCLIP bigG).
    pub fn clip_g(&self) -> &ClipTokenizer {
        &self.tok2
    }

    /// The id of `,</w>` (the same in both tokenizers).
    pub fn comma_id(&self) -> u32 {
        self.comma_id
    }

    /// Content ids of `text` for tokenizer 1 and tokenizer 2. The two `tokenizer.json` files
    /// differ only in tokenizer 2's added special token `!` (checked by a unit test), so without a
    /// `!` in the text the ids are identical and the text is tokenized once.
    pub fn content_ids(&self, text: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        let c1 = self.tok1.content_ids(text)?;
        let c2 = if text.contains('!') {
            self.tok2.content_ids(text)?
        } else {
            c1.clone()
        };
        Ok((c1, c2))
    }

    /// Tokenizes `text` and splits it into encoder rows for `mode` (standard when ≤ 75 ids).
    pub fn chunk(&self, text: &str, mode: PromptMode) -> Result<ChunkedPrompt> {
        let (c1, c2) = self.content_ids(text)?;
        if c1.len() <= CHUNK_LEN {
            return Ok(self.standard(&c1, &c2));
        }
        let (kind, chunks1, chunks2) = match mode {
            PromptMode::Blend => (EncodingKind::Blend, blend_chunks(&c1), blend_chunks(&c2)),
            PromptMode::Concat => (
                EncodingKind::Concat,
                a1111_chunks(&c1, self.comma_id),
                a1111_chunks(&c2, self.comma_id),
            ),
        };
        let mut warnings = Vec::new();
        let chunks2 = align_chunk_count(chunks2, chunks1.len(), &mut warnings);
        Ok(ChunkedPrompt {
            kind,
            ids1: chunks1.iter().map(|c| self.tok1.wrap_chunk(c)).collect(),
            ids2: chunks2.iter().map(|c| self.tok2.wrap_chunk(c)).collect(),
            n_tokens: c1.len(),
            warnings,
        })
    }

    /// The standard (diffusers) rows of `text`: its first 75 ids per tokenizer, with a warning
    /// when more were dropped.
    pub fn truncated(&self, text: &str) -> Result<ChunkedPrompt> {
        let (c1, c2) = self.content_ids(text)?;
        Ok(self.standard(&c1, &c2))
    }

    fn standard(&self, c1: &[u32], c2: &[u32]) -> ChunkedPrompt {
        let mut warnings = Vec::new();
        if c1.len() > CHUNK_LEN {
            warnings.push(format!(
                "prompt truncated to its first {CHUNK_LEN} of {} tokens",
                c1.len()
            ));
        } else if c2.len() > CHUNK_LEN {
            warnings.push(format!(
                "text encoder 2 sees the prompt as {} tokens (each `!` is a separate token there); \
                 it keeps the first {CHUNK_LEN}",
                c2.len()
            ));
        }
        ChunkedPrompt {
            kind: EncodingKind::Standard,
            ids1: vec![self.tok1.wrap_chunk(c1)],
            ids2: vec![self.tok2.wrap_chunk(c2)],
            n_tokens: c1.len(),
            warnings,
        }
    }
}

/// Makes tokenizer 2's chunk list exactly `n` long (see [`PromptTokenizer`]).
fn align_chunk_count(
    mut chunks: Vec<Vec<u32>>,
    n: usize,
    warnings: &mut Vec<String>,
) -> Vec<Vec<u32>> {
    if chunks.len() > n {
        let dropped: usize = chunks.iter().skip(n).map(Vec::len).sum();
        if dropped > 0 {
            warnings.push(format!(
                "text encoder 2 sees more tokens than text encoder 1 (each `!` is a separate \
                 token there); its last {dropped} tokens are dropped"
            ));
        }
        chunks.truncate(n);
    }
    chunks.resize(n, Vec::new());
    chunks
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    /// The shortcut in [`super::PromptTokenizer::content_ids`] relies on this.
    #[test]
    fn tokenizer_files_differ_only_in_the_bang_added_token() {
        let parse = |bytes: &[u8]| -> Value { serde_json::from_slice(bytes).unwrap() };
        let a = parse(include_bytes!("../../assets/tokenizer/tokenizer.json"));
        let mut b = parse(include_bytes!("../../assets/tokenizer_2/tokenizer.json"));
        let added = b["added_tokens"].as_array_mut().unwrap();
        let before = added.len();
        added.retain(|t| t["content"] != "!");
        assert_eq!(added.len(), before - 1);
        assert_eq!(a, b);
    }
}
