//! Client-side pacing: a token bucket per key, so the bridge stays under the platforms' limits
//! instead of discovering them through errors.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A configured rate: `per_second` sustained, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Calls per second, sustained.
    pub per_second: f64,
    /// Calls allowed at once after a quiet period.
    pub burst: u32,
}

/// A token bucket: `burst` tokens, refilled at `per_second`.
#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket for `rate`.
    pub fn new(rate: RateLimit) -> Self {
        let burst = f64::from(rate.burst.max(1));
        TokenBucket {
            per_second: rate.per_second.max(f64::MIN_POSITIVE),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Take a token, waiting as long as needed. Returns whether it had to wait.
    pub async fn acquire(&self) -> bool {
        let mut waited = false;
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
                s.0 = (s.0 + elapsed * self.per_second).min(self.burst);
                s.1 = now;
                if s.0 >= 1.0 {
                    s.0 -= 1.0;
                    return waited;
                }
                Duration::from_secs_f64((1.0 - s.0) / self.per_second)
            };
            waited = true;
            tokio::time::sleep(wait).await;
        }
    }
}

/// One bucket per key (e.g. per Slack channel), created on first use.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    rate: RateLimit,
    buckets: Mutex<HashMap<K, std::sync::Arc<TokenBucket>>>,
}

impl<K: Hash + Eq + Clone> KeyedBuckets<K> {
    /// No buckets yet; each key gets a full one for `rate` on first use.
    pub fn new(rate: RateLimit) -> Self {
        KeyedBuckets {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub async fn acquire(&self, key: &K) -> bool {
        let bucket = {
            let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone())
                .or_insert_with(|| std::sync::Arc::new(TokenBucket::new(self.rate)))
                .clone()
        };
        bucket.acquire().await
    }
}

/// "Do not call before" deadlines per key, set from a server's `Retry-After`.
#[derive(Debug, Default)]
pub struct Blocks<K> {
    until: Mutex<HashMap<K, Instant>>,
}

impl<K: Hash + Eq + Clone> Blocks<K> {
    pub fn new() -> Self {
        Blocks {
            until: Mutex::new(HashMap::new()),
        }
    }

    pub fn block(&self, key: K, for_: Duration) {
        let until = Instant::now() + for_;
        let mut map = self.until.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(key).or_insert(until);
        if *entry < until {
            *entry = until;
        }
    }

    /// Wait until `key` is no longer blocked. Returns whether it had to wait.
    pub async fn wait(&self, key: &K) -> bool {
        let mut waited = false;
        loop {
            let until = {
                let map = self.until.lock().unwrap_or_else(|p| p.into_inner());
                map.get(key).copied()
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
        for _ in 0..3 {
            assert!(!b.acquire().await);
        }
        assert!(b.acquire().await);
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(499) && elapsed < Duration::from_millis(600),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn blocks_hold_until_deadline() {
        let blocks = Blocks::new();
        blocks.block("chat.postMessage", Duration::from_secs(3));
        let start = Instant::now();
        assert!(blocks.wait(&"chat.postMessage").await);
        assert!(start.elapsed() >= Duration::from_secs(3));
        assert!(!blocks.wait(&"other").await);
    }
}
