//! Bucket settings: `BUCKET_ENDPOINT_URL` (the names the runpod SDK's `rp_upload` uses) split into
//! service endpoint, bucket and addressing style; region; credentials; presigned URL expiry.

use std::fmt;
use std::time::Duration;

use reqwest::Url;

use super::UploadError;

/// Env var with the bucket endpoint (`https://<bucket>.s3.<region>.amazonaws.com`,
/// `https://<account>.r2.cloudflarestorage.com/<bucket>`, `http://host:port/<bucket>`, ...).
pub const BUCKET_ENDPOINT_URL_ENV: &str = "BUCKET_ENDPOINT_URL";
/// Env var with the access key id.
pub const BUCKET_ACCESS_KEY_ID_ENV: &str = "BUCKET_ACCESS_KEY_ID";
/// Env var with the secret access key.
pub const BUCKET_SECRET_ACCESS_KEY_ENV: &str = "BUCKET_SECRET_ACCESS_KEY";
/// Env var with the signing region (default [`DEFAULT_REGION`]).
pub const BUCKET_REGION_ENV: &str = "BUCKET_REGION";
/// Env var with the presigned URL lifetime in seconds (default and maximum [`MAX_URL_EXPIRY`]).
pub const BUCKET_URL_EXPIRY_S_ENV: &str = "BUCKET_URL_EXPIRY_S";
/// Region used when `BUCKET_REGION` is not set.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Longest presigned URL lifetime SigV4 allows (7 days); also the default.
pub const MAX_URL_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// A credential that never prints: `Debug` shows `Secret(<redacted>)` and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The raw value, for the S3 client only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How the bucket appears in request URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressingStyle {
    /// The bucket is the first host label: `https://<bucket>.s3.<region>.amazonaws.com/<key>`.
    VirtualHosted,
    /// The bucket is the first path segment: `https://<host>/<bucket>/<key>`.
    PathStyle,
}

/// Everything needed to upload to one bucket. `Debug` and `Display` never show the credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct BucketConfig {
    endpoint_url: String,
    service_endpoint: String,
    bucket: String,
    style: AddressingStyle,
    region: String,
    access_key_id: Secret,
    secret_access_key: Secret,
    url_expiry: Duration,
}

