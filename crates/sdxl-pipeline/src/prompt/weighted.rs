//! A1111 `FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line` for one text encoder: emphasis
//! segments → 77-id chunks with per-token multipliers and textual-inversion placements.

use std::collections::HashMap;

use super::parser::Segment;
use crate::tokenizer::{ClipTokenizer, BOS_ID, CHUNK_LEN, EOS_ID, SEQ_LEN};
use crate::Result;

/// A textual-inversion embedding placed in a chunk: its vectors replace the token embeddings at
/// `offset..offset + n` of the 77-id row (`offset` counts the BOS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddingFix {
    /// First row position of the vectors.
    pub offset: usize,
    /// Index of the embedding in the encoder's list.
    pub embedding: usize,
}

/// One 77-id encoder row with its emphasis multipliers (A1111 `PromptChunk`).
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedChunk {
    /// `[BOS] + tokens + [EOS] + pad` (77 ids; embedding placeholders are 0).
    pub ids: Vec<u32>,
    /// One multiplier per id (1.0 for BOS, EOS and padding), Python floats.
    pub multipliers: Vec<f64>,
    /// Textual-inversion embeddings in this row.
    pub fixes: Vec<EmbeddingFix>,
}

impl WeightedChunk {
    /// A1111 `empty_chunk`: BOS, EOS, padding, multipliers 1.
    pub fn empty(pad_id: u32) -> Self {
        Self::finish(Vec::new(), Vec::new(), Vec::new(), pad_id)
    }

    /// Wraps ≤ 75 tokens: `[BOS] + tokens + [EOS]*(75-len) + [EOS]`, then every id after the
    /// first EOS becomes `pad_id` (A1111 `next_chunk` + `process_tokens`).
    fn finish(tokens: Vec<u32>, mults: Vec<f64>, fixes: Vec<EmbeddingFix>, pad_id: u32) -> Self {
        let mut ids = Vec::with_capacity(SEQ_LEN);
        ids.push(BOS_ID);
        ids.extend_from_slice(&tokens);
        let first_eos = ids.len();
        ids.resize(SEQ_LEN, EOS_ID);
        for id in ids.iter_mut().skip(first_eos + 1) {
            *id = pad_id;
        }
        let mut multipliers = Vec::with_capacity(SEQ_LEN);
        multipliers.push(1.0);
        multipliers.extend_from_slice(&mults);
        multipliers.resize(SEQ_LEN, 1.0);
        let fixes = fixes
            .into_iter()
            .map(|f| EmbeddingFix {
                offset: f.offset + 1,
                embedding: f.embedding,
            })
            .collect();
        Self {
            ids,
            multipliers,
            fixes,
        }
    }
}

/// A1111 `EmbeddingDatabase.ids_lookup` for one tokenizer: embedding names as token sequences,
/// keyed by their first id, longest first (ties in registration order).
#[derive(Debug, Clone, Default)]
pub struct EmbeddingMatcher {
    by_first: HashMap<u32, Vec<(Vec<u32>, usize)>>,
    vectors: Vec<usize>,
}

impl EmbeddingMatcher {
    /// `names[i]` = (content ids of embedding i's name, its number of vectors). A name without
    /// tokens is never matched.
    pub fn new(names: Vec<(Vec<u32>, usize)>) -> Self {
        let mut by_first: HashMap<u32, Vec<(Vec<u32>, usize)>> = HashMap::new();
        let mut vectors = Vec::with_capacity(names.len());
        for (i, (ids, n)) in names.into_iter().enumerate() {
            vectors.push(n);
            if let Some(&first) = ids.first() {
                let list = by_first.entry(first).or_default();
                list.push((ids, i));
                list.sort_by_key(|(ids, _)| std::cmp::Reverse(ids.len()));
            }
        }
        Self { by_first, vectors }
    }

    /// `find_embedding_at_position`: the embedding whose name's ids start at `tokens[pos]`, and
    /// the number of tokens the name takes.
    pub fn find(&self, tokens: &[u32], pos: usize) -> Option<(usize, usize)> {
        let candidates = self.by_first.get(tokens.get(pos)?)?;
        candidates
            .iter()
            .find(|(ids, _)| tokens.get(pos..pos + ids.len()) == Some(ids.as_slice()))
            .map(|(ids, i)| (*i, ids.len()))
    }

    /// Number of vectors of embedding `i`.
    pub fn vectors(&self, i: usize) -> usize {
        self.vectors.get(i).copied().unwrap_or(0)
    }

    /// Whether no embedding can match.
    pub fn is_empty(&self) -> bool {
        self.by_first.is_empty()
    }
}

