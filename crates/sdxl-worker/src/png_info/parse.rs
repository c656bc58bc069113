//! A port of A1111 1.10's `parse_generation_parameters` (`modules/infotext_utils.py`): an
//! infotext (`prompt`, `Negative prompt: ...`, one line of `key: value` pairs) into the
//! `parameters` object of `/sdapi/v1/png-info`, with A1111's defaults for absent keys.
//!
//! Settings A1111 reads here are taken at their defaults: no prompt styles
//! (`infotext_styles` finds none), `use_old_hires_fix_width_height` off, `auto_backcompat` on,
//! `infotext_skip_pasting` empty.

use serde_json::{json, Map, Value};

/// Parses an infotext as A1111 does.
pub fn parse_generation_parameters(text: &str) -> Map<String, Value> {
    let mut res = Map::new();
    let trimmed = py_strip(text);
    let mut lines: Vec<&str> = trimmed.split('\n').collect();
    let mut lastline = lines.pop().unwrap_or_default();
    if find_params(lastline).len() < 3 {
        lines.push(lastline);
        lastline = "";
    }
    let (mut prompt, mut negative) = (String::new(), String::new());
    let mut done_with_prompt = false;
    for line in lines {
        let mut line = py_strip(line);
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            done_with_prompt = true;
            line = py_strip(rest);
        }
        let target = if done_with_prompt {
            &mut negative
        } else {
            &mut prompt
        };
        if !target.is_empty() {
            target.push('\n');
        }
        target.push_str(line);
    }
    for (k, v) in find_params(lastline) {
        // A1111 indexes v[0]: an empty value raises and the pair is skipped.
        if v.is_empty() {
            continue;
        }
        let v = if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
            unquote(v)
        } else {
            v.to_string()
        };
        match image_size(&v) {
            Some((w, h)) => {
                res.insert(format!("{k}-1"), json!(w));
                res.insert(format!("{k}-2"), json!(h));
            }
            None => {
                res.insert(k.to_string(), json!(v));
            }
        }
    }
    res.insert("Prompt".into(), json!(prompt));
    res.insert("Negative prompt".into(), json!(negative));
    res.entry("Clip skip").or_insert(json!("1"));
    if let Some(hypernet) = res
        .get("Hypernet")
        .and_then(Value::as_str)
        .map(str::to_string)
    {
        let strength = res
            .get("Hypernet strength")
            .and_then(Value::as_str)
            .unwrap_or("1.0")
            .to_string();
        let p = format!("{prompt}<hypernet:{hypernet}:{strength}>");
        res.insert("Prompt".into(), json!(p));
    }
    if !res.contains_key("Hires resize-1") {
        res.insert("Hires resize-1".into(), json!(0));
        res.insert("Hires resize-2".into(), json!(0));
    }
    let defaults: [(&str, Value); 9] = [
        ("Hires sampler", json!("Use same sampler")),
        ("Hires schedule type", json!("Use same scheduler")),
        ("Hires checkpoint", json!("Use same checkpoint")),
        ("Hires prompt", json!("")),
        ("Hires negative prompt", json!("")),
        ("Mask mode", json!("Inpaint masked")),
        ("Masked content", json!("original")),
        ("Inpaint area", json!("Whole picture")),
        ("Masked area padding", json!(32)),
    ];
    for (k, v) in defaults {
        res.entry(k).or_insert(v);
    }
    restore_old_hires_fix_params(&mut res);
    let defaults: [(&str, Value); 8] = [
        ("RNG", json!("GPU")),
        ("Schedule type", json!("Automatic")),
        ("Schedule max sigma", json!(0)),
        ("Schedule min sigma", json!(0)),
        ("Schedule rho", json!(0)),
        ("VAE Encoder", json!("Full")),
        ("VAE Decoder", json!("Full")),
        ("FP8 weight", json!("Disable")),
    ];
    for (k, v) in defaults {
        res.entry(k).or_insert(v);
    }
    if !res.contains_key("Cache FP16 weight for LoRA")
        && res.get("FP8 weight") != Some(&json!("Disable"))
    {
        res.insert("Cache FP16 weight for LoRA".into(), json!(false));
    }
    if !res.contains_key("Emphasis") && (uses_emphasis(&prompt) || uses_emphasis(&negative)) {
        res.insert("Emphasis".into(), json!("Original"));
    }
    res.entry("Refiner switch by sampling steps")
        .or_insert(json!(false));
    backcompat(&mut res);
    res
}

