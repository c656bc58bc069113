//! Token ids of both embedded tokenizers vs the HF tokenizers (expected/token_ids.safetensors).

mod text_support;

use sdxl_pipeline::tokenizer::{ClipTokenizer, TokenizerKind, BOS_ID, EOS_ID, SEQ_LEN};
use text_support::{id_rows, load, token_id_prompts};

fn check_all(kind: TokenizerKind, key: &str) {
    let tok = ClipTokenizer::new(kind).unwrap();
    let expected = load("expected/token_ids.safetensors");
    let want = id_rows(&expected[key]);
    let untruncated = expected["untruncated_length"].to_vec1::<i64>().unwrap();
    let prompts = token_id_prompts();
    assert_eq!(prompts.len(), 15);
    for (i, prompt) in prompts.iter().enumerate() {
        assert_eq!(
            tok.encode_padded(prompt).unwrap(),
            want[i],
            "{key} row {i}: {prompt:?}"
        );
        if kind == TokenizerKind::ClipL {
            let n = tok.content_ids(prompt).unwrap().len() as i64;
            assert_eq!(n + 2, untruncated[i], "untruncated length row {i}");
        }
    }
}

#[test]
fn clip_l_ids_match_hf_tokenizer() {
    check_all(TokenizerKind::ClipL, "tokenizer.input_ids");
}

#[test]
fn clip_g_ids_match_hf_tokenizer_2_including_the_bang_quirk() {
    check_all(TokenizerKind::ClipG, "tokenizer_2.input_ids");
    // every `!` is its own pad-token id 0 for tokenizer 2, not for tokenizer 1
    let g = ClipTokenizer::new(TokenizerKind::ClipG).unwrap();
    let l = ClipTokenizer::new(TokenizerKind::ClipL).unwrap();
    assert_eq!(g.content_ids("night!!!").unwrap().len(), 4);
    assert_eq!(l.content_ids("night!!!").unwrap().len(), 2);
}

#[test]
fn wrap_chunk_pads_per_tokenizer_and_cuts_at_75() {
    let l = ClipTokenizer::new(TokenizerKind::ClipL).unwrap();
    let g = ClipTokenizer::new(TokenizerKind::ClipG).unwrap();
    let row = l.wrap_chunk(&[5, 6]);
    assert_eq!(row.len(), SEQ_LEN);
    assert_eq!(&row[..4], &[BOS_ID, 5, 6, EOS_ID]);
    assert!(row[4..].iter().all(|&t| t == EOS_ID));
    let row = g.wrap_chunk(&[5, 6]);
    assert_eq!(&row[..4], &[BOS_ID, 5, 6, EOS_ID]);
    assert!(row[4..].iter().all(|&t| t == 0));
    let long: Vec<u32> = (1..=100).collect();
    let row = l.wrap_chunk(&long);
    assert_eq!(row.len(), SEQ_LEN);
    assert_eq!(row[75], 75);
    assert_eq!(row[76], EOS_ID);
    assert_eq!(
        g.wrap_chunk(&[]),
        [vec![BOS_ID, EOS_ID], vec![0; 75]].concat()
    );
}

#[test]
fn fast_path_equals_the_unmodified_hf_tokenizer() {
    let mut texts = token_id_prompts();
    texts.extend(
        [
            "it's 'quoted' o'clock, they'll we'd I'M ''s '''",
            "x.'s --- ... ?!? ¿qué? «guillemets» 1,000.50 $5 100%",
            "combining e\u{301} and precomposed é, Ǆ ǅ ǆ, ΣΑΣ, İstanbul",
            "tabs\tand\r\nnewlines \u{00a0}nbsp \u{2003}em-space",
            "<|endoftext|> <|ENDOFTEXT|> <|startoftext|>x <| |> <||>",
            "emoji 👩‍👩‍👧 🏳️‍🌈 ✨ 日本語 한국어 العربية हिन्दी",
            "snake_case kebab-case CamelCase a/b\\c @user #tag",
        ]
        .map(String::from),
    );
    for kind in [TokenizerKind::ClipL, TokenizerKind::ClipG] {
        let tok = ClipTokenizer::new(kind).unwrap();
        for text in &texts {
            assert_eq!(
                tok.content_ids(text).unwrap(),
                tok.content_ids_exact(text).unwrap(),
                "{kind:?}: {text:?}"
            );
            // the fast path is really taken for texts without `<|`: check it on a variant
            let no_guard = text.replace("<|", "< |");
            assert_eq!(
                tok.content_ids(&no_guard).unwrap(),
                tok.content_ids_exact(&no_guard).unwrap(),
                "{kind:?}: {no_guard:?}"
            );
        }
    }
}

/// The hand-written ASCII path (CLIP's split pattern by hand, words straight to the BPE model)
/// against the unmodified HF tokenizer on syntax-heavy prompts and random ASCII strings.
#[test]
fn ascii_word_path_equals_the_unmodified_hf_tokenizer() {
    let mut texts: Vec<String> = [
        "It'S A CAT'S LIFE, WE'RE 'VE 'LL 'D 'M 'X ''S '''LL",
        "x.'s y''ll 12345 3.14 a1b2c3 ___ -- ~`^ {}|[]",
        "\u{b}\u{c} vertical\u{b}tab and form\u{c}feed   \t\t spaces",
        "(masterpiece:1.2), ((best quality)), [blurry] \\(x\\) BREAK [a|b] [x:y:0.5]",
        "<lora:detail_tweaker:0.8> <hypernet:x:1> embedding:neg_v1 night!!! wow!?",
    ]
    .map(String::from)
    .to_vec();
    // A fixed-seed LCG over a charset of letters (both cases), digits, punctuation, apostrophes
    // and whitespace, so runs, contractions and their near misses all occur.
    let charset: Vec<char> = "aAbBsStTdDlLmMrReEvV019'''.,:;!?()[]{}<>|\\/-_ \t\n"
        .chars()
        .collect();
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..400 {
        let mut s = String::new();
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = 1 + (state >> 58) as usize;
        for _ in 0..len {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s.push(charset[(state >> 33) as usize % charset.len()]);
        }
        texts.push(s);
    }
    for kind in [TokenizerKind::ClipL, TokenizerKind::ClipG] {
        let tok = ClipTokenizer::new(kind).unwrap();
        for text in &texts {
            assert_eq!(
                tok.content_ids(text).unwrap(),
                tok.content_ids_exact(text).unwrap(),
                "{kind:?}: {text:?}"
            );
        }
    }
}
