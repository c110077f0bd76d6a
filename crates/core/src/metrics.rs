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
/// Labels of the event counters.
pub struct EventLabels {
    /// Where the event came from (a platform name).
    pub source: String,
    /// What happened (`post_created`, `reply_posted`, …).
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
/// Labels of the effect counter.
pub struct EffectLabels {
    /// Where the effect happened.
    pub platform: String,
    /// What was done (`post`, `edit`, `delete`, `comment_add`, …).
    pub action: String,
    /// `ok`, `retry` or `dead_letter`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
/// Labels of the API call counter.
pub struct ApiLabels {
    /// Which platform was called.
    pub platform: String,
    /// The API method or endpoint name.
    pub method: String,
    /// `ok` or the class of the failure (`rate_limited`, `server_error`, `network_error`,
    /// `auth_error`, `error`).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
/// A platform label alone.
pub struct PlatformLabels {
    /// The platform.
    pub platform: String,
}

/// The bridge's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    /// Inbound events durably journaled.
    pub events_accepted: Family<EventLabels, Counter>,
    /// Journal entries fully applied.
    pub events_applied: Family<EventLabels, Counter>,
    /// Effects on platforms.
    pub effects: Family<EffectLabels, Counter>,
    /// Every platform call.
    pub api_calls: Family<ApiLabels, Counter>,
    /// Retried platform calls.
    pub retries: Family<PlatformLabels, Counter>,
    /// Waits for client-side pacing or a server's rate limit.
    pub rate_limit_waits: Family<PlatformLabels, Counter>,
    /// Source change → mirrored effect.
    pub lag_seconds: Family<PlatformLabels, Histogram>,
    /// Accepted events not yet applied.
    pub journal_depth: Gauge,
    /// Actions waiting for an operator.
    pub dead_letters: Gauge,
    /// Feed deletions held for an operator (posts that vanished and could not be verified).
    pub held_deletions: Gauge,
    /// Events found by catching up after an outage (Slack `conversations.replies`, Matrix
    /// gap filling), by side.
    pub catch_up_events: Family<PlatformLabels, Counter>,
    /// How many configurations were put in force (1 at start, +1 per applied reload).
    pub config_generation: Gauge,
    /// When the configuration in force was loaded (unix seconds).
    pub config_loaded_seconds: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered (no global state: tests run in parallel).
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
        let held_deletions = Gauge::default();
        let catch_up_events = Family::<PlatformLabels, Counter>::default();
        let config_generation = Gauge::default();
        let config_loaded_seconds = Gauge::default();
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
        registry.register(
            "held_deletions",
            "Feed deletions held for an operator (posts that vanished and could not be verified)",
            held_deletions.clone(),
        );
        registry.register(
            "catch_up_events",
            "Events found by catching up after an outage, by side",
            catch_up_events.clone(),
        );
        registry.register(
            "config_generation",
            "Configurations put in force: 1 at start, one more per applied reload",
            config_generation.clone(),
        );
        registry.register(
            "config_loaded_seconds",
            "When the configuration in force was loaded (unix seconds)",
            config_loaded_seconds.clone(),
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
            held_deletions,
            catch_up_events,
            config_generation,
            config_loaded_seconds,
        }
    }

    /// The OpenMetrics text `/metrics` serves.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Count a platform call.
    pub fn api_call(&self, platform: &str, method: &str, outcome: &str) {
        self.api_calls
            .get_or_create(&ApiLabels {
                platform: platform.into(),
                method: method.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Count a retried call.
    pub fn retry(&self, platform: &str) {
        self.retries
            .get_or_create(&PlatformLabels {
                platform: platform.into(),
            })
            .inc();
    }

    /// Count a wait for a rate limit.
    pub fn rate_limit_wait(&self, platform: &str) {
        self.rate_limit_waits
            .get_or_create(&PlatformLabels {
                platform: platform.into(),
            })
            .inc();
    }

    /// Count an effect.
    pub fn effect(&self, platform: &str, action: &str, outcome: &str) {
        self.effects
            .get_or_create(&EffectLabels {
                platform: platform.into(),
                action: action.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Count an event journaled.
    pub fn accepted(&self, source: &str, kind: &str) {
        self.events_accepted
            .get_or_create(&EventLabels {
                source: source.into(),
                kind: kind.into(),
            })
            .inc();
    }

    /// Count a journal entry applied.
    pub fn applied(&self, source: &str, kind: &str) {
        self.events_applied
            .get_or_create(&EventLabels {
                source: source.into(),
                kind: kind.into(),
            })
            .inc();
    }

    /// Count `n` events found by catching up on `side`.
    pub fn caught_up(&self, side: &str, n: u64) {
        self.catch_up_events
            .get_or_create(&PlatformLabels {
                platform: side.into(),
            })
            .inc_by(n);
    }

    /// Record the lag of one mirrored change.
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
