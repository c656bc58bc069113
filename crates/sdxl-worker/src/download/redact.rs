//! Keeping secrets out of logs and errors, and deciding which requests may carry the API key.

use crate::models::AuthKind;
use reqwest::Url;

/// The URL with user info removed and every query value replaced by `***` (tokens, presigned
/// signatures). Unparsable input is hidden entirely.
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = Url::parse(url) else {
        return "<unparsable url>".to_string();
    };
    let _ = u.set_username("");
    let _ = u.set_password(None);
    if u.query().is_some() {
        let pairs: Vec<String> = u.query_pairs().map(|(k, _)| format!("{k}=***")).collect();
        u.set_query(Some(&pairs.join("&")));
    }
    u.to_string()
}

/// Whether `host` is civitai.com or one of its subdomains.
fn is_civitai_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "civitai.com" || host.ends_with(".civitai.com")
}

/// Scheme, host and port: "same host" means same origin.
fn origin(u: &Url) -> (String, Option<String>, Option<u16>) {
    (
        u.scheme().to_string(),
        u.host_str().map(str::to_ascii_lowercase),
        u.port_or_known_default(),
    )
}

/// Whether the URL's host is a loopback address (`127.0.0.0/8`, `::1`, `localhost`): plain
/// http there never leaves the machine (tests, a local mirror).
fn is_loopback(u: &Url) -> bool {
    let Some(host) = u.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    let d = host.trim_end_matches('.').to_ascii_lowercase();
    d == "localhost" || d.ends_with(".localhost")
}

/// Whether the transport protects the key: https, or http to a loopback address.
fn secure_transport(u: &Url) -> bool {
    u.scheme() == "https" || (u.scheme() == "http" && is_loopback(u))
}

/// Whether a request to `current` (reached from the entry's `original` URL, maybe via redirects)
/// may carry `CIVITAI_API_KEY`: only over https (plain http only to loopback, for tests), only
/// while still on the original origin, and only when that is a civitai.com host or the entry
/// says `auth = "civitai"`; never with `auth = "none"`.
pub fn sends_key(original: &Url, current: &Url, auth: Option<AuthKind>) -> bool {
    if origin(original) != origin(current) || !secure_transport(current) {
        return false;
    }
    wants_key(current, auth)
}

/// Whether the key would have gone to `current` but for plain http to a non-loopback host.
pub(crate) fn withheld_for_plain_http(
    original: &Url,
    current: &Url,
    auth: Option<AuthKind>,
) -> bool {
    origin(original) == origin(current) && !secure_transport(current) && wants_key(current, auth)
}

fn wants_key(current: &Url, auth: Option<AuthKind>) -> bool {
    match auth {
        Some(AuthKind::Civitai) => true,
        Some(AuthKind::None) => false,
        None => current.host_str().is_some_and(is_civitai_host),
    }
}

/// Replaces any occurrence of `secret` in `text` (belt and braces for third-party messages).
pub(crate) fn scrub(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() => text.replace(s, "***"),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_and_userinfo_are_hidden() {
        let r =
            redact_url("https://user:pw@civitai.com/api/download/models/1?token=SECRET&type=Model");
        assert_eq!(
            r,
            "https://civitai.com/api/download/models/1?token=***&type=***"
        );
    }

    #[test]
    fn key_policy() {
        let civ = Url::parse("https://civitai.com/api/download/models/1").unwrap();
        let r2 = Url::parse("https://b2.civitai-storage.example/x").unwrap();
        let mirror = Url::parse("http://127.0.0.1:9/x").unwrap();
        let other_port = Url::parse("http://127.0.0.1:10/x").unwrap();
        assert!(sends_key(&civ, &civ, None));
        assert!(!sends_key(&civ, &r2, None));
        assert!(!sends_key(&civ, &civ, Some(AuthKind::None)));
        assert!(!sends_key(&mirror, &mirror, None));
        assert!(sends_key(&mirror, &mirror, Some(AuthKind::Civitai)));
        assert!(!sends_key(&mirror, &other_port, Some(AuthKind::Civitai)));
        let fake = Url::parse("https://civitai.com.evil.example/x").unwrap();
        assert!(!sends_key(&fake, &fake, None));
    }

    #[test]
    fn key_only_over_https_or_loopback_http() {
        let civ_http = Url::parse("http://civitai.com/api/download/models/1").unwrap();
        assert!(!sends_key(&civ_http, &civ_http, None));
        assert!(withheld_for_plain_http(&civ_http, &civ_http, None));
        let mirror_http = Url::parse("http://mirror.example/x").unwrap();
        assert!(!sends_key(
            &mirror_http,
            &mirror_http,
            Some(AuthKind::Civitai)
        ));
        let lan = Url::parse("http://192.168.1.5:8080/x").unwrap();
        assert!(!sends_key(&lan, &lan, Some(AuthKind::Civitai)));
        let mirror_https = Url::parse("https://mirror.example/x").unwrap();
        assert!(sends_key(
            &mirror_https,
            &mirror_https,
            Some(AuthKind::Civitai)
        ));
        for lo in [
            "http://127.0.0.1:9/x",
            "http://127.8.0.1:9/x",
            "http://[::1]:9/x",
            "http://localhost:9/x",
        ] {
            let u = Url::parse(lo).unwrap();
            assert!(sends_key(&u, &u, Some(AuthKind::Civitai)), "{lo}");
            assert!(!withheld_for_plain_http(&u, &u, Some(AuthKind::Civitai)));
        }
        // https → http redirect on the same host: different origin, no key either way.
        let civ = Url::parse("https://civitai.com/a").unwrap();
        assert!(!sends_key(&civ, &civ_http, None));
    }
}