/// Python's `str.strip()` (Unicode whitespace).
fn py_strip(s: &str) -> &str {
    s.trim_matches(char::is_whitespace)
}

/// Python 3 `\w`: Unicode letters, digits and `_` (alphanumeric covers Python's `isalnum`).
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `re_param.findall(line)` with A1111's
/// `\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)`.
fn find_params(line: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < line.len() {
        match param_at(line, pos) {
            Some((k, v, end)) => {
                out.push((k, v));
                pos = end;
            }
            None => {
                pos += line[pos..].chars().next().map_or(1, char::len_utf8);
            }
        }
    }
    out
}

/// One match of the pattern starting exactly at `start`: (key, value, end).
fn param_at(line: &str, start: usize) -> Option<(&str, &str, usize)> {
    let rest = &line[start..];
    let ws = rest.len() - rest.trim_start_matches(char::is_whitespace).len();
    let key_start = start + ws;
    let mut chars = line[key_start..].char_indices();
    let (_, first) = chars.next()?;
    if !is_word(first) {
        return None;
    }
    // Greedy `[\w \-/]+` (at least one) and then `:`.
    let mut key_end = key_start + first.len_utf8();
    let mut run = 0;
    for (i, c) in chars {
        if is_word(c) || c == ' ' || c == '-' || c == '/' {
            run += 1;
            key_end = key_start + i + c.len_utf8();
        } else {
            break;
        }
    }
    if run == 0 || !line[key_end..].starts_with(':') {
        return None;
    }
    let key = &line[key_start..key_end];
    let after = &line[key_end + 1..];
    let ws = after.len() - after.trim_start_matches(char::is_whitespace).len();
    let v_start = key_end + 1 + ws;
    let value_part = &line[v_start..];
    if let Some(len) = quoted_len(value_part) {
        let end = v_start + len;
        let tail = &line[end..];
        if tail.is_empty() {
            return Some((key, &line[v_start..end], end));
        }
        if tail.starts_with(',') {
            return Some((key, &line[v_start..end], end + 1));
        }
    }
    let len = value_part.find(',').unwrap_or(value_part.len());
    let end = v_start + len;
    let next = if end < line.len() { end + 1 } else { end };
    Some((key, &line[v_start..end], next))
}

/// Length of `"(?:\\.|[^\\"])+"` at the start of `s`, if it matches.
fn quoted_len(s: &str) -> Option<usize> {
    let mut it = s.char_indices();
    if it.next()?.1 != '"' {
        return None;
    }
    let mut items = 0;
    while let Some((i, c)) = it.next() {
        match c {
            '"' => return (items > 0).then_some(i + 1),
            '\\' => match it.next() {
                // `.` does not match a newline (none in the last line anyway).
                Some((_, n)) if n != '\n' => items += 1,
                _ => return None,
            },
            _ => items += 1,
        }
    }
    None
}

/// A1111 `unquote`: `json.loads` of a quoted value, or the text unchanged when that fails.
fn unquote(v: &str) -> String {
    match serde_json::from_str::<Value>(v) {
        Ok(Value::String(s)) => s,
        _ => v.to_string(),
    }
}

/// `^(\d+)x(\d+)$` (Python's `$` also matches before one trailing newline).
fn image_size(v: &str) -> Option<(String, String)> {
    let v = v.strip_suffix('\n').unwrap_or(v);
    let (w, h) = v.split_once('x')?;
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    (digits(w) && digits(h)).then(|| (w.to_string(), h.to_string()))
}

/// Python `int(str)` for the values `restore_old_hires_fix_params` reads.
fn py_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().replace('_', "").parse().ok(),
        _ => None,
    }
}

