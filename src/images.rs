//! Anchor images, fetched by the server and never by a reviewer's browser: a stored reference
//! (`oss://anchors/a1.png`) is mapped through a configured prefix to an http(s) URL, fetched
//! with a size cap, a time limit and a check that the bytes are the raster image their
//! `Content-Type` says, and hashed. An approval is bound to that SHA-256 (see
//! `domain::ImageBinding`), so an image changed at the same reference is noticed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The largest image fetched: a 1024×1024 PNG of a photo is 1–3 MiB.
pub const MAX_IMAGE_BYTES: usize = 8 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a fetched image is served from memory to reviewers' pages (thumbnails, the filing
/// page, its zoom). Approvals and the re-check always fetch afresh.
const FRESH_FOR: Duration = Duration::from_secs(60);
/// Memory the cache of fetched images may hold.
const CACHE_BYTES: u64 = 64 << 20;

/// Raster formats a browser shows without running anything (no SVG: it can carry script).
const FORMATS: &[(&str, &[u8])] = &[
    ("image/png", b"\x89PNG\r\n\x1a\n"),
    ("image/jpeg", b"\xff\xd8\xff"),
    ("image/gif", b"GIF8"),
    ("image/webp", b"RIFF"),
];

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ImageError {
    #[error("{0}: no configured image prefix maps this reference")]
    NotMapped(String),
    #[error("{reference}: {why}")]
    BadPath {
        reference: String,
        why: &'static str,
    },
    #[error("{url}: {why}")]
    Fetch { url: String, why: String },
    #[error("{url}: answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: larger than {MAX_IMAGE_BYTES} bytes")]
    TooLarge { url: String },
    #[error("{url}: {why}")]
    NotAnImage { url: String, why: String },
}

/// An image as fetched: its bytes, the checked type and the SHA-256 (hex) of the bytes.
#[derive(Debug)]
pub struct Image {
    pub bytes: Bytes,
    pub content_type: &'static str,
    pub sha256: String,
    fetched: Instant,
}

/// One `FROM=TO` mapping: a reference starting with `from` is fetched from `to` + the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Prefix {
    from: String,
    to: String,
}

type Https = HttpsConnector<HttpConnector>;

pub struct ImageSource {
    prefixes: Vec<Prefix>,
    client: Client<Https, Empty<Bytes>>,
    cache: quick_cache::sync::Cache<String, Arc<Image>, ImageWeight>,
}

#[derive(Clone)]
struct ImageWeight;

impl quick_cache::Weighter<String, Arc<Image>> for ImageWeight {
    fn weight(&self, key: &String, image: &Arc<Image>) -> u64 {
        (key.len() + image.bytes.len()) as u64
    }
}

/// Parses `--console-image-prefix` specs: `FROM=TO`, TO an http(s) URL ending in `/` (so the
/// rest of a reference can only name a path below it, never another host).
fn parse_prefixes(specs: &[String]) -> Result<Vec<Prefix>, String> {
    specs
        .iter()
        .map(|spec| {
            let (from, to) = spec
                .split_once('=')
                .ok_or_else(|| format!("{spec}: expected FROM=https://host/path/"))?;
            let rest = to
                .strip_prefix("https://")
                .or_else(|| to.strip_prefix("http://"))
                .ok_or_else(|| format!("{spec}: the target must be an http(s) URL prefix"))?;
            if from.is_empty() || !to.ends_with('/') || !rest.contains('/') {
                return Err(format!(
                    "{spec}: FROM must not be empty and TO must be a URL ending in `/`"
                ));
            }
            Ok(Prefix {
                from: from.to_owned(),
                to: to.to_owned(),
            })
        })
        .collect()
}

/// The part of a reference below its prefix, if it names a plain path: segments of
/// `[A-Za-z0-9._~+=,-]`, none empty, `.` or `..` (so nothing escapes the prefix, and nothing
/// needs percent-encoding).
fn check_path<'a>(reference: &str, rest: &'a str) -> Result<&'a str, ImageError> {
    let bad = |why| ImageError::BadPath {
        reference: reference.to_owned(),
        why,
    };
    if rest.is_empty() {
        return Err(bad("names no file below its prefix"));
    }
    for segment in rest.split('/') {
        match segment {
            "" => return Err(bad("has an empty path segment")),
            "." | ".." => return Err(bad("has a `.` or `..` path segment")),
            _ => {}
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~+=,-".contains(&b))
        {
            return Err(bad(
                "may only use letters, digits and . _ ~ + = , - in its path",
            ));
        }
    }
    Ok(rest)
}

