//! Any body as a delivery from each kind of host, with the headers that host sends for a push: mapping it
//! must answer (a delivery or an error) without panicking.
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use modelmirror::forge::ProviderKind;

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fuzz_target!(|data: &[u8]| {
    let cases = [
        (
            ProviderKind::Gitlab,
            headers(&[("x-gitlab-event", "Push Hook")]),
        ),
        (
            ProviderKind::Gitlab,
            headers(&[("x-gitlab-event", "System Hook")]),
        ),
        (ProviderKind::Github, headers(&[("x-github-event", "push")])),
        (ProviderKind::Github, headers(&[("x-github-event", "ping")])),
        (
            ProviderKind::BitbucketCloud,
            headers(&[("x-event-key", "repo:push")]),
        ),
        (
            ProviderKind::BitbucketDatacenter,
            headers(&[("x-event-key", "repo:refs_changed")]),
        ),
    ];
    for (kind, h) in &cases {
        let _ = kind.parse_webhook(h, data);
    }
});
