//! A1111 prompt syntax (SPEC §5a): parse + schedule + tokenize (both tokenizers, A1111
//! `tokenize_line` with emphasis, BREAK and the comma backtrack) of a ~300-token prompt full of
//! syntax. No text encoder runs here.

use criterion::{criterion_group, criterion_main, Criterion};
use sdxl_pipeline::prompt::{
    parse_prompt_attention, prompt_schedule, segment_ids, tokenize_line_ids, EmbeddingMatcher,
    LineOptions, PromptTokenizer, COMMA_BACKTRACK,
};

const PIECES: &[&str] = &[
    "(masterpiece:1.2), ((best quality)), [blurry], an intricate (oil painting:0.9) of a",
    "[sprawling:crowded:0.4] medieval harbor town at (golden hour:1.3), \\(detail\\),",
    "dozens of [wooden|iron] sailing ships with ((patched canvas sails)) BREAK seagulls",
    "circling above [[crooked]] timber houses, merchants selling (fish, spices:1.1), silk and",
];

fn syntax_prompt(tok: &PromptTokenizer, tokens: usize) -> String {
    let mut text = String::new();
    for piece in PIECES.iter().cycle() {
        if tok.clip_l().content_ids(&text).unwrap().len() >= tokens {
            break;
        }
        text.push_str(piece);
        text.push(' ');
    }
    text
}

fn bench_syntax(c: &mut Criterion) {
    let tok = PromptTokenizer::new().unwrap();
    let prompt = syntax_prompt(&tok, 300);
    let matcher = EmbeddingMatcher::default();
    let opts = |pad_id| LineOptions {
        comma_id: tok.comma_id(),
        comma_backtrack: COMMA_BACKTRACK,
        pad_id,
    };
    let (o1, o2) = (
        opts(tok.clip_l().kind().pad_id()),
        opts(tok.clip_g().kind().pad_id()),
    );
    c.bench_function(
        "syntax: parse + schedule + tokenize_line x2, ~300 tokens",
        |b| {
            b.iter(|| {
                let schedule = prompt_schedule(std::hint::black_box(&prompt), 25);
                let mut rows = 0;
                let mut seen: Vec<&str> = Vec::new();
                for e in &schedule {
                    if seen.contains(&e.text.as_str()) {
                        continue;
                    }
                    seen.push(&e.text);
                    let segments = parse_prompt_attention(&e.text).unwrap();
                    let ids = segment_ids(&segments, tok.clip_l()).unwrap();
                    rows += tokenize_line_ids(&segments, &ids, &matcher, o1).len();
                    rows += tokenize_line_ids(&segments, &ids, &matcher, o2).len();
                }
                rows
            })
        },
    );
    c.bench_function("syntax: parse + tokenize_line x2, one schedule text", |b| {
        let text = &prompt_schedule(&prompt, 25)[0].text;
        b.iter(|| {
            let segments = parse_prompt_attention(std::hint::black_box(text)).unwrap();
            // As the prompt encoder does: tokenizer 2's ids equal tokenizer 1's without a `!`.
            let ids = segment_ids(&segments, tok.clip_l()).unwrap();
            tokenize_line_ids(&segments, &ids, &matcher, o1).len()
                + tokenize_line_ids(&segments, &ids, &matcher, o2).len()
        })
    });
}

criterion_group!(benches, bench_syntax);
criterion_main!(benches);
