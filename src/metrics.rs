//! Metrics: a process-wide registry of counters, gauges and histograms, rendered in the Prometheus text format.
//! Whatever reports (a poll, a REST call, the webhook listener) counts here; what is computed at scrape time
//! (per-repository gauges from the database) comes from the caller of [`Metrics::render`]. The listener that
//! serves it is the service's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// A metric's labels: name and value pairs.
pub(crate) type Labels = Vec<(&'static str, String)>;

/// Histogram buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    counters: BTreeMap<(&'static str, Labels), f64>,
    gauges: BTreeMap<(&'static str, Labels), f64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

/// The registry.
#[derive(Default)]
pub(crate) struct Metrics {
    inner: Mutex<Inner>,
}

/// The process-wide registry.
pub(crate) fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

fn labels(l: &[(&'static str, &str)]) -> Labels {
    l.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// What each metric is, for `# HELP` and `# TYPE`.
const HELP: &[(&str, &str, &str)] = &[
    (
        "modelmirror_polls_total",
        "counter",
        "Polls finished, by trigger and result.",
    ),
    (
        "modelmirror_poll_duration_seconds",
        "histogram",
        "How long polls took, from listing refs to the last commit.",
    ),
    (
        "modelmirror_fetch_duration_seconds",
        "histogram",
        "How long listing refs and fetching took.",
    ),
    (
        "modelmirror_fetched_bytes_total",
        "counter",
        "Bytes received from git remotes.",
    ),
    (
        "modelmirror_webhook_deliveries_total",
        "counter",
        "Webhook deliveries, by provider and outcome.",
    ),
    (
        "modelmirror_provider_api_requests_total",
        "counter",
        "REST API requests, by provider and status.",
    ),
    (
        "modelmirror_provider_rate_limit_remaining",
        "gauge",
        "Requests left in the host's rate-limit window, as it last said.",
    ),
    (
        "modelmirror_models",
        "gauge",
        "Models in the catalog, by repository.",
    ),
    (
        "modelmirror_model_errors",
        "gauge",
        "Models that failed to parse, by repository.",
    ),
    (
        "modelmirror_seconds_since_last_check",
        "gauge",
        "Seconds since the last poll of a repository, failed or not.",
    ),
    (
        "modelmirror_seconds_since_last_success",
        "gauge",
        "Seconds since the last successful poll of a repository (grows while it fails).",
    ),
    (
        "modelmirror_repository_failing",
        "gauge",
        "1 when the repository's last poll failed.",
    ),
    (
        "modelmirror_reloads_total",
        "counter",
        "Configuration reloads, by result.",
    ),
    (
        "modelmirror_polls_stuck",
        "gauge",
        "Polls with no sign of life for longer than 5 x the longest git timeout + 60 s.",
    ),
    (
        "modelmirror_web_auth_failures_total",
        "counter",
        "Web catalog requests refused for wrong credentials, by reason (wrong, rate_limited).",
    ),
    (
        "modelmirror_head_checks_total",
        "counter",
        "Batches of default-branch heads asked over GraphQL (head_check = \"graphql\"), by provider.",
    ),
    (
        "modelmirror_commit_statuses_total",
        "counter",
        "Commit statuses sent to the Git host, by provider and outcome (posted, unchanged, retried, failed).",
    ),
    ("modelmirror_up", "gauge", "1 while the service runs."),
    (
        "modelmirror_instance",
        "gauge",
        "1, labelled with this instance's name (instance_name): each instance sharing one database serves its own metrics.",
    ),
];

impl Metrics {
    pub(crate) fn inc(&self, name: &'static str, l: &[(&'static str, &str)], by: f64) {
        let mut i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *i.counters.entry((name, labels(l))).or_default() += by;
    }

    pub(crate) fn set(&self, name: &'static str, l: &[(&'static str, &str)], value: f64) {
        let mut i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        i.gauges.insert((name, labels(l)), value);
    }

    pub(crate) fn observe(&self, name: &'static str, l: &[(&'static str, &str)], d: Duration) {
        let mut i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let h = i.histograms.entry((name, labels(l))).or_default();
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS.len()];
        }
        let s = d.as_secs_f64();
        for (b, c) in BUCKETS.iter().zip(h.counts.iter_mut()) {
            if s <= *b {
                *c += 1;
            }
        }
        h.sum += s;
        h.count += 1;
    }

    /// The registry plus `extra` gauges, in the Prometheus text format.
    pub(crate) fn render(&self, extra: &[(&'static str, Labels, f64)]) -> String {
        let i = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let label_text = |l: &Labels, more: Option<(&str, String)>| {
            let mut parts: Vec<String> = l
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            if let Some((k, v)) = more {
                parts.push(format!("{k}=\"{v}\""));
            }
            if parts.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", parts.join(","))
            }
        };
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((n, l), v) in i.counters.iter().chain(i.gauges.iter()) {
                if n == name {
                    let _ = writeln!(out, "{name}{} {v}", label_text(l, None));
                }
            }
            for (n, l, v) in extra {
                if n == name {
                    let _ = writeln!(out, "{name}{} {v}", label_text(l, None));
                }
            }
            for ((n, l), h) in &i.histograms {
                if n == name {
                    for (b, c) in BUCKETS.iter().zip(&h.counts) {
                        let _ = writeln!(
                            out,
                            "{name}_bucket{} {c}",
                            label_text(l, Some(("le", b.to_string())))
                        );
                    }
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {}",
                        label_text(l, Some(("le", "+Inf".into()))),
                        h.count
                    );
                    let _ = writeln!(out, "{name}_sum{} {}", label_text(l, None), h.sum);
                    let _ = writeln!(out, "{name}_count{} {}", label_text(l, None), h.count);
                }
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::default();
        m.inc(
            "modelmirror_polls_total",
            &[("trigger", "schedule"), ("result", "updated")],
            1.0,
        );
        m.inc(
            "modelmirror_polls_total",
            &[("trigger", "schedule"), ("result", "updated")],
            1.0,
        );
        m.observe(
            "modelmirror_poll_duration_seconds",
            &[],
            Duration::from_millis(200),
        );
        let text = m.render(&[("modelmirror_models", vec![("repo", "a/\"b\"".into())], 3.0)]);
        assert!(text.contains("# TYPE modelmirror_polls_total counter"));
        assert!(
            text.contains("modelmirror_polls_total{trigger=\"schedule\",result=\"updated\"} 2")
        );
        assert!(text.contains("modelmirror_poll_duration_seconds_bucket{le=\"0.25\"} 1"));
        assert!(text.contains("modelmirror_poll_duration_seconds_bucket{le=\"0.1\"} 0"));
        assert!(text.contains("modelmirror_poll_duration_seconds_count 1"));
        assert!(text.contains("modelmirror_models{repo=\"a/\\\"b\\\"\"} 3"));
    }

    /// Every metric docs/operations.md lists can be rendered (a metric missing from `HELP` never shows), and
    /// every metric in `HELP` is documented there.
    #[test]
    fn every_documented_metric_renders() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
                .unwrap();
        let documented: std::collections::BTreeSet<&str> = readme
            .split('`')
            .filter(|w| w.starts_with("modelmirror_"))
            .map(|w| w.split('{').next().unwrap_or(w))
            .collect();
        assert!(documented.len() > 10, "{documented:?}");
        for name in &documented {
            assert!(
                HELP.iter().any(|(n, _, _)| n == name),
                "docs/operations.md names {name}, which /metrics never renders (add it to HELP)"
            );
        }
        for (name, _, _) in HELP {
            assert!(
                documented.contains(name),
                "{name} is rendered but not in docs/operations.md"
            );
        }
    }
}
