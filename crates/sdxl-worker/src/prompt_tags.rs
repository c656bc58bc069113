//! A1111 extra-network tags in the prompt (SPEC §5a): `<lora:NAME:W>`, `<lora:NAME:TE:UNET>`.
//!
//! Semantics are AUTOMATIC1111 1.10's: `modules/extra_networks.py` `parse_prompt` finds every
//! match of `<(\w+):([^>]+)>`, removes it from the text (replaced by nothing) and splits its
//! arguments on `:`; an argument `key=value` is named, any other positional
//! (`ExtraNetworkParams`). `extensions-builtin/Lora/extra_networks_lora.py` then reads a LoRA tag
//! as `te = positional[1]` (default 1.0, `te=` wins), `unet = positional[2]` (default te, `unet=`
//! wins). Only the positive prompt is parsed (A1111's `parse_extra_network_prompts`); a tag in
//! the negative prompt is encoded as text, as in A1111.
//!
//! How tags combine with the job's LoRA set: the set is the `loras` field when present, else
//! models.toml's defaults; each LoRA tag, in prompt order, then replaces the scale of a LoRA
//! already in the set or adds it (so a later tag for the same LoRA wins). What A1111 does
//! differently, on purpose: an unknown name is `UNKNOWN_MODEL` (A1111 logs and skips it), and
//! other extra networks (`<hypernet:...>`), `dyn=` / a fourth positional (dynamic dim) and named
//! arguments it does not know are `INVALID_INPUT` (never a success that ignores them).

use crate::catalog::{Catalog, LoraSpec};

/// Scales a tag may give (the `loras` field's range).
pub const SCALE_RANGE: std::ops::RangeInclusive<f64> = -4.0..=4.0;

/// One `<kind:args>` tag as A1111's regex matches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraNetworkTag {
    /// The network kind (`lora`, `hypernet`, ...): `\w+`.
    pub kind: String,
    /// The arguments split on `:` (A1111's `items`).
    pub items: Vec<String>,
    /// The whole tag as written (messages).
    pub text: String,
}

impl ExtraNetworkTag {
    /// Positional arguments (items that are not `key=value`; A1111 splits on `=` at most twice
    /// and names an item only when that gives exactly two parts).
    pub fn positional(&self) -> Vec<&str> {
        self.items
            .iter()
            .filter(|i| i.split('=').count() != 2)
            .map(String::as_str)
            .collect()
    }

    /// Named arguments `key=value`, in order (a later key wins, as in A1111's dict).
    pub fn named(&self) -> Vec<(&str, &str)> {
        self.items
            .iter()
            .filter_map(|i| {
                let mut parts = i.split('=');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(k), Some(v), None) => Some((k, v)),
                    _ => None,
                }
            })
            .collect()
    }
}