/// A1111 `restore_old_hires_fix_params` with `use_old_hires_fix_width_height` off.
fn restore_old_hires_fix_params(res: &mut Map<String, Value>) {
    let (Some(fw), Some(fh)) = (res.get("First pass size-1"), res.get("First pass size-2")) else {
        return;
    };
    let (Some(mut fw), Some(mut fh)) = (py_int(fw), py_int(fh)) else {
        return; // A1111 raises here; the pair is left as parsed
    };
    let width = res.get("Size-1").map_or(Some(512), py_int);
    let height = res.get("Size-2").map_or(Some(512), py_int);
    let (Some(width), Some(height)) = (width, height) else {
        return;
    };
    if fw == 0 || fh == 0 {
        (fw, fh) = old_hires_fix_first_pass_dimensions(width, height);
    }
    res.insert("Size-1".into(), json!(fw));
    res.insert("Size-2".into(), json!(fh));
    res.insert("Hires resize-1".into(), json!(width));
    res.insert("Hires resize-2".into(), json!(height));
}

/// A1111 `processing.old_hires_fix_first_pass_dimensions`.
fn old_hires_fix_first_pass_dimensions(width: i64, height: i64) -> (i64, i64) {
    let actual = (width * height) as f64;
    if actual <= 0.0 {
        return (width, height); // A1111 divides by zero here
    }
    let scale = (512.0 * 512.0 / actual).sqrt();
    let w = (scale * width as f64 / 64.0).ceil() as i64 * 64;
    let h = (scale * height as f64 / 64.0).ceil() as i64 * 64;
    (w, h)
}

/// True when A1111's `parse_prompt_attention` gives some segment (not `BREAK`) a weight ≠ 1.
fn uses_emphasis(text: &str) -> bool {
    let mut segs: Vec<(bool, f64)> = Vec::new(); // (is the BREAK marker, weight)
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let mul = |segs: &mut Vec<(bool, f64)>, from: usize, m: f64| {
        for s in segs.iter_mut().skip(from) {
            s.1 *= m;
        }
    };
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' {
            // `\(` `\)` `\[` `\]` `\\` or a lone `\`: literal text.
            let n = match b.get(i + 1) {
                Some(b'(' | b')' | b'[' | b']' | b'\\') => 2,
                _ => 1,
            };
            segs.push((false, 1.0));
            i += n;
        } else if c == b'(' {
            round.push(segs.len());
            i += 1;
        } else if c == b'[' {
            square.push(segs.len());
            i += 1;
        } else if c == b':' {
            // `:\s*([+-]?[.\d]+)\s*\)` or a lone `:` (plain text).
            match weight_close(&text[i + 1..]) {
                Some((len, w)) => {
                    if let Some(p) = round.pop() {
                        mul(&mut segs, p, w.unwrap_or(1.0));
                    } else {
                        segs.push((false, 1.0));
                    }
                    i += 1 + len;
                }
                None => {
                    segs.push((false, 1.0));
                    i += 1;
                }
            }
        } else if c == b')' {
            match round.pop() {
                Some(p) => mul(&mut segs, p, 1.1),
                None => segs.push((false, 1.0)),
            }
            i += 1;
        } else if c == b']' {
            match square.pop() {
                Some(p) => mul(&mut segs, p, 1.0 / 1.1),
                None => segs.push((false, 1.0)),
            }
            i += 1;
        } else {
            let end = text[i..]
                .find(['\\', '(', ')', '[', ']', ':'])
                .map_or(text.len(), |e| i + e);
            let breaks = count_breaks(&text[i..end]);
            for k in 0..=breaks {
                if k > 0 {
                    segs.push((true, -1.0));
                }
                segs.push((false, 1.0));
            }
            i = end;
        }
    }
    for p in round {
        mul(&mut segs, p, 1.1);
    }
    for p in square {
        mul(&mut segs, p, 1.0 / 1.1);
    }
    segs.iter().any(|(is_break, w)| !is_break && *w != 1.0)
}

/// `:\s*([+-]?[.\d]+)\s*\)` after the `:`: (bytes consumed, the weight if Python's `float`
/// accepts it).
fn weight_close(s: &str) -> Option<(usize, Option<f64>)> {
    let t = s.trim_start_matches(char::is_whitespace);
    let mut len = s.len() - t.len();
    let sign = usize::from(t.starts_with(['+', '-']));
    let num_len = t[sign..]
        .find(|c: char| c != '.' && !c.is_ascii_digit())
        .unwrap_or(t.len() - sign);
    if num_len == 0 {
        return None;
    }
    let number = &t[..sign + num_len];
    len += sign + num_len;
    let after = &s[len..];
    let t2 = after.trim_start_matches(char::is_whitespace);
    if !t2.starts_with(')') {
        return None;
    }
    len += after.len() - t2.len() + 1;
    Some((len, number.parse::<f64>().ok()))
}

