//! What webhook deliveries have in common across hosts: the normalised event, signature helpers (HMAC-SHA256,
//! constant-time comparison), and matching keys. Each kind's file verifies and maps its own payloads.

use reqwest::header::HeaderMap;

use crate::secret::Secret;

/// A verified delivery, mapped onto what the mirror needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The host's event name (`Push Hook`, `push`, `repo:push`, `repo:refs_changed`, `ping`, …).
    pub event: String,
    /// The host's delivery id, the same across redeliveries where the host says so.
    pub delivery_id: Option<String>,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// Refs of one repository changed.
    Push {
        repo: RepoKey,
        updates: Vec<RefUpdate>,
    },
    /// A connectivity test with no repository change (GitHub `ping`, Bitbucket DC `diagnostics:ping`).
    Ping,
    /// Any other event: recorded and ignored.
    Other,
}

/// How a payload names its repository.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RepoKey {
    pub provider_id: Option<String>,
    pub path: Option<String>,
    pub clone_urls: Vec<String>,
    /// The payload's idea of the default branch, used only when modelmirror has not seen the repository yet.
    pub default_branch: Option<String>,
}

/// One ref change.
#[derive(Debug, Clone, PartialEq)]
pub struct RefUpdate {
    /// The full ref: `refs/heads/x` or `refs/tags/x`.
    pub ref_name: String,
    pub deleted: bool,
}

/// The 40 zeros Git hosts use for "no commit".
pub(crate) const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// HMAC-SHA256 of `data` with `key`.
pub(crate) fn hmac_sha256(key: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    let pkey = openssl::pkey::PKey::hmac(key).ok()?;
    let mut signer =
        openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &pkey).ok()?;
    signer.update(data).ok()?;
    signer.sign_to_vec().ok()
}

/// Constant-time equality (lengths may leak, contents do not).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a delivery is refused or cannot be read. Says what is wrong with the delivery, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// The header, and what to do on the host.
    #[error("missing {0} header ({1})")]
    MissingSignature(&'static str, &'static str),
    #[error("{0} is not a sha256= signature")]
    NotSha256(&'static str),
    #[error("{0} does not match any configured webhook secret")]
    Mismatch(&'static str),
    /// A signature whose parts are malformed or stale (GitLab's Standard Webhooks headers).
    #[error("{0}")]
    BadSignature(&'static str),
    #[error("the payload is not JSON: {0}")]
    NotJson(String),
    #[error("a push without `ref`")]
    PushWithoutRef,
    #[error("this kind of provider sends no webhooks")]
    Unsupported,
}

/// Check the `sha256=<hex HMAC-SHA256(secret, body)>` in header `name` (GitHub `X-Hub-Signature-256`,
/// Bitbucket `X-Hub-Signature`) against every configured secret.
pub(crate) fn verify_hub_signature(
    headers: &HeaderMap,
    name: &'static str,
    body: &[u8],
    secrets: &[Secret],
) -> Result<(), HookError> {
    let Some(value) = header(headers, name) else {
        return Err(HookError::MissingSignature(
            name,
            "is the webhook's secret set on the host?",
        ));
    };
    let Some(given) = value.strip_prefix("sha256=") else {
        return Err(HookError::NotSha256(name));
    };
    let given = given.to_ascii_lowercase();
    for s in secrets {
        if let Some(mac) = hmac_sha256(s.expose().as_bytes(), body)
            && ct_eq(hex(&mac).as_bytes(), given.as_bytes())
        {
            return Ok(());
        }
    }
    Err(HookError::Mismatch(name))
}

/// Base64 as Standard Webhooks secrets are written, read leniently: the standard or the URL-safe alphabet,
/// padding or none (a last lone character, which encodes no whole byte, is dropped). `None` on anything else.
pub fn base64_lenient(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    const ENGINE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::general_purpose::NO_PAD.with_decode_allow_trailing_bits(true),
    );
    let mut normal: String = s
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    if normal.len() % 4 == 1 {
        normal.pop();
    }
    ENGINE.decode(normal).ok()
}

/// A clone URL reduced for comparison: lower-case scheme and host, no user, no default port, no trailing `/`
/// or `.git`.
pub(crate) fn normalize_url(u: &str) -> String {
    let u = u.trim();
    let Some((scheme, rest)) = u.split_once("://") else {
        return u
            .trim_end_matches('/')
            .trim_end_matches(".git")
            .to_ascii_lowercase();
    };
    let scheme = scheme.to_ascii_lowercase();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, h)| h)
        .to_ascii_lowercase();
    let host = match (scheme.as_str(), host.rsplit_once(':')) {
        ("https", Some((h, "443"))) | ("http", Some((h, "80"))) | ("ssh", Some((h, "22"))) => {
            h.to_string()
        }
        _ => host,
    };
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    format!("{scheme}://{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_documented_test_vector() {
        let mac = hmac_sha256(b"It's a Secret to Everybody", b"Hello, World!").unwrap();
        assert_eq!(
            hex(&mac),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        let secrets = [Secret::new("It's a Secret to Everybody".into())];
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let mut headers = HeaderMap::new();
        let name = "X-Hub-Signature-256";
        headers.insert("x-hub-signature-256", sig.parse().unwrap());
        assert!(verify_hub_signature(&headers, name, b"Hello, World!", &secrets).is_ok());
        assert_eq!(
            verify_hub_signature(&headers, name, b"Hello, World?", &secrets),
            Err(HookError::Mismatch(name))
        );
        let missing = verify_hub_signature(&HeaderMap::new(), name, b"x", &secrets).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("missing X-Hub-Signature-256 header")
        );
    }

    #[test]
    fn urls_normalise() {
        assert_eq!(
            normalize_url("HTTPS://User@GitLab.com:443/Group/Repo.git/"),
            "https://gitlab.com/Group/Repo"
        );
        assert_eq!(
            normalize_url("http://dc:7990/scm/prj/r.git"),
            "http://dc:7990/scm/prj/r"
        );
        // Secrets as hosts and people write them: both alphabets, any padding.
        for (text, bytes) in [
            ("aGVsbG8=", &b"hello"[..]),
            ("aGVsbG8", b"hello"),
            ("aGVsbG8===", b"hello"),
            ("-_-_", &[0xfb, 0xff, 0xbf]),
            ("+/+/", &[0xfb, 0xff, 0xbf]),
            ("QR==", b"A"),
            ("abcde", &[0x69, 0xb7, 0x1d]),
        ] {
            assert_eq!(base64_lenient(text).as_deref(), Some(bytes), "{text}");
        }
        assert_eq!(base64_lenient("***"), None);
    }
}
