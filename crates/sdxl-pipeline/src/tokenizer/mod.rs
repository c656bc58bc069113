//! The two CLIP BPE tokenizers of SDXL, embedded in the binary (no Hub, no files at run time).
//!
//! Both share one vocabulary; they differ only in the padding token, exactly as in diffusers:
//! tokenizer 1 (CLIP ViT-L) pads with `<|endoftext|>` (49407), tokenizer 2 (OpenCLIP bigG) with
//! `!` (id 0). Because `!` is a *special* token of tokenizer 2, every `!` in a prompt becomes its
//! own id 0 there (diffusers issue #4153); we keep that quirk, since HF ids are what diffusers feeds
//! the encoders.

mod ascii_words;

use std::sync::OnceLock;

use tokenizers::{Model, Tokenizer};

use crate::{PipelineError, Result};

/// Id of `<|startoftext|>`.
pub const BOS_ID: u32 = 49406;
/// Id of `<|endoftext|>` (also the largest id of the vocabulary).
pub const EOS_ID: u32 = 49407;
/// Length of one encoder input sequence (BOS + 75 content tokens + EOS).
pub const SEQ_LEN: usize = 77;
/// Content tokens that fit in one sequence between BOS and EOS.
pub const CHUNK_LEN: usize = SEQ_LEN - 2;

const CLIP_L_JSON: &[u8] = include_bytes!("../../assets/tokenizer/tokenizer.json");
const CLIP_G_JSON: &[u8] = include_bytes!("../../assets/tokenizer_2/tokenizer.json");

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

/// The byte-level pre-tokenizer step as stored in the embedded files, and the same step without
/// its GPT-2 regex (see [`ClipTokenizer`]).
const BYTE_LEVEL_WITH_REGEX: &str =
    r#""ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}]"#;
const BYTE_LEVEL_WITHOUT_REGEX: &str =
    r#""ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]"#;

/// One CLIP tokenizer with SDXL's padding rule.
///
/// Speed: the pre-tokenizer first splits the normalized text with CLIP's regex into runs of one
/// class (letters, one digit, other symbols, or an English contraction), then the byte-level step
/// re-splits each run with GPT-2's regex, which finds the whole run again. That second regex
/// (fancy-regex, with a look-ahead) costs about a third of the time, so texts are tokenized by a
/// copy without it. The only runs it would split are the literal special-token strings, so a text
/// containing `<|` goes through the unmodified tokenizer, built on first use (a test compares both
/// on many prompts).
#[derive(Clone)]
pub struct ClipTokenizer {
    kind: TokenizerKind,
    /// The tokenizer without the redundant regex, or the unmodified one if it could not be made.
    primary: Tokenizer,
    primary_is_exact: bool,
    exact: OnceLock<Tokenizer>,
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
        let json = Self::json(kind);
        let fast = match std::str::from_utf8(json) {
            Ok(text) if text.matches(BYTE_LEVEL_WITH_REGEX).count() == 1 => Some(load(
                kind,
                text.replace(BYTE_LEVEL_WITH_REGEX, BYTE_LEVEL_WITHOUT_REGEX)
                    .as_bytes(),
            )?),
            _ => None,
        };
        let primary_is_exact = fast.is_none();
        let primary = match fast {
            Some(t) => t,
            None => load(kind, json)?,
        };
        Ok(Self {
            kind,
            primary,
            primary_is_exact,
            exact: OnceLock::new(),
        })
    }

    fn json(kind: TokenizerKind) -> &'static [u8] {
        match kind {
            TokenizerKind::ClipL => CLIP_L_JSON,
            TokenizerKind::ClipG => CLIP_G_JSON,
        }
    }

    /// The unmodified HF tokenizer.
    fn exact(&self) -> Result<&Tokenizer> {
        if self.primary_is_exact {
            return Ok(&self.primary);
        }
        if let Some(t) = self.exact.get() {
            return Ok(t);
        }
        let _ = self.exact.set(load(self.kind, Self::json(self.kind))?);
        self.exact
            .get()
            .ok_or_else(|| PipelineError::Tokenizer("tokenizer not initialised".into()))
    }

    /// Token ids of the whole text through the unmodified HF tokenizer (slower; see the type).
    pub fn content_ids_exact(&self, text: &str) -> Result<Vec<u32>> {
        encode_with(self.exact()?, text)
    }

    /// Which tokenizer this is.
    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// The id of a vocabulary token such as `",</w>"`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.primary.token_to_id(token)
    }

    /// Token ids of the whole text without BOS/EOS and without truncation.
    pub fn content_ids(&self, text: &str) -> Result<Vec<u32>> {
        if let Some(ids) = self.ascii_content_ids(text)? {
            return Ok(ids);
        }
        if text.contains("<|") {
            self.content_ids_exact(text)
        } else {
            encode_with(&self.primary, text)
        }
    }

    /// Plain ASCII text: CLIP's split done by hand and each word through the BPE model alone
    /// (see [`ascii_words`]); `None` for other text, and for tokenizer 2's special `!`.
    fn ascii_content_ids(&self, text: &str) -> Result<Option<Vec<u32>>> {
        if self.kind == TokenizerKind::ClipG && text.contains('!') {
            return Ok(None);
        }
        let Some(ascii_words::AsciiWords { lower, words }) = ascii_words::ascii_words(text) else {
            return Ok(None);
        };
        let model = self.primary.get_model();
        let mut ids = Vec::with_capacity(words.len() + words.len() / 2);
        for (start, end) in words {
            // The bytes are ASCII, so every range is valid UTF-8.
            let word = std::str::from_utf8(&lower[start..end])
                .map_err(|e| PipelineError::Tokenizer(e.to_string()))?;
            let tokens = model
                .tokenize(word)
                .map_err(|e| PipelineError::Tokenizer(e.to_string()))?;
            ids.extend(tokens.iter().map(|t| t.id));
        }
        Ok(Some(ids))
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

fn load(kind: TokenizerKind, json: &[u8]) -> Result<Tokenizer> {
    Tokenizer::from_bytes(json)
        .map_err(|e| PipelineError::Tokenizer(format!("loading {kind:?}: {e}")))
}

fn encode_with(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let enc = tokenizer
        .encode_fast(text, false)
        .map_err(|e| PipelineError::Tokenizer(e.to_string()))?;
    Ok(enc.get_ids().to_vec())
}
