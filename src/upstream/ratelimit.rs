//! Client-side pacing: a token bucket per key, so the bridge stays under the platforms' limits
//! instead of discovering them through errors.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use livefeed_core::store::{Store, now_ms};
use tokio::time::Instant;

/// A configured rate: `per_second` sustained, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Calls per second, sustained.
    pub per_second: f64,
    /// Calls allowed at once after a quiet period.
    pub burst: u32,
}

/// How much slower than the configured rate a bucket refills: enough that the bridge's clock and
/// the platform's never drift into the platform's last token, and no more.
pub const PACING_MARGIN: f64 = 0.005;

fn paced(per_second: f64) -> f64 {
    (per_second * (1.0 - PACING_MARGIN)).max(f64::MIN_POSITIVE)
}

/// How many of the platform's burst tokens the bridge leaves unused. A call sent on time can
/// still reach the platform early (scheduling, the network, a slow call before it arriving
/// late), and a platform that counts it early answers 429, which costs a whole `Retry-After`
/// second on that key. With one token left in the platform's bucket, an arrival up to one
/// interval early still finds a token; keeping it costs one call's worth once, where pacing a
/// few percent under the rate would cost those percent for the whole run.
pub const BURST_RESERVE: u32 = 1;

fn usable_burst(burst: u32) -> f64 {
    let burst = burst.max(1);
    f64::from(if burst > BURST_RESERVE {
        burst - BURST_RESERVE
    } else {
        burst
    })
}

/// A token bucket: the platform's `burst` less [`BURST_RESERVE`], refilled just under
/// `per_second` ([`PACING_MARGIN`]). The rate can change while it runs (a configuration
/// reload); the tokens it holds stay.
#[derive(Debug)]
pub struct TokenBucket {
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    per_second: f64,
    burst: f64,
}

impl TokenBucket {
    /// A full bucket for `rate`.
    pub fn new(rate: RateLimit) -> Self {
        let burst = usable_burst(rate.burst);
        TokenBucket {
            state: Mutex::new(Bucket {
                tokens: burst,
                at: Instant::now(),
                per_second: paced(rate.per_second),
                burst,
            }),
        }
    }

    /// Pace at `rate` from now on.
    pub fn set_rate(&self, rate: RateLimit) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.per_second = paced(rate.per_second);
        s.burst = usable_burst(rate.burst);
        s.tokens = s.tokens.min(s.burst);
    }

    /// Give back a token taken and not used.
    pub fn refund(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.tokens = (s.tokens + 1.0).min(s.burst);
    }

    /// Take a token, waiting as long as needed. Returns whether it had to wait.
    pub async fn acquire(&self) -> bool {
        let mut waited = false;
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let elapsed = now.saturating_duration_since(s.at).as_secs_f64();
                s.tokens = (s.tokens + elapsed * s.per_second).min(s.burst);
                s.at = now;
                if s.tokens >= 1.0 {
                    s.tokens -= 1.0;
                    return waited;
                }
                Duration::from_secs_f64((1.0 - s.tokens) / s.per_second)
            };
            waited = true;
            tokio::time::sleep(wait).await;
        }
    }
}

/// One bucket per key (e.g. per Slack channel), created on first use.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    rate: Mutex<RateLimit>,
    buckets: Mutex<HashMap<K, std::sync::Arc<TokenBucket>>>,
}

impl<K: Hash + Eq + Clone> KeyedBuckets<K> {
    /// No buckets yet; each key gets a full one for `rate` on first use.
    pub fn new(rate: RateLimit) -> Self {
        KeyedBuckets {
            rate: Mutex::new(rate),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Pace every key at `rate` from now on.
    pub fn set_rate(&self, rate: RateLimit) {
        *self.rate.lock().unwrap_or_else(|p| p.into_inner()) = rate;
        for bucket in self
            .buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            bucket.set_rate(rate);
        }
    }

    pub async fn acquire(&self, key: &K) -> bool {
        let bucket = {
            let rate = *self.rate.lock().unwrap_or_else(|p| p.into_inner());
            let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone())
                .or_insert_with(|| std::sync::Arc::new(TokenBucket::new(rate)))
                .clone()
        };
        bucket.acquire().await
    }
}

/// How long every call waits after a crash: the shortest `Retry-After` platforms give (Slack
/// answers at least one second), which the crashed process may have been told and not kept.
pub const CRASH_GRACE: Duration = Duration::from_secs(1);

