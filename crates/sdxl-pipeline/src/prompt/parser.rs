//! A1111's emphasis parser: a port of `modules/prompt_parser.py` `parse_prompt_attention`
//! (A1111 1.10), including its `BREAK` splitting and its handling of unbalanced brackets.

use crate::{PipelineError, Result};

/// Weight A1111 gives the `BREAK` marker segment.
pub const BREAK_WEIGHT: f64 = -1.0;

/// One run of prompt text with its emphasis weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// The text (escapes resolved, brackets removed).
    pub text: String,
    /// The product of the enclosing brackets' multipliers (f64, as Python's floats).
    pub weight: f64,
}

impl Segment {
    fn new(text: &str, weight: f64) -> Self {
        Self {
            text: text.to_string(),
            weight,
        }
    }

    /// A1111's test for a chunk break: text `BREAK` with weight exactly -1.
    pub fn is_break(&self) -> bool {
        self.text == "BREAK" && self.weight == BREAK_WEIGHT
    }
}

/// One match of A1111's `re_attention`.
enum Tok<'a> {
    /// `\(`, `\)`, `\[`, `\]`, `\\` or a lone `\` (the text after the backslash).
    Escaped(&'a str),
    Open(char),
    /// `:` + number + `)`: the number's text.
    WeightClose(&'a str),
    /// `)`, `]`, a lone `:` or a run of other characters.
    Text(&'a str),
}

/// The next `re_attention` match at the start of `s` (non-empty) and its byte length.
fn next_tok(s: &str) -> (Tok<'_>, usize) {
    let mut chars = s.chars();
    let c = chars.next().unwrap_or(' ');
    match c {
        '\\' => match chars.next() {
            Some(n @ ('(' | ')' | '[' | ']' | '\\')) => (Tok::Escaped(&s[1..2]), 1 + n.len_utf8()),
            _ => (Tok::Escaped(""), 1),
        },
        '(' | '[' => (Tok::Open(c), 1),
        ':' => match weight_close(s) {
            Some((num, len)) => (Tok::WeightClose(num), len),
            None => (Tok::Text(&s[..1]), 1),
        },
        ')' | ']' => (Tok::Text(&s[..1]), 1),
        _ => {
            let end = s
                .char_indices()
                .find(|&(_, ch)| matches!(ch, '\\' | '(' | ')' | '[' | ']' | ':'))
                .map_or(s.len(), |(i, _)| i);
            (Tok::Text(&s[..end]), end)
        }
    }
}

/// Matches `:\s*([+-]?[.\d]+)\s*\)` at the start of `s`.
fn weight_close(s: &str) -> Option<(&str, usize)> {
    let b = s.as_bytes();
    let mut i = 1;
    i += leading_ws(&s[i..]);
    let start = i;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let digits = i;
    while i < b.len() && (b[i] == b'.' || b[i].is_ascii_digit()) {
        i += 1;
    }
    if i == digits {
        return None;
    }
    let end = i;
    i += leading_ws(&s[i..]);
    (i < b.len() && b[i] == b')').then_some((&s[start..end], i + 1))
}

/// Byte length of the leading whitespace of `s` (Python's `\s`).
fn leading_ws(s: &str) -> usize {
    s.char_indices()
        .find(|&(_, c)| !c.is_whitespace())
        .map_or(s.len(), |(i, _)| i)
}

/// Python's `\w` for one char (Unicode alphanumerics and `_`).
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `re.split(r"\s*\bBREAK\b\s*", text)`.
pub fn split_break(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut last = 0;
    let mut i = 0;
    while i < text.len() {
        if let Some(end) = break_match_at(text, i) {
            parts.push(&text[last..i]);
            last = end;
            i = end;
            continue;
        }
        i += text[i..].chars().next().map_or(1, char::len_utf8);
    }
    parts.push(&text[last..]);
    parts
}

/// End of a `\s*\bBREAK\b\s*` match starting at byte `i`, if any.
fn break_match_at(text: &str, i: usize) -> Option<usize> {
    let j = i + leading_ws(&text[i..]);
    let rest = &text[j..];
    if !rest.starts_with("BREAK") {
        return None;
    }
    if text[..j].chars().next_back().is_some_and(is_word) {
        return None;
    }
    let after = j + 5;
    if text[after..].chars().next().is_some_and(is_word) {
        return None;
    }
    Some(after + leading_ws(&text[after..]))
}

/// A1111 `parse_prompt_attention`: the prompt as segments with weights; `BREAK` becomes a
/// segment [`Segment::is_break`]. Runs of equal weight are merged. A weight that Python's
/// `float` would reject (`(x:1.2.3)`) is an error, as it is in A1111.
pub fn parse_prompt_attention(text: &str) -> Result<Vec<Segment>> {
    let mut res: Vec<Segment> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let round_mult = 1.1;
    let square_mult = 1.0 / 1.1;
    let multiply = |res: &mut Vec<Segment>, start: usize, m: f64| {
        for seg in &mut res[start..] {
            seg.weight *= m;
        }
    };
    let mut pos = 0;
    while pos < text.len() {
        let (tok, len) = next_tok(&text[pos..]);
        pos += len;
        match tok {
            Tok::Escaped(t) => res.push(Segment::new(t, 1.0)),
            Tok::Open('(') => round.push(res.len()),
            Tok::Open(_) => square.push(res.len()),
            Tok::WeightClose(num) if !round.is_empty() => {
                let w: f64 = num.parse().map_err(|_| {
                    PipelineError::InvalidInput(format!(
                        "prompt: `{num}` in `(...:{num})` is not a number"
                    ))
                })?;
                let start = round.pop().unwrap_or(0);
                multiply(&mut res, start, w);
            }
            Tok::Text(")") if !round.is_empty() => {
                let start = round.pop().unwrap_or(0);
                multiply(&mut res, start, round_mult);
            }
            Tok::Text("]") if !square.is_empty() => {
                let start = square.pop().unwrap_or(0);
                multiply(&mut res, start, square_mult);
            }
            Tok::WeightClose(_) | Tok::Text(_) => {
                let t = &text[pos - len..pos];
                for (i, part) in split_break(t).into_iter().enumerate() {
                    if i > 0 {
                        res.push(Segment::new("BREAK", BREAK_WEIGHT));
                    }
                    res.push(Segment::new(part, 1.0));
                }
            }
        }
    }
    for start in round {
        multiply(&mut res, start, round_mult);
    }
    for start in square {
        multiply(&mut res, start, square_mult);
    }
    if res.is_empty() {
        res.push(Segment::new("", 1.0));
    }
    let mut i = 0;
    while i + 1 < res.len() {
        if res[i].weight == res[i + 1].weight {
            let next = res.remove(i + 1);
            res[i].text.push_str(&next.text);
        } else {
            i += 1;
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Vec<(String, f64)> {
        parse_prompt_attention(text)
            .unwrap()
            .into_iter()
            .map(|s| (s.text, s.weight))
            .collect()
    }

    fn v(items: &[(&str, f64)]) -> Vec<(String, f64)> {
        items.iter().map(|&(t, w)| (t.to_string(), w)).collect()
    }

    /// The doctests of A1111 1.10 `parse_prompt_attention` (weights compared exactly: the
    /// products are computed in the same order as Python's).
    #[test]
    fn a1111_doctests() {
        assert_eq!(p("normal text"), v(&[("normal text", 1.0)]));
        assert_eq!(
            p("an (important) word"),
            v(&[("an ", 1.0), ("important", 1.1), (" word", 1.0)])
        );
        assert_eq!(p("(unbalanced"), v(&[("unbalanced", 1.1)]));
        assert_eq!(p("\\(literal\\]"), v(&[("(literal]", 1.0)]));
        assert_eq!(p("(unnecessary)(parens)"), v(&[("unnecessaryparens", 1.1)]));
        assert_eq!(
            p("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."),
            v(&[
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ])
        );
    }

    #[test]
    fn break_and_edge_cases() {
        assert_eq!(
            p("a BREAK b"),
            v(&[("a", 1.0), ("BREAK", -1.0), ("b", 1.0)])
        );
        // BREAK needs word boundaries; lowercase is text.
        assert_eq!(p("aBREAK break"), v(&[("aBREAK break", 1.0)]));
        assert_eq!(
            p("a  BREAK\nBREAK b"),
            v(&[
                ("a", 1.0),
                ("BREAK", -1.0),
                ("", 1.0),
                ("BREAK", -1.0),
                ("b", 1.0)
            ])
        );
        assert_eq!(p(""), v(&[("", 1.0)]));
        assert_eq!(p("(a: 1.5 )"), v(&[("a", 1.5)]));
        assert_eq!(p("a:1.5)"), v(&[("a:1.5)", 1.0)]));
        assert_eq!(p("\\x \\"), v(&[("x ", 1.0)]));
        assert_eq!(
            p("<lora:x:0.5> (y)"),
            v(&[("<lora:x:0.5> ", 1.0), ("y", 1.1)])
        );
        assert!(parse_prompt_attention("(a:1.2.3)").is_err());
        assert_eq!(p("[a]"), v(&[("a", 1.0 / 1.1)]));
    }
}