/// A1111's `\w` (Python 3 `str` patterns: Unicode letters, digits and `_`).
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// A1111 `extra_networks.parse_prompt`: the prompt with every `<(\w+):([^>]+)>` removed, and the
/// tags in order.
pub fn parse_prompt(prompt: &str) -> (String, Vec<ExtraNetworkTag>) {
    let mut out = String::with_capacity(prompt.len());
    let mut tags = Vec::new();
    let mut rest = prompt;
    while let Some(lt) = rest.find('<') {
        out.push_str(&rest[..lt]);
        let after = &rest[lt + 1..];
        match match_tag(after) {
            Some((kind, args, len)) => {
                tags.push(ExtraNetworkTag {
                    kind: kind.to_string(),
                    items: args.split(':').map(str::to_string).collect(),
                    text: rest[lt..lt + 1 + len].to_string(),
                });
                rest = &after[len..];
            }
            None => {
                out.push('<');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    (out, tags)
}

/// Matches `(\w+):([^>]+)>` at the start of `s`: (kind, args, bytes consumed).
fn match_tag(s: &str) -> Option<(&str, &str, usize)> {
    let kind_len: usize = s
        .chars()
        .take_while(|c| is_word(*c))
        .map(char::len_utf8)
        .sum();
    if kind_len == 0 || !s[kind_len..].starts_with(':') {
        return None;
    }
    let args_start = kind_len + 1;
    let gt = s[args_start..].find('>')?;
    if gt == 0 {
        return None;
    }
    let args = &s[args_start..args_start + gt];
    Some((&s[..kind_len], args, args_start + gt + 1))
}

/// Python's `float()` on a tag argument: surrounding whitespace is ignored, `_` may separate
/// digits; `inf`/`nan` parse (and are then refused by the range check).
pub fn python_float(s: &str) -> Option<f64> {
    let t = s.trim();
    let bytes = t.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'_' {
            let digit = |j: Option<&u8>| j.is_some_and(u8::is_ascii_digit);
            if !digit(i.checked_sub(1).and_then(|j| bytes.get(j))) || !digit(bytes.get(i + 1)) {
                return None;
            }
        }
    }
    t.replace('_', "").parse::<f64>().ok()
}

/// A `<lora:...>` tag resolved against the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraTag {
    /// The name as written in the tag (A1111's `mentioned_name`, used in `Lora hashes`).
    pub written: String,
    /// The catalog (models.toml) name it resolved to.
    pub name: String,
    /// Text-encoder multiplier.
    pub te: f64,
    /// UNet multiplier.
    pub unet: f64,
}

impl LoraTag {
    /// The job-set entry this tag stands for (`te_scale` only when it differs from the UNet's).
    pub fn spec(&self) -> LoraSpec {
        LoraSpec {
            name: self.name.clone(),
            scale: self.unet,
            te_scale: (self.te != self.unet).then_some(self.te),
        }
    }
}

/// A problem with a tag: its message and whether it is an unknown model name.
#[derive(Debug, Clone, PartialEq)]
pub struct TagProblem {
    /// Human message naming the tag.
    pub message: String,
    /// True for an unknown LoRA name (`UNKNOWN_MODEL`), false for bad syntax (`INVALID_INPUT`).
    pub unknown_model: bool,
}

impl TagProblem {
    fn invalid(message: String) -> Self {
        Self {
            message,
            unknown_model: false,
        }
    }
}

/// The catalog name a tag name stands for: a models.toml LoRA name, else a file stem
/// (exact match first, then ASCII case-insensitive, like the `loras` field).
pub fn lookup_lora(catalog: &Catalog, written: &str) -> Option<String> {
    let names = catalog
        .loras
        .iter()
        .map(|l| (l.name.as_str(), l.name.as_str()));
    let stems = catalog
        .lora_stems
        .iter()
        .map(|(stem, name)| (stem.as_str(), name.as_str()));
    let all: Vec<(&str, &str)> = names.chain(stems).collect();
    all.iter()
        .find(|(alias, _)| *alias == written)
        .or_else(|| {
            all.iter()
                .find(|(alias, _)| alias.eq_ignore_ascii_case(written))
        })
        .map(|(_, name)| name.to_string())
}

/// Reads the LoRA tags of a prompt: every tag is checked; problems name the tag.
pub fn lora_tags(tags: &[ExtraNetworkTag], catalog: &Catalog) -> (Vec<LoraTag>, Vec<TagProblem>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for tag in tags {
        if tag.kind != "lora" {
            problems.push(TagProblem::invalid(format!(
                "prompt tag {} is an extra network of kind `{}`, which this worker does not \
                 support (only <lora:NAME:WEIGHT>); remove it",
                shown(&tag.text),
                shown(&tag.kind)
            )));
            continue;
        }
        match lora_tag(tag, catalog) {
            Ok(t) => out.push(t),
            Err(p) => problems.push(p),
        }
    }
    (out, problems)
}

fn lora_tag(tag: &ExtraNetworkTag, catalog: &Catalog) -> Result<LoraTag, TagProblem> {
    let text = shown(&tag.text);
    let positional = tag.positional();
    let named = tag.named();
    let Some(written) = positional.first().copied() else {
        return Err(TagProblem::invalid(format!(
            "prompt tag {text} has no LoRA name"
        )));
    };
    for (key, _) in &named {
        if *key != "te" && *key != "unet" {
            return Err(TagProblem::invalid(format!(
                "prompt tag {text}: argument `{}` is not supported (only te= and unet=)",
                shown(key)
            )));
        }
    }
    if positional.len() > 3 {
        return Err(TagProblem::invalid(format!(
            "prompt tag {text}: a fourth argument (A1111's dynamic dim) is not supported; use \
             <lora:NAME:WEIGHT> or <lora:NAME:TE_WEIGHT:UNET_WEIGHT>"
        )));
    }
    let number = |what: &str, s: &str| -> Result<f64, TagProblem> {
        match python_float(s) {
            Some(v) if SCALE_RANGE.contains(&v) => Ok(v),
            _ => Err(TagProblem::invalid(format!(
                "prompt tag {text}: {what} {} must be a number in -4..=4",
                shown(s)
            ))),
        }
    };
    let last_named = |key: &str| named.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let mut te = match positional.get(1) {
        Some(s) => number("weight", s)?,
        None => 1.0,
    };
    if let Some(s) = last_named("te") {
        te = number("te", s)?;
    }
    let mut unet = match positional.get(2) {
        Some(s) => number("UNet weight", s)?,
        None => te,
    };
    if let Some(s) = last_named("unet") {
        unet = number("unet", s)?;
    }
    let Some(name) = lookup_lora(catalog, written) else {
        let known = catalog
            .loras
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(TagProblem {
            message: format!(
                "prompt tag {text}: unknown LoRA {} (a models.toml LoRA name or file stem); \
                 available: {known}",
                shown(written)
            ),
            unknown_model: true,
        });
    };
    Ok(LoraTag {
        written: written.to_string(),
        name,
        te,
        unet,
    })
}

/// Applies tags to a LoRA set: a tag for a LoRA in the set replaces its scales, any other is
/// appended (in prompt order).
pub fn apply(set: &mut Vec<LoraSpec>, tags: &[LoraTag]) {
    for tag in tags {
        let spec = tag.spec();
        match set.iter_mut().find(|l| l.name == spec.name) {
            Some(existing) => *existing = spec,
            None => set.push(spec),
        }
    }
}

/// A job's LoRA set after its prompt's tags (SPEC §5a), with the tags and their problems.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaggedSet {
    /// `base` with every tag applied ([`apply`]).
    pub loras: Vec<LoraSpec>,
    /// The prompt's LoRA tags, resolved.
    pub tags: Vec<LoraTag>,
    /// Bad tags, unknown names, and a set over `max` LoRAs.
    pub problems: Vec<TagProblem>,
}

