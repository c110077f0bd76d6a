//! Intents guard the two effects that are not idempotent, creating a root message and writing a
//! comment. An intent is flushed before the call; found open later, it means "the call may have
//! happened": the engine asks the platform (reconciliation) before it sends again.

use super::{Begin, Inner, IntentState, store_failure};
use crate::model::Failure;
use crate::store::{Intent, now_ms};

impl Inner {
    pub(super) fn intent_state(&self, key: &str) -> Option<IntentState> {
        self.intents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    pub(super) fn set_intent_state(&self, key: &str, state: Option<IntentState>) {
        let mut intents = self.intents.lock().unwrap_or_else(|p| p.into_inner());
        match state {
            Some(s) => {
                intents.insert(key.to_string(), s);
            }
            None => {
                intents.remove(key);
            }
        }
    }

    /// Start a non-idempotent effect guarded by the intent `key`: either it is certainly new
    /// (send), or it may have happened (reconcile first).
    pub(super) async fn begin(&self, key: &str) -> Result<Begin, Failure> {
        match self.intent_state(key) {
            Some(IntentState::Prepared) => {
                self.set_intent_state(key, Some(IntentState::Attempted));
                return Ok(Begin::Send);
            }
            Some(IntentState::Attempted) => {
                let since_ms = self
                    .store
                    .intent(key)
                    .map_err(store_failure)?
                    .map_or(0, |i| i.started_ms);
                return Ok(Begin::Reconcile { since_ms });
            }
            None => {}
        }
        if let Some(intent) = self.store.intent(key).map_err(store_failure)? {
            // Left by an earlier run: the effect may have happened before the stop.
            self.set_intent_state(key, Some(IntentState::Attempted));
            return Ok(Begin::Reconcile {
                since_ms: intent.started_ms,
            });
        }
        self.store
            .put_intent(
                key,
                &Intent {
                    started_ms: now_ms(),
                },
            )
            .map_err(store_failure)?;
        self.store.sync().await.map_err(store_failure)?;
        self.set_intent_state(key, Some(IntentState::Attempted));
        Ok(Begin::Send)
    }
}