/// Chunking options of [`tokenize_line`].
#[derive(Debug, Clone, Copy)]
pub struct LineOptions {
    /// `,</w>`.
    pub comma_id: u32,
    /// A1111 `opts.comma_padding_backtrack` (20 in `concat`, 0 = off in `blend`).
    pub comma_backtrack: usize,
    /// Id after the first EOS (49407 for CLIP-L, 0 for bigG).
    pub pad_id: u32,
}

/// Port of A1111 `tokenize_line` for already parsed `segments`: each segment is tokenized on its
/// own; a `BREAK` segment pads the current chunk; a full chunk is broken after its last comma when
/// that comma is at most `comma_backtrack` tokens back; an embedding never splits across chunks.
pub fn tokenize_line(
    segments: &[Segment],
    tokenizer: &ClipTokenizer,
    matcher: &EmbeddingMatcher,
    opts: LineOptions,
) -> Result<Vec<WeightedChunk>> {
    let ids = segment_ids(segments, tokenizer)?;
    Ok(tokenize_line_ids(segments, &ids, matcher, opts))
}

/// Each segment's content ids (`BREAK` and empty segments have none).
pub fn segment_ids(segments: &[Segment], tokenizer: &ClipTokenizer) -> Result<Vec<Vec<u32>>> {
    segments
        .iter()
        .map(|seg| {
            if seg.is_break() || seg.text.is_empty() {
                Ok(Vec::new())
            } else {
                tokenizer.content_ids(&seg.text)
            }
        })
        .collect()
}

/// [`tokenize_line`] with the segments already tokenized (`ids[i]` = segment i's content ids).
pub fn tokenize_line_ids(
    segments: &[Segment],
    ids: &[Vec<u32>],
    matcher: &EmbeddingMatcher,
    opts: LineOptions,
) -> Vec<WeightedChunk> {
    let mut chunks = Vec::new();
    let mut tokens: Vec<u32> = Vec::with_capacity(CHUNK_LEN);
    let mut mults: Vec<f64> = Vec::with_capacity(CHUNK_LEN);
    let mut fixes: Vec<EmbeddingFix> = Vec::new();
    let mut last_comma: Option<usize> = None;

    let next_chunk = |chunks: &mut Vec<WeightedChunk>,
                      tokens: &mut Vec<u32>,
                      mults: &mut Vec<f64>,
                      fixes: &mut Vec<EmbeddingFix>,
                      last_comma: &mut Option<usize>| {
        chunks.push(WeightedChunk::finish(
            std::mem::take(tokens),
            std::mem::take(mults),
            std::mem::take(fixes),
            opts.pad_id,
        ));
        *last_comma = None;
    };

    for (seg, ids) in segments.iter().zip(ids) {
        if seg.is_break() {
            next_chunk(
                &mut chunks,
                &mut tokens,
                &mut mults,
                &mut fixes,
                &mut last_comma,
            );
            continue;
        }
        let weight = seg.weight;
        let mut position = 0;
        while position < ids.len() {
            let token = ids[position];
            if token == opts.comma_id {
                last_comma = Some(tokens.len());
            } else if let Some(comma) = last_comma {
                if opts.comma_backtrack != 0
                    && tokens.len() == CHUNK_LEN
                    && tokens.len() - comma <= opts.comma_backtrack
                {
                    let at = comma + 1;
                    let reloc_tokens = tokens.split_off(at);
                    let reloc_mults = mults.split_off(at);
                    // A1111 keeps fixes with the chunk they were recorded in.
                    next_chunk(
                        &mut chunks,
                        &mut tokens,
                        &mut mults,
                        &mut fixes,
                        &mut last_comma,
                    );
                    tokens = reloc_tokens;
                    mults = reloc_mults;
                }
            }
            if tokens.len() == CHUNK_LEN {
                next_chunk(
                    &mut chunks,
                    &mut tokens,
                    &mut mults,
                    &mut fixes,
                    &mut last_comma,
                );
            }
            match matcher.find(ids, position) {
                None => {
                    tokens.push(token);
                    mults.push(weight);
                    position += 1;
                }
                Some((emb, name_len)) => {
                    let n = matcher.vectors(emb);
                    if tokens.len() + n > CHUNK_LEN {
                        next_chunk(
                            &mut chunks,
                            &mut tokens,
                            &mut mults,
                            &mut fixes,
                            &mut last_comma,
                        );
                    }
                    fixes.push(EmbeddingFix {
                        offset: tokens.len(),
                        embedding: emb,
                    });
                    tokens.extend(std::iter::repeat_n(0, n));
                    mults.extend(std::iter::repeat_n(weight, n));
                    position += name_len;
                }
            }
        }
    }
    if !tokens.is_empty() || chunks.is_empty() {
        next_chunk(
            &mut chunks,
            &mut tokens,
            &mut mults,
            &mut fixes,
            &mut last_comma,
        );
    }
    chunks
}
