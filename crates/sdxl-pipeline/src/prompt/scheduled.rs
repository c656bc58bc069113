//! Prompts with A1111 syntax (SPEC §5a): each prompt's schedule texts are encoded as one batch
//! (emphasis, BREAK, textual-inversion embeddings) and the conditioning in force at each denoiser
//! call is chosen as A1111's `reconstruct_cond_batch` does.

use std::collections::BTreeSet;

use candle_core::{DType, Tensor};

use super::emphasis::{self, Emphasis};
use super::parser::{parse_prompt_attention, Segment};
use super::schedule::{prompt_schedule, prompt_schedule_hires};
use super::weighted::{
    segment_ids, tokenize_line_ids, EmbeddingMatcher, LineOptions, WeightedChunk,
};
use super::{
    equalize_lengths, Conditioning, EncodedPrompt, PromptEncoder, PromptMode, COMMA_BACKTRACK,
};
use crate::text_encoder::{ClipOutput, ClipTextEncoder, TokenOverride};
use crate::tokenizer::{ClipTokenizer, CHUNK_LEN, SEQ_LEN};
use crate::{PipelineError, Result};

/// How prompts are encoded (besides the text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptOptions {
    /// Long-prompt mode.
    pub mode: PromptMode,
    /// CLIP skip.
    pub clip_skip: u32,
    /// Emphasis mode.
    pub emphasis: Emphasis,
    /// A1111's `total_steps` the schedules are built on (see [`super::schedule_steps`]).
    pub steps: usize,
    /// In a hires pass, the first pass's total steps (A1111 `firstpass_steps`): the schedules
    /// then continue the first pass's timeline ([`super::prompt_schedule_hires`]).
    pub hires_base_steps: Option<usize>,
}

/// The encodings of one prompt over a job: schedule entry `j` uses `encodings[entries[j].1]`
/// while the denoiser call counter is ≤ `entries[j].0`.
#[derive(Debug, Clone)]
pub struct PromptSchedule {
    /// `(end_at_step, index into encodings)` in A1111's order.
    pub entries: Vec<(usize, usize)>,
    /// One encoding per distinct schedule text.
    pub encodings: Vec<EncodedPrompt>,
}

impl PromptSchedule {
    fn single(encoded: EncodedPrompt, steps: usize) -> Self {
        Self {
            entries: vec![(steps, 0)],
            encodings: vec![encoded],
        }
    }

    /// Index of the encoding in force at denoiser call `call` (A1111 `reconstruct_cond_batch`).
    pub fn at(&self, call: usize) -> usize {
        let idx = self
            .entries
            .iter()
            .position(|&(end, _)| call <= end)
            .unwrap_or(0);
        self.entries.get(idx).map_or(0, |&(_, e)| e)
    }
}

/// Prompt and negative prompt over a job.
#[derive(Debug, Clone)]
pub struct ScheduledConditioning {
    /// The prompt.
    pub cond: PromptSchedule,
    /// The negative prompt (a zero encoding when there is none).
    pub uncond: PromptSchedule,
    /// Things the user should know (truncation, fallbacks).
    pub warnings: Vec<String>,
    /// Names of the textual-inversion embeddings used, sorted.
    pub used_embeddings: Vec<String>,
}

impl ScheduledConditioning {
    /// `(cond encoding, uncond encoding)` indices at denoiser call `call`.
    pub fn pair_at(&self, call: usize) -> (usize, usize) {
        (self.cond.at(call), self.uncond.at(call))
    }

    /// Whether the conditioning ever changes during sampling.
    pub fn is_static(&self) -> bool {
        self.cond.encodings.len() == 1 && self.uncond.encodings.len() == 1
    }

    /// The pair `(c, u)` with lengths equalised for a batch-2 CFG call (SPEC §5).
    pub fn pair(&self, (c, u): (usize, usize)) -> Result<Conditioning> {
        let get = |s: &PromptSchedule, i: usize| {
            s.encodings.get(i).cloned().ok_or_else(|| {
                PipelineError::InvalidInput(format!("no encoding {i} in a prompt schedule"))
            })
        };
        let (cond, uncond) = equalize_lengths(get(&self.cond, c)?, get(&self.uncond, u)?)?;
        Ok(Conditioning {
            cond,
            uncond,
            warnings: self.warnings.clone(),
        })
    }
}

