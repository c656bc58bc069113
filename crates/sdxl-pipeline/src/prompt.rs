//! Prompt encoding modes (SPEC §5). The chunking and encoding logic is being written.

use serde::{Deserialize, Serialize};

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