/// How many `\s*\bBREAK\b\s*` separators split `text` (A1111 `re_break`).
fn count_breaks(text: &str) -> usize {
    let mut n = 0;
    let mut from = 0;
    while let Some(p) = text[from..].find("BREAK") {
        let at = from + p;
        let before = text[..at].chars().next_back();
        let after = text[at + 5..].chars().next();
        if !before.is_some_and(is_word) && !after.is_some_and(is_word) {
            n += 1;
        }
        from = at + 5;
    }
    n
}

/// A1111 `infotext_versions.backcompat` (with `auto_backcompat` on).
fn backcompat(res: &mut Map<String, Value>) {
    let Some(ver) = res
        .get("Version")
        .and_then(Value::as_str)
        .and_then(parse_version)
    else {
        return;
    };
    let v160 = Version::release(&[1, 6, 0]);
    let v170_tsnr = Version {
        post: Some(225),
        ..Version::release(&[1, 7, 0])
    };
    let v180 = Version::release(&[1, 8, 0]);
    let prompt = res.get("Prompt").and_then(Value::as_str).unwrap_or("");
    if ver < v160 && prompt.contains('[') {
        res.insert("Old prompt editing timelines".into(), json!(true));
    }
    let sampler = res.get("Sampler").and_then(Value::as_str).unwrap_or("");
    if ver < v160 && (sampler == "DDIM" || sampler == "PLMS") {
        res.insert("Pad conds v0".into(), json!(true));
    }
    if ver < v170_tsnr {
        res.insert("Downcast alphas_cumprod".into(), json!(true));
    }
    let refiner = res
        .get("Refiner")
        .is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty()));
    if ver < v180 && refiner {
        res.insert("Refiner switch by sampling steps".into(), json!(true));
    }
}

/// The subset of PEP 440 versions A1111 writes (`v1.10.1`, `v1.6.0-2-g4afaaf8a`, `1.8.0-RC`):
/// release numbers, an optional pre-release and an optional post-release.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    release: Vec<u64>,
    /// (kind 0 = a, 1 = b, 2 = rc, number)
    pre: Option<(u8, u64)>,
    post: Option<u64>,
}

impl Version {
    fn release(r: &[u64]) -> Self {
        Self {
            release: r.to_vec(),
            pre: None,
            post: None,
        }
    }

