//! Prometheus metrics (text format on `/metrics`). One explicit registry per bridge instance, so
//! parallel tests never share counters. Labels carry platform, method and kind names only —
//! never ids, URLs or anything user-written.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub source: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EffectLabels {
    pub platform: String,
    pub action: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub platform: String,
    pub method: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlatformLabels {
    pub platform: String,
}

pub struct Metrics {
    registry: Registry,
    pub events_accepted: Family<EventLabels, Counter>,
    pub events_applied: Family<EventLabels, Counter>,
    pub effects: Family<EffectLabels, Counter>,
    pub api_calls: Family<ApiLabels, Counter>,
    pub retries: Family<PlatformLabels, Counter>,
    pub rate_limit_waits: Family<PlatformLabels, Counter>,
    pub lag_seconds: Family<PlatformLabels, Histogram>,
    pub journal_depth: Gauge,
    pub dead_letters: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("livefeed_bridge");
        let events_accepted = Family::<EventLabels, Counter>::default();
        let events_applied = Family::<EventLabels, Counter>::default();
        let effects = Family::<EffectLabels, Counter>::default();
        let api_calls = Family::<ApiLabels, Counter>::default();
        let retries = Family::<PlatformLabels, Counter>::default();
        let rate_limit_waits = Family::<PlatformLabels, Counter>::default();
        let lag_seconds = Family::<PlatformLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.05, 2.0, 14))
        });
        let journal_depth = Gauge::default();
        let dead_letters = Gauge::default();
        registry.register(
            "events_accepted",
            "Inbound events durably accepted into the journal",
            events_accepted.clone(),
        );
        registry.register(
            "events_applied",
            "Journal entries fully applied",
            events_applied.clone(),
        );
        registry.register(
            "effects",
            "Effects on platforms by action and outcome (ok, retry, dead_letter)",
            effects.clone(),
        );
        registry.register(
            "api_calls",
            "Platform API calls by method and outcome",
            api_calls.clone(),
        );
        registry.register("retries", "Retried platform calls", retries.clone());
        registry.register(
            "rate_limit_waits",
            "Times a call waited for a rate limit (client-side pacing or a server's answer)",
            rate_limit_waits.clone(),
        );
        registry.register(
            "lag_seconds",
            "End-to-end lag from the source change to the mirrored effect",
            lag_seconds.clone(),
        );
        registry.register(
            "journal_depth",
            "Accepted events not yet fully applied",
            journal_depth.clone(),
        );
        registry.register(
            "dead_letters",
            "Actions that failed permanently and wait for an operator",
            dead_letters.clone(),
        );
        Metrics {
            registry,
            events_accepted,
            events_applied,
            effects,
            api_calls,
            retries,
            rate_limit_waits,
            lag_seconds,
            journal_depth,
            dead_letters,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn api_call(&self, platform: &str, method: &str, outcome: &str) {
        self.api_calls
            .get_or_create(&ApiLabels {
                platform: platform.into(),
                method: method.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn retry(&self, platform: &str) {
        self.retries
            .get_or_create(&PlatformLabels {
                platform: platform.into(),
            })
            .inc();
    }

    pub fn rate_limit_wait(&self, platform: &str) {
        self.rate_limit_waits
            .get_or_create(&PlatformLabels {
                platform: platform.into(),
            })
            .inc();
    }

    pub fn effect(&self, platform: &str, action: &str, outcome: &str) {
        self.effects
            .get_or_create(&EffectLabels {
                platform: platform.into(),
                action: action.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn accepted(&self, source: &str, kind: &str) {
        self.events_accepted
            .get_or_create(&EventLabels {
                source: source.into(),
                kind: kind.into(),
            })
            .inc();
    }

    pub fn applied(&self, source: &str, kind: &str) {
        self.events_applied
            .get_or_create(&EventLabels {
                source: source.into(),
                kind: kind.into(),
            })
            .inc();
    }

    pub fn lag(&self, platform: &str, seconds: f64) {
        self.lag_seconds
            .get_or_create(&PlatformLabels {
                platform: platform.into(),
            })
            .observe(seconds.max(0.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_text_format() {
        let m = Metrics::new();
        m.api_call("slack", "chat.postMessage", "ok");
        m.journal_depth.set(3);
        let text = m.encode();
        assert!(text.contains(
            "livefeed_bridge_api_calls_total{platform=\"slack\",method=\"chat.postMessage\",outcome=\"ok\"} 1"
        ), "{text}");
        assert!(text.contains("livefeed_bridge_journal_depth 3"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
