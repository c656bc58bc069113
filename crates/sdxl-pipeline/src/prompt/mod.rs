//! Prompt encoding (SPEC §5): tokenize with both CLIP tokenizers, chunk long prompts (`blend` or
//! `concat`), run both text encoders once per prompt (all chunks in one batch) and build SDXL's
//! context `[1, L, C1+C2]` and pooled `[1, P]` embeddings.

mod chunks;
mod emphasis;
mod parser;
mod schedule;
mod scheduled;
mod tokens;
mod weighted;

pub use chunks::{a1111_chunks, blend_chunks, COMMA_BACKTRACK};
pub use emphasis::{infotext_value as emphasis_infotext, Emphasis};
pub use parser::{parse_prompt_attention, split_break, Segment, BREAK_WEIGHT};
pub use schedule::{
    entry_index, prompt_schedule, prompt_schedule_hires, schedule_steps, ScheduleEntry,
};
pub use scheduled::{PromptOptions, PromptSchedule, ScheduledConditioning};
pub use tokens::{ChunkedPrompt, EncodingKind, PromptTokenizer};
pub use weighted::{
    segment_ids, tokenize_line, tokenize_line_ids, EmbeddingFix, EmbeddingMatcher, LineOptions,
    WeightedChunk,
};

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::embedding::TextualInversion;
use crate::text_encoder::ClipTextEncoder;
use crate::tokenizer::SEQ_LEN;
use crate::{PipelineError, Result};

/// How prompts longer than 75 content tokens are encoded (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptMode {
    /// 75-token chunks encoded separately and averaged into one 77-token context (default).
    #[default]
    Blend,
    /// AUTOMATIC1111: comma-aware 75-token chunks concatenated along the sequence.
    Concat,
}

impl PromptMode {
    /// Parses `blend` or `concat` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "blend" => Some(Self::Blend),
            "concat" => Some(Self::Concat),
            _ => None,
        }
    }

    /// The lowercase name used in job JSON and infotext.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Blend => "blend",
            Self::Concat => "concat",
        }
    }
}

/// Default cap on the chunks of one long prompt (2400 content tokens); longer prompts fall back to
/// their first 75 tokens with a warning.
pub const DEFAULT_MAX_CHUNKS: usize = 32;

/// SDXL conditioning of one prompt.
#[derive(Debug, Clone)]
pub struct EncodedPrompt {
    /// Hidden states of both encoders concatenated on channels: `[1, L, C1+C2]`, L a multiple of 77.
    pub context: Tensor,
    /// Text encoder 2's pooled embedding `[1, P]`.
    pub pooled: Tensor,
}

/// Positive and negative conditioning with equal context lengths, ready for a batch-2 CFG call.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// The prompt.
    pub cond: EncodedPrompt,
    /// The negative prompt (zeros when there is none).
    pub uncond: EncodedPrompt,
    /// Things the user should know (truncation, fallbacks).
    pub warnings: Vec<String>,
}

/// Owns both tokenizers and both text encoders.
#[derive(Debug, Clone)]
pub struct PromptEncoder {
    tokens: PromptTokenizer,
    te1: ClipTextEncoder,
    te2: ClipTextEncoder,
    max_chunks: usize,
    /// Textual-inversion embeddings prompts may name (SPEC §5a).
    embeddings: Vec<TextualInversion>,
}

impl PromptEncoder {
    /// `te1` = CLIP ViT-L, `te2` = OpenCLIP bigG, which must have its `text_projection`.
    pub fn new(te1: ClipTextEncoder, te2: ClipTextEncoder) -> Result<Self> {
        if te2.projection_dim().is_none() {
            return Err(PipelineError::WeightInvalid {
                tensor: "text_projection.weight".into(),
                reason: "text encoder 2 has no text projection (SDXL needs its pooled output)"
                    .into(),
            });
        }
        if !te1.device().same_device(te2.device()) {
            return Err(PipelineError::InvalidInput(
                "the two text encoders are on different devices".into(),
            ));
        }
        Ok(Self {
            tokens: PromptTokenizer::new()?,
            te1,
            te2,
            max_chunks: DEFAULT_MAX_CHUNKS,
            embeddings: Vec::new(),
        })
    }