/// One distinct schedule text, tokenized for both encoders.
struct TextChunks {
    c1: Vec<WeightedChunk>,
    c2: Vec<WeightedChunk>,
    /// How many schedule entries use this text.
    count: usize,
}

impl PromptEncoder {
    /// Encodes prompt and negative prompt with A1111 syntax: schedules built on `opts.steps`,
    /// each distinct schedule text encoded once (one batch per prompt, as A1111). A `None` or
    /// empty negative gives a zero context and pooled vector.
    pub fn scheduled_conditioning(
        &self,
        prompt: &str,
        negative: Option<&str>,
        opts: PromptOptions,
    ) -> Result<ScheduledConditioning> {
        let mut used = BTreeSet::new();
        let (cond, mut warnings) = self.encode_scheduled(prompt, opts, &mut used)?;
        let uncond = match negative {
            Some(neg) if !neg.is_empty() => {
                let (uncond, neg_warnings) = self.encode_scheduled(neg, opts, &mut used)?;
                warnings.extend(
                    neg_warnings
                        .into_iter()
                        .map(|w| format!("negative prompt: {w}")),
                );
                uncond
            }
            _ => {
                let first = cond.encodings.first().ok_or_else(|| {
                    PipelineError::InvalidInput("prompt schedule without encodings".into())
                })?;
                let zero = EncodedPrompt {
                    context: Tensor::zeros(
                        (1, SEQ_LEN, first.context.dim(2)?),
                        first.context.dtype(),
                        first.context.device(),
                    )?,
                    pooled: first.pooled.zeros_like()?,
                };
                PromptSchedule::single(zero, opts.steps)
            }
        };
        Ok(ScheduledConditioning {
            cond,
            uncond,
            warnings,
            used_embeddings: used.into_iter().collect(),
        })
    }

    /// One prompt's schedule and encodings.
    fn encode_scheduled(
        &self,
        text: &str,
        opts: PromptOptions,
        used: &mut BTreeSet<String>,
    ) -> Result<(PromptSchedule, Vec<String>)> {
        let schedule = match opts.hires_base_steps {
            Some(base) => prompt_schedule_hires(text, base, opts.steps.max(1)),
            None => prompt_schedule(text, opts.steps.max(1)),
        };
        let mut distinct: Vec<(String, usize)> = Vec::new();
        let mut entries = Vec::with_capacity(schedule.len());
        for e in &schedule {
            let idx = match distinct.iter().position(|(t, _)| *t == e.text) {
                Some(i) => {
                    distinct[i].1 += 1;
                    i
                }
                None => {
                    distinct.push((e.text.clone(), 1));
                    distinct.len() - 1
                }
            };
            entries.push((e.end_at_step, idx));
        }
        if let [(only, _)] = distinct.as_slice() {
            if self.is_plain(only, opts.emphasis)? {
                let (encoded, warnings) = self.encode(only, opts.mode, opts.clip_skip)?;
                return Ok((
                    PromptSchedule {
                        entries,
                        encodings: vec![encoded],
                    },
                    warnings,
                ));
            }
        }
        let (encodings, warnings) = self.encode_weighted(&distinct, opts, used)?;
        Ok((PromptSchedule { entries, encodings }, warnings))
    }

    /// Whether `text` encodes exactly as without syntax support: one weight-1 segment equal to
    /// the text and no embedding name in it.
    fn is_plain(&self, text: &str, emphasis: Emphasis) -> Result<bool> {
        if emphasis.parses() {
            let segs = parse_prompt_attention(text)?;
            if !matches!(segs.as_slice(), [s] if s.weight == 1.0 && s.text == text) {
                return Ok(false);
            }
        }
        if self.embeddings.is_empty() {
            return Ok(true);
        }
        let (m1, m2) = self.matchers()?;
        let (c1, c2) = self.tokens.content_ids(text)?;
        Ok((0..c1.len()).all(|i| m1.find(&c1, i).is_none())
            && (0..c2.len()).all(|i| m2.find(&c2, i).is_none()))
    }