    fn key(&self) -> (Vec<u64>, (u8, u8, u64), (u8, u64)) {
        let mut release = self.release.clone();
        while release.len() > 1 && release.last() == Some(&0) {
            release.pop();
        }
        // A release with neither pre nor post sorts after its pre-releases.
        let pre = match self.pre {
            Some((k, n)) => (0, k, n),
            None => (1, 0, 0),
        };
        let post = self.post.map_or((0, 0), |n| (1, n));
        (release, pre, post)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// A1111 `infotext_versions.parse_version`: keeps `X-Y` of `X-Y-...`, then parses it as a
/// version (`None` when it is not one, e.g. `sdxl-worker 0.1.0`).
fn parse_version(text: &str) -> Option<Version> {
    let mut parts = text.splitn(3, '-');
    let text = match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), Some(_)) if !a.is_empty() && !b.is_empty() => {
            &text[..a.len() + 1 + b.len()]
        }
        _ => text,
    };
    let s = text.trim().to_ascii_lowercase();
    let s = s.strip_prefix('v').unwrap_or(&s);
    let rel_len = s
        .find(|c: char| c != '.' && !c.is_ascii_digit())
        .unwrap_or(s.len());
    let release: Vec<u64> = s[..rel_len]
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let mut rest = &s[rel_len..];
    let mut v = Version::release(&release);
    // Pre-release: [-_.]?(a|b|c|rc|alpha|beta|pre|preview)[-_.]?N?
    let sep = |r: &str| r.strip_prefix(['-', '_', '.']).unwrap_or(r).to_string();
    let after_sep = sep(rest);
    for (word, kind) in [
        ("alpha", 0),
        ("beta", 1),
        ("preview", 2),
        ("pre", 2),
        ("rc", 2),
        ("a", 0),
        ("b", 1),
        ("c", 2),
    ] {
        if let Some(r) = after_sep.strip_prefix(word) {
            let r = sep(r);
            let n_len = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            let n = if n_len == 0 {
                0
            } else {
                r[..n_len].parse().ok()?
            };
            v.pre = Some((kind, n));
            let consumed = s.len() - rel_len - (r.len() - n_len);
            rest = &s[rel_len + consumed..];
            break;
        }
    }
    // Post-release: -N, or [-_.]?(post|rev|r)[-_.]?N?
    if let Some(n) = rest
        .strip_prefix('-')
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    {
        v.post = Some(n.parse().ok()?);
        rest = "";
    } else {
        let r = sep(rest);
        for word in ["post", "rev", "r"] {
            if let Some(r) = r.strip_prefix(word) {
                let r = sep(r);
                if r.chars().all(|c| c.is_ascii_digit()) {
                    v.post = Some(if r.is_empty() { 0 } else { r.parse().ok()? });
                    rest = "";
                }
                break;
            }
        }
    }
    rest.is_empty().then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docstring_example() {
        let text = "girl with an artist's beret, ((eyeshadow)), (coquettish)\nNegative prompt: ugly, \
                    fat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b";
        let p = parse_generation_parameters(text);
        assert_eq!(
            p["Prompt"],
            "girl with an artist's beret, ((eyeshadow)), (coquettish)"
        );
        assert_eq!(p["Negative prompt"], "ugly, fat");
        assert_eq!(p["Steps"], "20");
        assert_eq!(p["Size-1"], "512");
        assert_eq!(p["Size-2"], "512");
        assert_eq!(p["Model hash"], "45dee52b");
        assert_eq!(p["Clip skip"], "1");
        assert_eq!(p["Emphasis"], "Original");
        assert_eq!(p["Hires resize-1"], 0);
        assert_eq!(p["Masked area padding"], 32);
    }

    #[test]
    fn quoted_values_and_short_last_lines() {
        let p = parse_generation_parameters(
            "p\nSteps: 4, Lora hashes: \"a: 1, b: 2\", Sampler: Euler, Empty: , XY: \"\", Z: 1",
        );
        assert_eq!(p["Lora hashes"], "a: 1, b: 2");
        assert!(p.get("Empty").is_none(), "empty values are skipped");
        assert_eq!(p["XY"], "", "a quoted empty value unquotes to empty");
        assert!(
            p.get("Z").is_none(),
            "one-character keys do not match `\\w[\\w \\-/]+`"
        );
        // Fewer than three pairs: the line is part of the prompt.
        let p = parse_generation_parameters("a cat\nSteps: 4, Seed: 1");
        assert_eq!(p["Prompt"], "a cat\nSteps: 4, Seed: 1");
        assert!(p.get("Steps").is_none());
    }

    #[test]
    fn versions_compare_like_packaging() {
        let v = |s| parse_version(s).unwrap();
        assert!(v("v1.6.0-2-g4afaaf8a") < v("1.7.0-225"));
        assert!(v("1.6.0-2") > v("1.6.0"));
        assert!(v("1.8.0-RC") < v("1.8.0"));
        assert!(v("v1.10.1") > v("1.8.0"));
        assert_eq!(parse_version("sdxl-worker 0.1.0"), None);
        let p = parse_generation_parameters("p\nSteps: 4, Sampler: DDIM, Seed: 1, Version: v1.5.1");
        assert_eq!(p["Pad conds v0"], true);
        assert_eq!(p["Downcast alphas_cumprod"], true);
    }

    #[test]
    fn emphasis_detection() {
        assert!(!uses_emphasis("plain, words"));
        assert!(uses_emphasis("(word)"));
        assert!(uses_emphasis("[word"));
        assert!(!uses_emphasis("(word:1)"));
        assert!(!uses_emphasis("\\(word\\)"));
        assert!(!uses_emphasis("a BREAK b"));
        assert!(uses_emphasis("(a:1.3) b"));
    }
}