/// The LoRA set of a job: `base` (the `loras` field, else the defaults) with the LoRA tags of
/// `prompt` applied; at most `max` LoRAs in all.
pub fn job_set(
    prompt: Option<&str>,
    base: Vec<LoraSpec>,
    catalog: &Catalog,
    max: usize,
) -> TaggedSet {
    let Some(prompt) = prompt else {
        return TaggedSet {
            loras: base,
            ..TaggedSet::default()
        };
    };
    let (_, found) = parse_prompt(prompt);
    let (tags, mut problems) = lora_tags(&found, catalog);
    let mut loras = base;
    apply(&mut loras, &tags);
    if loras.len() > max {
        problems.push(TagProblem::invalid(format!(
            "the prompt's <lora:...> tags make {} LoRAs; at most {max} are allowed",
            loras.len()
        )));
    }
    TaggedSet {
        loras,
        tags,
        problems,
    }
}

/// The text the text encoders see: `prompt` without its extra-network tags.
pub fn encoded_prompt(prompt: &str) -> String {
    parse_prompt(prompt).0
}

/// The warning for LoRA tags in the negative prompt (encoded as text, as A1111 does).
pub fn negative_prompt_warning(negative: &str) -> Option<String> {
    let (_, tags) = parse_prompt(negative);
    let first = tags.first()?;
    Some(format!(
        "negative_prompt contains {} extra-network tag(s) such as {}; as in A1111 they apply only \
         in the prompt, so they were encoded as text",
        tags.len(),
        shown(&first.text)
    ))
}

/// A user string shortened for messages.
fn shown(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut:?}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_tags_like_a1111() {
        let (text, tags) = parse_prompt(
            "1girl, <hypernet:agm:1.1> <extrasupernet:master:12:13:14> <hypernet:ray>",
        );
        assert_eq!(text, "1girl,   ");
        assert_eq!(tags.len(), 3);
        assert_eq!(tags[1].items, ["master", "12", "13", "14"]);
    }
}
