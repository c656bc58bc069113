//! CLIP's normalizer + pre-tokenizer for plain ASCII text, without the `tokenizers` pipeline.
//!
//! For text of printable ASCII and whitespace, the embedded tokenizers' NFC step is the identity,
//! `Replace(\s+, " ")` + `Split(pattern, Removed)` drop every whitespace run, `Lowercase` is
//! ASCII lowercasing, and the byte-level map sends every printable ASCII byte to itself. What is
//! left is CLIP's split pattern `'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`,
//! matched here by hand on the lowercased bytes; each word then goes straight to the BPE model.
//! Anything else (non-ASCII, control bytes, `<|`) returns `None` and takes the full pipeline.

/// The contractions of CLIP's pattern, in its alternation order.
const CONTRACTIONS: [&[u8]; 7] = [b"'s", b"'t", b"'re", b"'ve", b"'m", b"'ll", b"'d"];

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// A text lowercased and split into CLIP's pre-tokenized words.
pub(super) struct AsciiWords {
    /// The lowercased bytes.
    pub lower: Vec<u8>,
    /// Byte ranges of the words in `lower`.
    pub words: Vec<(usize, usize)>,
}

/// The words of `text`, or `None` when it is not plain ASCII (printable or whitespace) or holds
/// a special-token opener `<|`.
pub(super) fn ascii_words(text: &str) -> Option<AsciiWords> {
    let bytes = text.as_bytes();
    if bytes
        .iter()
        .any(|&b| !(is_space(b) || (0x20..=0x7e).contains(&b)))
        || text.contains("<|")
    {
        return None;
    }
    let lower: Vec<u8> = bytes.iter().map(u8::to_ascii_lowercase).collect();
    let mut words = Vec::new();
    let mut i = 0;
    while i < lower.len() {
        let b = lower[i];
        let end = if is_space(b) {
            i += 1;
            continue;
        } else if let Some(c) = CONTRACTIONS.iter().find(|c| lower[i..].starts_with(c)) {
            i + c.len()
        } else if b.is_ascii_alphabetic() {
            run_end(&lower, i, |b| b.is_ascii_alphabetic())
        } else if b.is_ascii_digit() {
            i + 1
        } else {
            run_end(&lower, i, |b| !(is_space(b) || b.is_ascii_alphanumeric()))
        };
        words.push((i, end));
        i = end;
    }
    Some(AsciiWords { lower, words })
}

fn run_end(bytes: &[u8], start: usize, keep: impl Fn(u8) -> bool) -> usize {
    bytes[start..]
        .iter()
        .position(|&b| !keep(b))
        .map_or(bytes.len(), |n| start + n)
}

#[cfg(test)]
mod tests {
    use super::ascii_words;

    fn words(text: &str) -> Vec<String> {
        let w = ascii_words(text).unwrap();
        let lower = w.lower;
        w.words
            .iter()
            .map(|&(a, b)| String::from_utf8(lower[a..b].to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn splits_as_clips_pattern() {
        assert_eq!(
            words("It's  a CAT's\tlife"),
            ["it", "'s", "a", "cat", "'s", "life"]
        );
        assert_eq!(
            words("(masterpiece:1.2),"),
            ["(", "masterpiece", ":", "1", ".", "2", "),"]
        );
        assert_eq!(words(".'s x''ll"), [".'", "s", "x", "''", "ll"]);
        assert_eq!(words("we'RE 'd"), ["we", "'re", "'d"]);
        assert!(ascii_words("café").is_none());
        assert!(ascii_words("a <|endoftext|>").is_none());
        assert!(ascii_words("bell\u{7}").is_none());
    }
}
