//! A1111's emphasis modes (`modules/sd_emphasis.py`) and their application to one chunk of
//! encoder hidden states.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::Result;

/// How `(text)` / `[text]` / `(text:w)` weights act (SPEC §5a, A1111 option `emphasis`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Emphasis {
    /// `z' = z·w`, then `z' *= mean(z) / mean(z')` (A1111 "Original", the default).
    #[default]
    Original,
    /// `z' = z·w` without restoring the mean (A1111 "No norm").
    NoNorm,
    /// Syntax parsed (brackets removed, BREAK works), weights ignored (A1111 "Ignore").
    Ignore,
    /// No emphasis parsing at all: brackets and BREAK are literal text (A1111 "None").
    None,
}

impl Emphasis {
    /// Parses a job value (`original`, `no_norm`, `ignore`, `none`) or an A1111 option value
    /// (`Original`, `No norm`, `Ignore`, `None`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "original" | "Original" => Some(Self::Original),
            "no_norm" | "No norm" => Some(Self::NoNorm),
            "ignore" | "Ignore" => Some(Self::Ignore),
            "none" | "None" => Some(Self::None),
            _ => None,
        }
    }

    /// The job-schema name (`original`, `no_norm`, `ignore`, `none`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Original => "original",
            Self::NoNorm => "no_norm",
            Self::Ignore => "ignore",
            Self::None => "none",
        }
    }

    /// A1111's option value, as written in the infotext (`Emphasis: No norm`).
    pub fn a1111_name(self) -> &'static str {
        match self {
            Self::Original => "Original",
            Self::NoNorm => "No norm",
            Self::Ignore => "Ignore",
            Self::None => "None",
        }
    }

    /// Whether the prompt is parsed for emphasis and BREAK.
    pub fn parses(self) -> bool {
        self != Self::None
    }
}

/// Applies `emphasis` to the hidden states `z` `[B,77,C]` of one chunk index for a batch of
/// texts, `w` `[B,77]` their multipliers (f32). `counts[b]` is how many times row b stands in
/// A1111's batch (a schedule text that occurs several times): the means of "Original" are over
/// A1111's whole batch tensor, duplicates included.
pub fn apply(emphasis: Emphasis, z: &Tensor, w: &Tensor, counts: &[usize]) -> Result<Tensor> {
    match emphasis {
        Emphasis::Ignore | Emphasis::None => Ok(z.clone()),
        Emphasis::NoNorm => Ok(weighted(z, w)?),
        Emphasis::Original => {
            let dtype = z.dtype();
            let z32 = z.to_dtype(DType::F32)?;
            let zw = weighted(&z32, w)?;
            let before = z32.sum((1, 2))?.to_vec1::<f32>()?;
            let after = zw.sum((1, 2))?.to_vec1::<f32>()?;
            let (mut s0, mut s1) = (0f64, 0f64);
            for ((&a, &b), &c) in before.iter().zip(&after).zip(counts) {
                s0 += f64::from(a) * c as f64;
                s1 += f64::from(b) * c as f64;
            }
            let n = counts.iter().sum::<usize>().max(1) as f64;
            let numel = (z.elem_count() / counts.len().max(1)) as f64;
            // original_mean / new_mean, each rounded to f32 as torch's means are.
            let mean0 = (s0 / (n * numel)) as f32;
            let mean1 = (s1 / (n * numel)) as f32;
            let scale = mean0 / mean1;
            Ok(zw.affine(f64::from(scale), 0.0)?.to_dtype(dtype)?)
        }
    }
}

/// `z * w[..., None]`.
fn weighted(z: &Tensor, w: &Tensor) -> Result<Tensor> {
    let w = w.to_dtype(z.dtype())?.unsqueeze(2)?;
    Ok(z.broadcast_mul(&w)?)
}

/// A1111's infotext value `Emphasis: <name>`: written when the mode is not "Original" and a
/// schedule text of the prompt or the negative prompt contains `(` or `[` (A1111
/// `sd_hijack_clip` `forward`). `steps` is A1111's `total_steps`.
pub fn infotext_value(
    emphasis: Emphasis,
    prompt: &str,
    negative: Option<&str>,
    steps: usize,
) -> Option<&'static str> {
    if emphasis == Emphasis::Original {
        return None;
    }
    let has_bracket = |text: &str| {
        super::schedule::prompt_schedule(text, steps.max(1))
            .iter()
            .any(|e| e.text.contains('(') || e.text.contains('['))
    };
    (has_bracket(prompt) || negative.is_some_and(has_bracket)).then(|| emphasis.a1111_name())
}
