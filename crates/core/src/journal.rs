//! The journal's front door: intakes hand over what they noticed; once [`Journal::accept`]
//! returns, the events are durable and the intake may acknowledge its source (ARCHITECTURE.md,
//! "Accept durably, then acknowledge").

use std::sync::Arc;

use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::model::{Inbound, Platform};
use super::store::{JournalEntry, Store, StoreError, now_ms};
use crate::metrics::Metrics;

/// What an intake accepts in one step.
#[derive(Debug, Default)]
pub struct Batch {
    /// Events with their source time (unix ms), if known.
    pub events: Vec<(Inbound, Option<i64>)>,
    /// Intake bookkeeping written in the same transaction (e.g. the poll state).
    pub cursors: Vec<(String, Vec<u8>)>,
    /// Source event ids to remember for deduplication.
    pub dedupe: Vec<String>,
}

impl Batch {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.cursors.is_empty() && self.dedupe.is_empty()
    }
}

/// Accepts events durably and wakes the engine. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    store: Store,
    /// The feed's name: the `source` label of events about posts.
    feed: Platform,
    notify: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// The number of entries not yet applied, published on every change.
    depth: Arc<watch::Sender<usize>>,
}

impl Journal {
    /// A journal in `store`; `feed` names the feed in the metrics of the events it accepts.
    pub fn new(store: Store, metrics: Arc<Metrics>, feed: Platform) -> Self {
        let depth = Arc::new(watch::channel(store.journal_depth()).0);
        Journal {
            store,
            feed,
            notify: Arc::new(Notify::new()),
            metrics,
            depth,
        }
    }

    /// Durably accept a batch (one transaction, one group-committed flush), then wake the
    /// engine.
    pub async fn accept(&self, batch: Batch) -> Result<(), StoreError> {
        self.accept_with(batch, true).await
    }

    /// Accept a batch from a source that can be read again (the feed poll: the batch carries
    /// the poll's own cursor) in one transaction, without waiting for its flush. A crash
    /// before the next flush loses the entries and the cursor together, and the next read
    /// finds the same changes; the first flush after it (at the latest, the intent's flush
    /// before a message is sent) makes both durable. This saves a new post one flush on its
    /// way to the rooms. Never for a source that is acknowledged after accepting.
    pub async fn accept_repeatable(&self, batch: Batch) -> Result<(), StoreError> {
        self.accept_with(batch, false).await
    }

    async fn accept_with(&self, batch: Batch, flush: bool) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let accepted_ms = now_ms();
        let entries: Vec<JournalEntry> = batch
            .events
            .iter()
            .map(|(event, source_ms)| JournalEntry {
                accepted_ms,
                source_ms: *source_ms,
                event: event.clone(),
            })
            .collect();
        self.store.append(&entries, &batch.cursors, &batch.dedupe)?;
        crate::crashpoint::hit("journal.appended");
        if flush {
            self.store.sync().await?;
        }
        for (event, _) in &batch.events {
            self.metrics
                .accepted(event.source(&self.feed).as_str(), event.kind());
        }
        self.publish_depth();
        if !entries.is_empty() {
            self.wake();
        }
        Ok(())
    }

    /// Tell the engine the journal grew (e.g. after the store appended a refresh).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Re-read the journal's depth and tell whoever watches it.
    pub fn publish_depth(&self) {
        let depth = self.store.journal_depth();
        self.metrics.journal_depth.set(depth as i64);
        self.depth.send_replace(depth);
    }

    /// Wait until every accepted entry has been applied; false on timeout.
    pub async fn wait_drained(&self, timeout: Duration) -> bool {
        let mut rx = self.depth.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|d| *d == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub(crate) fn notify(&self) -> &Notify {
        &self.notify
    }

    /// The bridge's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The store the journal lives in.
    pub fn store(&self) -> &Store {
        &self.store
    }
}
