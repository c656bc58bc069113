//! Splitting a prompt's content ids into chunks of at most 75 ids (SPEC §5).

use crate::tokenizer::CHUNK_LEN;

/// A1111's `opts.comma_padding_backtrack` default: a full chunk is broken after its last comma
/// when that comma is at most this many tokens back.
pub const COMMA_BACKTRACK: usize = 20;

/// `blend` chunking: consecutive slices of 75 ids (the last may be shorter). No ids ⇒ one empty
/// chunk.
pub fn blend_chunks(ids: &[u32]) -> Vec<Vec<u32>> {
    if ids.is_empty() {
        return vec![Vec::new()];
    }
    ids.chunks(CHUNK_LEN).map(<[u32]>::to_vec).collect()
}

/// `concat` chunking: a port of A1111 `FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line` for
/// one weight-1.0 segment without textual-inversion embeddings (the same port as the reference
/// `prompting.py` `a1111_chunks`). When a chunk is full and the next token is not a comma, the
/// tokens after the chunk's last comma move to the next chunk if that comma is at most
/// [`COMMA_BACKTRACK`] tokens from the end. No ids ⇒ one empty chunk.
pub fn a1111_chunks(ids: &[u32], comma_id: u32) -> Vec<Vec<u32>> {
    let mut chunks = Vec::new();
    let mut chunk: Vec<u32> = Vec::with_capacity(CHUNK_LEN);
    let mut last_comma: Option<usize> = None;
    for &token in ids {
        if token == comma_id {
            last_comma = Some(chunk.len());
        } else if let Some(comma) = last_comma {
            if chunk.len() == CHUNK_LEN && chunk.len() - comma <= COMMA_BACKTRACK {
                let moved = chunk.split_off(comma + 1);
                chunks.push(std::mem::replace(&mut chunk, moved));
                last_comma = None;
            }
        }
        if chunk.len() == CHUNK_LEN {
            chunks.push(std::mem::take(&mut chunk));
            last_comma = None;
        }
        chunk.push(token);
    }
    if !chunk.is_empty() || chunks.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMA: u32 = 267;

    #[test]
    fn blend_splits_every_75() {
        let ids: Vec<u32> = (0..160).collect();
        let c = blend_chunks(&ids);
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), vec![75, 75, 10]);
        assert_eq!(c[1][0], 75);
        assert_eq!(blend_chunks(&[]), vec![Vec::<u32>::new()]);
    }

    #[test]
    fn a1111_backtracks_to_a_near_comma_only() {
        // comma at index 60 (15 from the end of a full chunk) => break after it.
        let mut ids: Vec<u32> = (1000..1100).collect();
        ids[60] = COMMA;
        let c = a1111_chunks(&ids, COMMA);
        assert_eq!(c[0].len(), 61);
        assert_eq!(c[0][60], COMMA);
        assert_eq!(c[1][0], 1061);
        assert_eq!(c.iter().map(Vec::len).sum::<usize>(), 100);
        // comma at index 40 (35 from the end) => plain 75 split.
        let mut ids: Vec<u32> = (1000..1100).collect();
        ids[40] = COMMA;
        let c = a1111_chunks(&ids, COMMA);
        assert_eq!(c[0].len(), 75);
        assert_eq!(a1111_chunks(&[], COMMA), vec![Vec::<u32>::new()]);
    }
}