impl ImageSource {
    /// The source for `specs`, or `None` when no prefix is configured (then no image is
    /// fetched and approvals bind to none).
    pub fn new(specs: &[String]) -> Result<Option<Arc<ImageSource>>, String> {
        let prefixes = parse_prefixes(specs)?;
        if prefixes.is_empty() {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider.clone())
        {
            Ok(tls) => tls,
            Err(error) => {
                // Without the system's roots, https images fail with a clear error at fetch
                // time; http prefixes still work.
                tracing::warn!(%error, "no system TLS roots: https images cannot be fetched");
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("TLS: {e}"))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
        let https = tls.https_or_http().enable_http1().build();
        Ok(Some(Arc::new(ImageSource {
            prefixes,
            client: Client::builder(TokioExecutor::new()).build(https),
            cache: quick_cache::sync::Cache::with_weighter(1024, CACHE_BYTES, ImageWeight),
        })))
    }

    /// The URL `reference` is fetched from: through the longest matching prefix, its path
    /// checked.
    pub fn url(&self, reference: &str) -> Result<String, ImageError> {
        let prefix = self
            .prefixes
            .iter()
            .filter(|p| reference.starts_with(p.from.as_str()))
            .max_by_key(|p| p.from.len())
            .ok_or_else(|| ImageError::NotMapped(reference.to_owned()))?;
        let rest = check_path(reference, &reference[prefix.from.len()..])?;
        Ok(format!("{}{rest}", prefix.to))
    }

    /// The image at `reference`, fetched now (for an approval or a re-check).
    pub async fn fetch(&self, reference: &str) -> Result<Arc<Image>, ImageError> {
        let url = self.url(reference)?;
        let image = Arc::new(self.get(&url).await?);
        self.cache.insert(reference.to_owned(), image.clone());
        Ok(image)
    }

    /// The image at `reference` for showing: fetched at most `FRESH_FOR` ago.
    pub async fn recent(&self, reference: &str) -> Result<Arc<Image>, ImageError> {
        match self.cache.get(reference) {
            Some(image) if image.fetched.elapsed() < FRESH_FOR => Ok(image),
            _ => self.fetch(reference).await,
        }
    }

    async fn get(&self, url: &str) -> Result<Image, ImageError> {
        let failed = |why: String| ImageError::Fetch {
            url: url.to_owned(),
            why,
        };
        let uri: hyper::Uri = url.parse().map_err(|e| failed(format!("{e}")))?;
        let fetch = async {
            let response = self
                .client
                .get(uri)
                .await
                .map_err(|e| failed(format!("{e}")))?;
            let status = response.status();
            if !status.is_success() {
                // Redirects are not followed: the image must be where the prefix says.
                return Err(ImageError::Status {
                    url: url.to_owned(),
                    status: status.as_u16(),
                });
            }
            let declared = response
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|t| t.to_str().ok())
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            let body = Limited::new(response.into_body(), MAX_IMAGE_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        ImageError::TooLarge {
                            url: url.to_owned(),
                        }
                    } else {
                        failed(format!("{e}"))
                    }
                })?
                .to_bytes();
            Ok((declared, body))
        };
        let (declared, bytes) = tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| failed(format!("no answer within {FETCH_TIMEOUT:?}")))??;
        let content_type =
            checked_type(&declared, &bytes).map_err(|why| ImageError::NotAnImage {
                url: url.to_owned(),
                why,
            })?;
        Ok(Image {
            sha256: crate::domain::sha256_hex(&bytes),
            bytes,
            content_type,
            fetched: Instant::now(),
        })
    }
}

/// The declared type, if it is a raster format this console shows and the bytes begin as that
/// format does.
fn checked_type(declared: &str, bytes: &[u8]) -> Result<&'static str, String> {
    let (name, magic) = FORMATS
        .iter()
        .find(|(name, _)| *name == declared)
        .ok_or_else(|| {
            format!("Content-Type `{declared}` is not one of image/png, image/jpeg, image/gif, image/webp")
        })?;
    let webp_ok = *name != "image/webp" || bytes.get(8..12) == Some(b"WEBP");
    if !bytes.starts_with(magic) || !webp_ok {
        return Err(format!("the bytes are not {name}"));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(specs: &[&str]) -> Arc<ImageSource> {
        let specs: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
        match ImageSource::new(&specs) {
            Ok(Some(source)) => source,
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn references_map_through_prefixes_and_never_escape_them() {
        let images = source(&[
            "oss://anchors/=https://cdn.example.com/anchors/",
            "oss://anchors/hd/=https://hd.example.com/",
        ]);
        assert_eq!(
            images.url("oss://anchors/m1/a1.png").as_deref(),
            Ok("https://cdn.example.com/anchors/m1/a1.png")
        );
        assert_eq!(
            images.url("oss://anchors/hd/a1.png").as_deref(),
            Ok("https://hd.example.com/a1.png"),
            "the longest prefix wins"
        );
        for (reference, why) in [
            ("oss://anchors/../../private/x.png", "`.` or `..`"),
            ("oss://anchors/a/./b.png", "`.` or `..`"),
            ("oss://anchors//etc/passwd", "empty path segment"),
            ("oss://anchors/%2e%2e/x.png", "may only use"),
            ("oss://anchors/a.png?x=1", "may only use"),
            ("oss://anchors/a\\..\\b.png", "may only use"),
            ("oss://anchors/", "names no file"),
        ] {
            let e = images.url(reference).expect_err(reference).to_string();
            assert!(e.contains(why), "{reference}: {e}");
        }
        assert_eq!(
            images.url("https://evil.example.com/x.png"),
            Err(ImageError::NotMapped(
                "https://evil.example.com/x.png".into()
            )),
            "a URL is fetched only through a prefix"
        );
    }

    #[test]
    fn prefixes_must_name_a_directory_of_an_http_url() {
        for spec in [
            "oss://a/",
            "oss://a/=ftp://x/",
            "oss://a/=https://cdn.example.com",
            "oss://a/=https://cdn.example.com/anchors",
            "=https://cdn.example.com/",
        ] {
            assert!(ImageSource::new(&[spec.to_owned()]).is_err(), "{spec}");
        }
        assert!(matches!(ImageSource::new(&[]), Ok(None)));
    }

    #[test]
    fn only_raster_images_whose_bytes_match_their_type() {
        assert_eq!(
            checked_type("image/png", b"\x89PNG\r\n\x1a\n...."),
            Ok("image/png")
        );
        assert!(checked_type("image/svg+xml", b"<svg/>").is_err());
        assert!(checked_type("image/png", b"<svg/>").is_err());
        assert!(checked_type("text/html", b"\x89PNG\r\n\x1a\n").is_err());
        assert!(checked_type("image/webp", b"RIFF....WAVE").is_err());
        assert_eq!(
            checked_type("image/webp", b"RIFF\0\0\0\0WEBPVP8 "),
            Ok("image/webp")
        );
    }
}