impl BucketConfig {
    /// Reads the `BUCKET_*` env vars. `Ok(None)` when `BUCKET_ENDPOINT_URL` is unset or empty (no
    /// bucket: uploads are off); [`UploadError::Config`] when the endpoint is set but a credential
    /// is missing, or a value is invalid.
    pub fn from_env() -> Result<Option<Self>, UploadError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over any variable lookup (tests pass a map instead of
    /// mutating the process environment). Empty values count as unset.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, UploadError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let Some(endpoint) = get(BUCKET_ENDPOINT_URL_ENV) else {
            return Ok(None);
        };
        let key_id = get(BUCKET_ACCESS_KEY_ID_ENV);
        let secret = get(BUCKET_SECRET_ACCESS_KEY_ENV);
        let missing: Vec<&str> = [
            (BUCKET_ACCESS_KEY_ID_ENV, key_id.is_none()),
            (BUCKET_SECRET_ACCESS_KEY_ENV, secret.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, absent)| absent.then_some(name))
        .collect();
        let (Some(key_id), Some(secret)) = (key_id, secret) else {
            return Err(UploadError::Config(format!(
                "{BUCKET_ENDPOINT_URL_ENV} is set but {} {} not; set both credentials or unset \
                 {BUCKET_ENDPOINT_URL_ENV} to turn uploads off",
                missing.join(" and "),
                if missing.len() == 1 { "is" } else { "are" }
            )));
        };
        let mut config = Self::new(endpoint.trim(), key_id.trim(), secret.trim())?;
        if let Some(region) = get(BUCKET_REGION_ENV) {
            config = config.with_region(region.trim())?;
        }
        if let Some(expiry) = get(BUCKET_URL_EXPIRY_S_ENV) {
            let secs: u64 = expiry.trim().parse().map_err(|_| {
                UploadError::Config(format!(
                    "{BUCKET_URL_EXPIRY_S_ENV}={expiry:?} is not a whole number of seconds"
                ))
            })?;
            config = config.with_url_expiry(Duration::from_secs(secs))?;
        }
        Ok(Some(config))
    }

    /// A configuration from explicit values, with region [`DEFAULT_REGION`] and URL expiry
    /// [`MAX_URL_EXPIRY`]. The endpoint rule (SPEC §4): a URL with a non-empty path is path-style
    /// and its one path segment is the bucket; otherwise it is virtual-hosted and the bucket is the
    /// first host label. `http` is allowed (MinIO on a LAN, tests); user info, query strings and
    /// fragments are not.
    pub fn new(
        endpoint_url: &str,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Result<Self, UploadError> {
        let access_key_id = access_key_id.into();
        let secret_access_key = secret_access_key.into();
        if access_key_id.is_empty() || secret_access_key.is_empty() {
            return Err(UploadError::Config(
                "the access key id and the secret access key must not be empty".into(),
            ));
        }
        let parsed = parse_endpoint(endpoint_url)?;
        Ok(BucketConfig {
            endpoint_url: endpoint_url.to_string(),
            service_endpoint: parsed.service_endpoint,
            bucket: parsed.bucket,
            style: parsed.style,
            region: DEFAULT_REGION.to_string(),
            access_key_id: Secret::new(access_key_id),
            secret_access_key: Secret::new(secret_access_key),
            url_expiry: MAX_URL_EXPIRY,
        })
    }

    /// Sets the signing region (`us-east-1`, `eu-west-2`, `auto` for R2, ...).
    pub fn with_region(mut self, region: &str) -> Result<Self, UploadError> {
        let ok = !region.is_empty()
            && region.len() <= 64
            && region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
        if !ok {
            return Err(UploadError::Config(format!(
                "{BUCKET_REGION_ENV}={region:?} is not a region name (letters, digits, '-')"
            )));
        }
        self.region = region.to_string();
        Ok(self)
    }

    /// Sets the presigned URL lifetime: at least 1 s, at most [`MAX_URL_EXPIRY`] (7 days, the
    /// SigV4 limit). Longer values are refused, not clamped.
    pub fn with_url_expiry(mut self, expiry: Duration) -> Result<Self, UploadError> {
        if expiry < Duration::from_secs(1) || expiry > MAX_URL_EXPIRY {
            return Err(UploadError::Config(format!(
                "{BUCKET_URL_EXPIRY_S_ENV}: a presigned URL must be valid for 1 to {} seconds \
                 (7 days, the SigV4 maximum); got {} s",
                MAX_URL_EXPIRY.as_secs(),
                expiry.as_secs()
            )));
        }
        self.url_expiry = expiry;
        Ok(self)
    }

    /// The endpoint URL as configured.
    pub fn endpoint_url(&self) -> &str {
        &self.endpoint_url
    }

    /// The URL requests go to: the whole endpoint when virtual-hosted, `scheme://host[:port]` when
    /// path-style (the S3 client appends `/<bucket>`).
    pub fn service_endpoint(&self) -> &str {
        &self.service_endpoint
    }

    /// The bucket name taken from the endpoint.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Virtual-hosted or path-style.
    pub fn style(&self) -> AddressingStyle {
        self.style
    }

    /// The signing region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// How long presigned GET URLs stay valid.
    pub fn url_expiry(&self) -> Duration {
        self.url_expiry
    }

    /// Whether the endpoint is plain `http` (the S3 client refuses it unless told).
    pub(crate) fn is_http(&self) -> bool {
        self.service_endpoint.starts_with("http://")
    }

    pub(crate) fn access_key_id(&self) -> &Secret {
        &self.access_key_id
    }

    pub(crate) fn secret_access_key(&self) -> &Secret {
        &self.secret_access_key
    }
}

impl fmt::Debug for BucketConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BucketConfig")
            .field("endpoint_url", &self.endpoint_url)
            .field("bucket", &self.bucket)
            .field("style", &self.style)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("url_expiry", &self.url_expiry)
            .finish()
    }
}