    /// The embedding matchers of both tokenizers (names tokenized by each).
    fn matchers(&self) -> Result<(EmbeddingMatcher, EmbeddingMatcher)> {
        let build = |tok: &ClipTokenizer| -> Result<EmbeddingMatcher> {
            let mut names = Vec::with_capacity(self.embeddings.len());
            for e in &self.embeddings {
                if e.vectors() > CHUNK_LEN {
                    return Err(PipelineError::InvalidInput(format!(
                        "embedding `{}` has {} vectors; at most {CHUNK_LEN} fit in a prompt chunk",
                        e.name(),
                        e.vectors()
                    )));
                }
                names.push((tok.content_ids(e.name())?, e.vectors()));
            }
            Ok(EmbeddingMatcher::new(names))
        };
        Ok((build(self.tokens.clip_l())?, build(self.tokens.clip_g())?))
    }

    /// A1111's `forward` for a batch of texts (with multiplicities): `tokenize_line` per encoder,
    /// missing chunks filled with empty chunks, every chunk index encoded with emphasis over the
    /// whole batch, then per text concatenated (`concat`) or averaged over its own chunks
    /// (`blend`).
    fn encode_weighted(
        &self,
        texts: &[(String, usize)],
        opts: PromptOptions,
        used: &mut BTreeSet<String>,
    ) -> Result<(Vec<EncodedPrompt>, Vec<String>)> {
        let (m1, m2) = self.matchers()?;
        let backtrack = match opts.mode {
            PromptMode::Concat => COMMA_BACKTRACK,
            PromptMode::Blend => 0,
        };
        let comma_id = self.tokens.comma_id();
        let line = |tok: &ClipTokenizer| LineOptions {
            comma_id,
            comma_backtrack: backtrack,
            pad_id: tok.kind().pad_id(),
        };
        let (l1, l2) = (line(self.tokens.clip_l()), line(self.tokens.clip_g()));
        let mut warnings = Vec::new();
        let mut batch = Vec::with_capacity(texts.len());
        for (text, count) in texts {
            let segments = if opts.emphasis.parses() {
                parse_prompt_attention(text)?
            } else {
                vec![Segment {
                    text: text.clone(),
                    weight: 1.0,
                }]
            };
            // The two tokenizers differ only on `!` (see `PromptTokenizer::content_ids`).
            let ids1 = segment_ids(&segments, self.tokens.clip_l())?;
            let ids2 = if text.contains('!') {
                segment_ids(&segments, self.tokens.clip_g())?
            } else {
                ids1.clone()
            };
            let c1 = tokenize_line_ids(&segments, &ids1, &m1, l1);
            let mut c2 = tokenize_line_ids(&segments, &ids2, &m2, l2);
            if c2.len() > c1.len() {
                warnings.push(format!(
                    "text encoder 2 sees more tokens than text encoder 1 (each `!` is a separate \
                     token there); its last {} chunks are dropped",
                    c2.len() - c1.len()
                ));
                c2.truncate(c1.len());
            }
            c2.resize(c1.len(), WeightedChunk::empty(l2.pad_id));
            batch.push(TextChunks {
                c1,
                c2,
                count: *count,
            });
        }
        let n_chunks = batch.iter().map(|t| t.c1.len()).max().unwrap_or(1);
        if n_chunks > self.max_chunks {
            warnings.push(format!(
                "the prompt needs {n_chunks} chunks, more than the limit of {}; only its first \
                 chunk is used",
                self.max_chunks
            ));
            for t in &mut batch {
                t.c1.truncate(1);
                t.c2.truncate(1);
            }
        }
        let n_chunks = n_chunks.min(self.max_chunks).max(1);
        let counts: Vec<usize> = batch.iter().map(|t| t.count).collect();
        let rows1 = rows(&batch, n_chunks, |t| &t.c1, l1.pad_id);
        let rows2 = rows(&batch, n_chunks, |t| &t.c2, l2.pad_id);
        let k = batch.len();
        let (o1, used1) = self.run_encoder(&self.te1, &rows1, opts, true)?;
        let (o2, used2) = self.run_encoder(&self.te2, &rows2, opts, false)?;
        for i in used1.into_iter().chain(used2) {
            if let Some(e) = self.embeddings.get(i) {
                used.insert(e.name().to_string());
            }
        }
        let h1 = emphasize(&o1.hidden, &rows1, k, n_chunks, opts.emphasis, &counts)?;
        let dtype = self.te1.dtype();
        let h2 =
            emphasize(&o2.hidden, &rows2, k, n_chunks, opts.emphasis, &counts)?.to_dtype(dtype)?;
        let context = Tensor::cat(&[&h1, &h2], 2)?;
        let pooled = o2
            .pooled
            .ok_or_else(|| PipelineError::WeightInvalid {
                tensor: "text_projection.weight".into(),
                reason: "text encoder 2 has no text projection".into(),
            })?
            .to_dtype(dtype)?;
        let c = context.dim(2)?;
        let mut out = Vec::with_capacity(k);
        for (t, text) in batch.iter().enumerate() {
            let own = match opts.mode {
                PromptMode::Concat => n_chunks,
                PromptMode::Blend => text.c1.len().clamp(1, n_chunks),
            };
            let idx: Vec<u32> = (0..own).map(|i| (i * k + t) as u32).collect();
            let idx = Tensor::new(idx.as_slice(), context.device())?;
            let ctx = context.index_select(&idx, 0)?;
            let pl = pooled.index_select(&idx, 0)?;
            out.push(match opts.mode {
                PromptMode::Concat => EncodedPrompt {
                    context: ctx.reshape((1, own * SEQ_LEN, c))?,
                    pooled: pl.narrow(0, 0, 1)?,
                },
                PromptMode::Blend => EncodedPrompt {
                    context: mean0(&ctx)?,
                    pooled: mean0(&pl)?,
                },
            });
        }
        Ok((out, warnings))
    }