/// "Do not call before" deadlines per key, set from a server's `Retry-After`. With a store,
/// the deadlines survive a restart: a wait a platform asked for before a crash is still
/// honoured after it (Slack counts calls made inside the window against the app).
#[derive(Default)]
pub struct Blocks {
    until: Mutex<HashMap<String, Instant>>,
    /// Every key is held until then (a grace after a crash).
    all_until: Option<Instant>,
    /// Where deadlines are kept, and the key prefix of this set of blocks.
    store: Option<(Store, String)>,
}

impl Blocks {
    /// Deadlines in memory only.
    pub fn new() -> Self {
        Blocks::default()
    }

    /// Deadlines kept in `store` under `ratelimit/<namespace>/`; the ones still running are
    /// loaded now. After a crash every key is also held for [`CRASH_GRACE`]: a limit the
    /// platform announced in the crash's last moments never reached the store.
    pub fn persistent(store: Store, namespace: &str) -> Self {
        let prefix = format!("ratelimit/{namespace}/");
        let mut until = HashMap::new();
        let now_unix = now_ms();
        let now = Instant::now();
        for (key, until_ms) in store
            .cursors_with_prefix::<i64>(&prefix)
            .unwrap_or_default()
        {
            if until_ms > now_unix {
                let left = Duration::from_millis((until_ms - now_unix) as u64);
                until.insert(key[prefix.len()..].to_string(), now + left);
            } else {
                let _ = store.remove_cursor(&key);
            }
        }
        let all_until = store.after_crash().then(|| now + CRASH_GRACE);
        Blocks {
            until: Mutex::new(until),
            all_until,
            store: Some((store, prefix)),
        }
    }

    /// Hold `key` for `for_` (a longer hold already running stays).
    pub async fn block(&self, key: &str, for_: Duration) {
        let until = Instant::now() + for_;
        {
            let mut map = self.until.lock().unwrap_or_else(|p| p.into_inner());
            let entry = map.entry(key.to_string()).or_insert(until);
            if *entry < until {
                *entry = until;
            }
        }
        if let Some((store, prefix)) = &self.store {
            let until_ms = now_ms() + for_.as_millis() as i64;
            let written = store.put_cursor(&format!("{prefix}{key}"), &until_ms);
            if written.is_ok() {
                // Durable before the next call: a crash right after must not forget it.
                let _ = store.sync().await;
            }
        }
    }

    /// Wait until `key` is no longer blocked. Returns whether it had to wait.
    pub async fn wait(&self, key: &str) -> bool {
        let mut waited = false;
        loop {
            let until = {
                let map = self.until.lock().unwrap_or_else(|p| p.into_inner());
                map.get(key).copied().max(self.all_until)
            };
            match until {
                Some(t) if t > Instant::now() => {
                    waited = true;
                    tokio::time::sleep_until(t).await;
                }
                _ => return waited,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_burst_then_paces() {
        let b = TokenBucket::new(RateLimit {
            per_second: 2.0,
            burst: 3,
        });
        let start = Instant::now();
        // The burst less the one token left to the platform.
        for _ in 0..2 {
            assert!(!b.acquire().await);
        }
        assert!(b.acquire().await);
        // One token at 99.5% of 2/s: 502.5 ms, never earlier than the platform's 500 ms.
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_micros(502_500) && elapsed < Duration::from_millis(510),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn blocks_hold_until_deadline() {
        let blocks = Blocks::new();
        blocks
            .block("chat.postMessage", Duration::from_secs(3))
            .await;
        let start = Instant::now();
        assert!(blocks.wait("chat.postMessage").await);
        assert!(start.elapsed() >= Duration::from_secs(3));
        assert!(!blocks.wait("other").await);
    }

    #[tokio::test]
    async fn persistent_blocks_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let blocks = Blocks::persistent(store.clone(), "slack");
            blocks
                .block("chat.postMessage/C1", Duration::from_millis(400))
                .await;
            blocks.block("expired", Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let store = Store::open_waiting(dir.path(), Duration::from_secs(5))
            .await
            .unwrap();
        let blocks = Blocks::persistent(store.clone(), "slack");
        let start = Instant::now();
        assert!(
            blocks.wait("chat.postMessage/C1").await,
            "still held after the restart"
        );
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert!(!blocks.wait("expired").await);
        assert_eq!(
            store
                .cursors_with_prefix::<i64>("ratelimit/slack/expired")
                .unwrap()
                .len(),
            0,
            "expired deadlines are forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_crash_every_call_waits_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap()); // not closed: a crash
        let store = Store::open_waiting(dir.path(), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(store.after_crash());
        let blocks = Blocks::persistent(store, "slack");
        let start = Instant::now();
        assert!(blocks.wait("anything").await);
        assert!(start.elapsed() >= CRASH_GRACE);
    }
}