/// One line for startup logs: bucket, endpoint, style, region, expiry (no credentials).
impl fmt::Display for BucketConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bucket {:?} at {} ({}, region {}, URLs valid {} s)",
            self.bucket,
            self.service_endpoint,
            match self.style {
                AddressingStyle::VirtualHosted => "virtual-hosted",
                AddressingStyle::PathStyle => "path-style",
            },
            self.region,
            self.url_expiry.as_secs()
        )
    }
}

struct ParsedEndpoint {
    service_endpoint: String,
    bucket: String,
    style: AddressingStyle,
}

fn parse_endpoint(endpoint_url: &str) -> Result<ParsedEndpoint, UploadError> {
    let bad = |why: &str| UploadError::Config(format!("{BUCKET_ENDPOINT_URL_ENV}: {why}"));
    let url = Url::parse(endpoint_url).map_err(|e| bad(&format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be https (or http)"));
    }
    // Never echo user info: it would be a credential.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(&format!(
            "credentials in the URL are not supported; use {BUCKET_ACCESS_KEY_ID_ENV} and \
             {BUCKET_SECRET_ACCESS_KEY_ENV}"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("the URL must not have a query string or fragment"));
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("the URL has no host"))?;
    let origin = match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    };
    let segments: Vec<&str> = url
        .path_segments()
        .map(|s| s.filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    let (bucket, style, service_endpoint) = match segments.as_slice() {
        [] => {
            let label = host.split('.').next().unwrap_or("");
            if url.domain().is_none() || !host.contains('.') {
                return Err(bad(&format!(
                    "no bucket in {origin}: give it as the first host label \
                     (https://<bucket>.s3.<region>.amazonaws.com) or as the path \
                     ({origin}/<bucket>)"
                )));
            }
            (label.to_string(), AddressingStyle::VirtualHosted, origin)
        }
        [bucket] => (bucket.to_string(), AddressingStyle::PathStyle, origin),
        _ => {
            return Err(bad(&format!(
                "a path-style endpoint is {origin}/<bucket>; the path {:?} has more than one \
                 segment",
                url.path()
            )))
        }
    };
    check_bucket_name(&bucket).map_err(|why| bad(&why))?;
    Ok(ParsedEndpoint {
        service_endpoint,
        bucket,
        style,
    })
}