    /// Replaces the textual-inversion embeddings prompts may name. Each must have one vector
    /// width per text encoder (`clip_l` as wide as encoder 1, `clip_g` as encoder 2).
    pub fn set_embeddings(&mut self, embeddings: Vec<TextualInversion>) -> Result<()> {
        for e in &embeddings {
            let (wl, wg) = (e.clip_l().dim(1)?, e.clip_g().dim(1)?);
            if wl != self.te1.hidden_size() || wg != self.te2.hidden_size() {
                return Err(PipelineError::InvalidInput(format!(
                    "embedding `{}` has vector widths {wl}/{wg}, but this model's text encoders \
                     take {}/{} (an embedding for another model family?)",
                    e.name(),
                    self.te1.hidden_size(),
                    self.te2.hidden_size()
                )));
            }
        }
        self.embeddings = embeddings;
        Ok(())
    }

    /// The textual-inversion embeddings prompts may name.
    pub fn embeddings(&self) -> &[TextualInversion] {
        &self.embeddings
    }

    /// Sets the most chunks one long prompt may use before it falls back to its first 75 tokens.
    pub fn with_max_chunks(mut self, max_chunks: usize) -> Self {
        self.max_chunks = max_chunks;
        self
    }

    /// The tokenizers and chunking rules.
    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokens
    }

    /// Width of the context (C1 + C2).
    pub fn context_dim(&self) -> usize {
        self.te1.hidden_size() + self.te2.hidden_size()
    }

    /// Encodes one prompt. Prompts of ≤ 75 tokens are encoded as diffusers does; longer ones by
    /// `mode`. `clip_skip` 1 and 2 select `hidden_states[-2]`, k ≥ 3 `hidden_states[-k]`. If a
    /// long prompt cannot be encoded (too many chunks, out of memory, ...), its first 75 tokens
    /// are encoded instead and a warning says so.
    pub fn encode(
        &self,
        text: &str,
        mode: PromptMode,
        clip_skip: u32,
    ) -> Result<(EncodedPrompt, Vec<String>)> {
        let clip_skip = clip_skip as usize;
        let chunked = self.tokens.chunk(text, mode)?;
        tracing::debug!(
            kind = ?chunked.kind,
            tokens = chunked.n_tokens,
            chunks = chunked.n_chunks(),
            "encoding prompt"
        );
        let mut warnings = chunked.warnings.clone();
        if chunked.kind == EncodingKind::Standard {
            return Ok((self.encode_rows(&chunked, clip_skip)?, warnings));
        }
        let long = if chunked.n_chunks() > self.max_chunks {
            Err(PipelineError::InvalidInput(format!(
                "{} chunks exceed the limit of {}",
                chunked.n_chunks(),
                self.max_chunks
            )))
        } else {
            self.encode_rows(&chunked, clip_skip)
        };
        match long {
            Ok(encoded) => Ok((encoded, warnings)),
            Err(err) => {
                let msg = format!(
                    "encoding the {}-token prompt in {} mode failed ({err}); used its first 75 tokens",
                    chunked.n_tokens,
                    mode.as_str()
                );
                tracing::warn!("{msg}");
                warnings.push(msg);
                let truncated = self.tokens.truncated(text)?;
                Ok((self.encode_rows(&truncated, clip_skip)?, warnings))
            }
        }
    }

    /// Encodes prompt and negative prompt as literal text (no A1111 syntax: renders use
    /// [`Self::scheduled_conditioning`]). A `None` or empty negative gives a zero context
    /// `[1,77,C]` and a zero pooled vector. When the two contexts differ in length (concat mode)
    /// both are repeated along the sequence to the least common multiple of the lengths, which
    /// leaves cross-attention unchanged (SPEC §5).
    pub fn conditioning(
        &self,
        prompt: &str,
        negative: Option<&str>,
        mode: PromptMode,
        clip_skip: u32,
    ) -> Result<Conditioning> {
        let (cond, mut warnings) = self.encode(prompt, mode, clip_skip)?;
        let uncond = match negative {
            Some(neg) if !neg.is_empty() => {
                let (uncond, neg_warnings) = self.encode(neg, mode, clip_skip)?;
                warnings.extend(
                    neg_warnings
                        .into_iter()
                        .map(|w| format!("negative prompt: {w}")),
                );
                uncond
            }
            _ => EncodedPrompt {
                context: Tensor::zeros(
                    (1, SEQ_LEN, cond.context.dim(2)?),
                    cond.context.dtype(),
                    cond.context.device(),
                )?,
                pooled: cond.pooled.zeros_like()?,
            },
        };
        let (cond, uncond) = equalize_lengths(cond, uncond)?;
        Ok(Conditioning {
            cond,
            uncond,
            warnings,
        })
    }

    /// Runs both encoders on all rows of `chunked` (one batch each) and combines the chunks.
    fn encode_rows(&self, chunked: &ChunkedPrompt, clip_skip: usize) -> Result<EncodedPrompt> {
        let n = chunked.n_chunks();
        let device = self.te1.device();
        let ids1 = Tensor::from_vec(chunked.ids1.concat(), (n, SEQ_LEN), device)?;
        let ids2 = Tensor::from_vec(chunked.ids2.concat(), (n, SEQ_LEN), device)?;
        let o1 = self.te1.forward(&ids1, clip_skip)?;
        let o2 = self.te2.forward(&ids2, clip_skip)?;
        let dtype = self.te1.dtype();
        let context = Tensor::cat(&[&o1.hidden, &o2.hidden.to_dtype(dtype)?], 2)?;
        let pooled = o2
            .pooled
            .ok_or_else(|| PipelineError::WeightInvalid {
                tensor: "text_projection.weight".into(),
                reason: "text encoder 2 has no text projection".into(),
            })?
            .to_dtype(dtype)?;
        let (context, pooled) = match chunked.kind {
            EncodingKind::Standard => (context, pooled),
            EncodingKind::Blend => (mean_over_chunks(&context)?, mean_over_chunks(&pooled)?),
            EncodingKind::Concat => {
                let c = context.dim(2)?;
                (
                    context.reshape((1, n * SEQ_LEN, c))?,
                    pooled.narrow(0, 0, 1)?,
                )
            }
        };
        Ok(EncodedPrompt { context, pooled })
    }
}

/// Mean over axis 0 (the chunks), computed in f32, keeping the axis.
fn mean_over_chunks(xs: &Tensor) -> Result<Tensor> {
    let dtype = xs.dtype();
    Ok(xs.to_dtype(DType::F32)?.mean_keepdim(0)?.to_dtype(dtype)?)
}

/// Repeats both contexts along the sequence to the least common multiple of their lengths.
fn equalize_lengths(
    cond: EncodedPrompt,
    uncond: EncodedPrompt,
) -> Result<(EncodedPrompt, EncodedPrompt)> {
    let lc = cond.context.dim(1)?;
    let lu = uncond.context.dim(1)?;
    if lc == lu {
        return Ok((cond, uncond));
    }
    let l = lc / gcd(lc, lu) * lu;
    let repeat = |p: EncodedPrompt, len: usize| -> Result<EncodedPrompt> {
        Ok(EncodedPrompt {
            context: p.context.repeat((1, l / len, 1))?,
            pooled: p.pooled,
        })
    };
    Ok((repeat(cond, lc)?, repeat(uncond, lu)?))
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