    /// Runs one encoder on all rows with their embedding vectors; returns the embeddings used.
    fn run_encoder(
        &self,
        encoder: &ClipTextEncoder,
        rows: &[WeightedChunk],
        opts: PromptOptions,
        clip_l: bool,
    ) -> Result<(ClipOutput, Vec<usize>)> {
        let ids: Vec<u32> = rows.iter().flat_map(|r| r.ids.iter().copied()).collect();
        let ids = Tensor::from_vec(ids, (rows.len(), SEQ_LEN), encoder.device())?;
        let mut overrides = Vec::new();
        let mut used = Vec::new();
        for (r, row) in rows.iter().enumerate() {
            for fix in &row.fixes {
                let e = self.embeddings.get(fix.embedding).ok_or_else(|| {
                    PipelineError::InvalidInput("embedding index out of range".into())
                })?;
                overrides.push(TokenOverride {
                    row: r,
                    offset: fix.offset,
                    vectors: if clip_l { e.clip_l() } else { e.clip_g() },
                });
                used.push(fix.embedding);
            }
        }
        let out = encoder.forward_with_overrides(&ids, opts.clip_skip as usize, &overrides)?;
        Ok((out, used))
    }
}

/// Rows in chunk-major order (`i * k + t`), missing chunks as A1111's `empty_chunk`.
fn rows<'a>(
    batch: &'a [TextChunks],
    n_chunks: usize,
    pick: impl Fn(&'a TextChunks) -> &'a Vec<WeightedChunk>,
    pad_id: u32,
) -> Vec<WeightedChunk> {
    let mut out = Vec::with_capacity(n_chunks * batch.len());
    for i in 0..n_chunks {
        for t in batch {
            out.push(
                pick(t)
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| WeightedChunk::empty(pad_id)),
            );
        }
    }
    out
}

/// Emphasis per chunk index over the batch of `k` texts.
fn emphasize(
    hidden: &Tensor,
    rows: &[WeightedChunk],
    k: usize,
    n_chunks: usize,
    mode: Emphasis,
    counts: &[usize],
) -> Result<Tensor> {
    if matches!(mode, Emphasis::Ignore | Emphasis::None) {
        return Ok(hidden.clone());
    }
    let mut parts = Vec::with_capacity(n_chunks);
    for i in 0..n_chunks {
        let z = hidden.narrow(0, i * k, k)?;
        let w: Vec<f32> = rows[i * k..(i + 1) * k]
            .iter()
            .flat_map(|r| r.multipliers.iter().map(|&m| m as f32))
            .collect();
        let w = Tensor::from_vec(w, (k, SEQ_LEN), hidden.device())?;
        parts.push(emphasis::apply(mode, &z, &w, counts)?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Mean over axis 0 in f32, keeping the axis.
fn mean0(xs: &Tensor) -> Result<Tensor> {
    let dtype = xs.dtype();
    Ok(xs.to_dtype(DType::F32)?.mean_keepdim(0)?.to_dtype(dtype)?)
}