/// A loose bucket name check (ASCII letters, digits, `.`, `-`, `_`; up to 255 characters, which
/// also admits legacy us-east-1 names) so that a misread endpoint fails at startup rather than on
/// the first upload; the server enforces its own stricter rules.
fn check_bucket_name(bucket: &str) -> Result<(), String> {
    let ok = (1..=255).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(format!("{bucket:?} is not a bucket name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(url: &str) -> Result<BucketConfig, UploadError> {
        BucketConfig::new(url, "AKIDEXAMPLE", "wJalrXUtnFEMI")
    }

    fn env(pairs: &[(&str, &str)]) -> Result<Option<BucketConfig>, UploadError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        BucketConfig::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn virtual_hosted_aws_endpoint() {
        let c = cfg("https://my-bucket.s3.eu-west-1.amazonaws.com").unwrap();
        assert_eq!(c.bucket(), "my-bucket");
        assert_eq!(c.style(), AddressingStyle::VirtualHosted);
        assert_eq!(
            c.service_endpoint(),
            "https://my-bucket.s3.eu-west-1.amazonaws.com"
        );
        assert_eq!(c.region(), DEFAULT_REGION);
        assert_eq!(c.url_expiry(), MAX_URL_EXPIRY);
        // A trailing slash is an empty path: still virtual-hosted.
        let c = cfg("https://my-bucket.s3.amazonaws.com/").unwrap();
        assert_eq!(
            (c.bucket(), c.style()),
            ("my-bucket", AddressingStyle::VirtualHosted)
        );
    }

    #[test]
    fn path_style_r2_and_minio_endpoints() {
        let c = cfg("https://0123abcd.r2.cloudflarestorage.com/results").unwrap();
        assert_eq!(c.bucket(), "results");
        assert_eq!(c.style(), AddressingStyle::PathStyle);
        assert_eq!(
            c.service_endpoint(),
            "https://0123abcd.r2.cloudflarestorage.com"
        );
        let c = cfg("http://127.0.0.1:9000/bkt/").unwrap();
        assert_eq!(
            (c.bucket(), c.service_endpoint()),
            ("bkt", "http://127.0.0.1:9000")
        );
        assert!(c.is_http());
    }

    #[test]
    fn bad_endpoints_are_refused_with_the_variable_named() {
        for url in [
            "not a url",
            "ftp://bucket.example.com",
            "http://127.0.0.1:9000",
            "http://localhost:9000",
            "https://host.example.com/a/b",
            "https://host.example.com/bkt?x=1",
            "https://host.example.com/b%2Fc",
            "https://user:pw@host.example.com/bkt",
        ] {
            let err = cfg(url).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(BUCKET_ENDPOINT_URL_ENV), "{url}: {text}");
            assert!(!text.contains("pw@"), "{text}");
        }
    }

    #[test]
    fn no_endpoint_means_no_bucket() {
        assert_eq!(env(&[]).unwrap(), None);
        assert_eq!(env(&[(BUCKET_ENDPOINT_URL_ENV, " ")]).unwrap(), None);
    }

    #[test]
    fn partial_env_names_what_is_missing() {
        let err = env(&[
            (BUCKET_ENDPOINT_URL_ENV, "https://b.s3.amazonaws.com"),
            (BUCKET_ACCESS_KEY_ID_ENV, "AKID"),
        ])
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(BUCKET_SECRET_ACCESS_KEY_ENV), "{text}");
        assert!(!text.contains("AKID"), "{text}");
        let err = env(&[(BUCKET_ENDPOINT_URL_ENV, "https://b.s3.amazonaws.com")]).unwrap_err();
        assert!(err
            .to_string()
            .contains("BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY"));
    }

    #[test]
    fn full_env_with_region_and_expiry() {
        let c = env(&[
            (
                BUCKET_ENDPOINT_URL_ENV,
                "https://acct.r2.cloudflarestorage.com/imgs",
            ),
            (BUCKET_ACCESS_KEY_ID_ENV, "AKID"),
            (BUCKET_SECRET_ACCESS_KEY_ENV, "topsecret"),
            (BUCKET_REGION_ENV, "auto"),
            (BUCKET_URL_EXPIRY_S_ENV, "3600"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((c.bucket(), c.region()), ("imgs", "auto"));
        assert_eq!(c.url_expiry(), Duration::from_secs(3600));
    }

    #[test]
    fn expiry_over_seven_days_or_zero_is_refused() {
        let base = [
            (BUCKET_ENDPOINT_URL_ENV, "https://b.s3.amazonaws.com"),
            (BUCKET_ACCESS_KEY_ID_ENV, "AKID"),
            (BUCKET_SECRET_ACCESS_KEY_ENV, "topsecret"),
        ];
        for bad in ["604801", "0", "-1", "1h", "99999999999999999999"] {
            let mut vars = base.to_vec();
            vars.push((BUCKET_URL_EXPIRY_S_ENV, bad));
            let err = env(&vars).unwrap_err();
            assert!(
                err.to_string().contains(BUCKET_URL_EXPIRY_S_ENV),
                "{bad}: {err}"
            );
        }
        let mut vars = base.to_vec();
        vars.push((BUCKET_URL_EXPIRY_S_ENV, "604800"));
        assert_eq!(env(&vars).unwrap().unwrap().url_expiry(), MAX_URL_EXPIRY);
    }

    #[test]
    fn bad_region_is_refused() {
        assert!(cfg("https://b.s3.amazonaws.com")
            .unwrap()
            .with_region("eu west")
            .is_err());
    }

    #[test]
    fn debug_and_display_never_show_credentials() {
        let c = cfg("https://b.s3.amazonaws.com").unwrap();
        for text in [format!("{c:?}"), format!("{c:#?}"), c.to_string()] {
            assert!(!text.contains("wJalrXUtnFEMI"), "{text}");
            assert!(!text.contains("AKIDEXAMPLE"), "{text}");
        }
        assert_eq!(format!("{:?}", Secret::new("x")), "Secret(<redacted>)");
    }
}
