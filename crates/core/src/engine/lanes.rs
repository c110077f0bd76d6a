//! Lanes: each runs its tasks one after another, retrying transient failures with backoff and
//! turning permanent ones into dead letters, so one slow or broken room never blocks another.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use super::{Inner, IntentState, LANE_BATCH, LaneKey, Task, Ticket};
use crate::model::{ChatEvent, Failure, FailureKind, Inbound};
use crate::store::{
    Intent, chat_post_intent_key, comment_intent_key, now_ms, post_intent_key,
    reply_mirror_intent_key,
};

impl Inner {
    /// A lane: runs its tasks one after another until the engine stops.
    pub(super) async fn lane(
        self: Arc<Self>,
        key: LaneKey,
        mut rx: mpsc::UnboundedReceiver<(Task, Arc<Ticket>)>,
    ) {
        'lane: loop {
            let next = tokio::select! {
                next = rx.recv() => next,
                _ = self.cancel.cancelled() => None,
            };
            let Some(first) = next else { break };
            // Take whatever else is queued: its intents share one flush.
            let mut batch = vec![first];
            while batch.len() < LANE_BATCH {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            self.prepare_intents(&batch).await;
            for (task, ticket) in batch {
                let done = tokio::select! {
                    done = self.run_task(&task) => done,
                    // Stopping mid-effect is safe: the entry stays journaled and any open
                    // intent is reconciled on the next start.
                    _ = self.cancel.cancelled() => false,
                };
                if !done {
                    break 'lane;
                }
                if ticket.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.finish(&ticket);
                    if let Some(source_ms) = ticket.source_ms {
                        // Labelled by where the change was mirrored to.
                        let to = match &key {
                            LaneKey::Room(room) => room.platform.as_str(),
                            LaneKey::Feed(_) => self.feed_platform.as_str(),
                        };
                        self.metrics
                            .lag(to, (now_ms() - source_ms).max(0) as f64 / 1000.0);
                    }
                }
            }
        }
    }

    /// Write the intents of every root message this batch will create, with one flush.
    pub(super) async fn prepare_intents(&self, batch: &[(Task, Arc<Ticket>)]) {
        let mut prepared = Vec::new();
        for (task, _) in batch {
            let Task::SyncMirror { post, room } = task else {
                continue;
            };
            let key = post_intent_key(*post, room);
            let creates = matches!(self.store.post(*post), Ok(Some(r)) if !r.deleted)
                && matches!(self.store.mirror(*post, room), Ok(None))
                && matches!(self.store.intent(&key), Ok(None))
                && self.intent_state(&key).is_none();
            if creates
                && self
                    .store
                    .put_intent(
                        &key,
                        &Intent {
                            started_ms: now_ms(),
                        },
                    )
                    .is_ok()
            {
                prepared.push(key);
            }
        }
        // Unflushed intents stay unmarked: their tasks reconcile first, which is safe.
        if !prepared.is_empty() && self.store.sync().await.is_ok() {
            let mut intents = self.intents.lock().unwrap_or_else(|p| p.into_inner());
            for key in prepared {
                intents.insert(key, IntentState::Prepared);
            }
        }
    }

    pub(super) fn finish(&self, ticket: &Ticket) {
        if let Err(e) = self.store.complete(ticket.seq) {
            warn!(seq = ticket.seq, error = %e, "cannot remove an applied journal entry; it will be replayed");
        }
        self.metrics.applied(ticket.source.as_str(), ticket.kind);
        self.journal.publish_depth();
    }

    /// Run a task to its end: success, or a dead letter. Returns false only if the engine
    /// stopped first.
    pub(super) async fn run_task(&self, task: &Task) -> bool {
        let mut attempt: u32 = 0;
        loop {
            let (platform, action) = self.describe(task);
            let result = self.execute(task).await;
            match &result {
                Err(failure) if failure.kind == FailureKind::Auth => {
                    self.health.error(platform, &failure.reason, true);
                }
                Ok(()) if attempt > 0 => self.health.recovered(platform),
                _ => {}
            }
            match result {
                Ok(()) => return true,
                Err(failure)
                    if matches!(failure.kind, FailureKind::Permanent | FailureKind::Gone) =>
                {
                    self.metrics.effect(platform, action, "dead_letter");
                    self.dead_letter(task, &failure);
                    return true;
                }
                Err(failure) => {
                    attempt += 1;
                    self.metrics.effect(platform, action, "retry");
                    let delay = self.backoff(attempt, &failure);
                    warn!(
                        task = %self.task_label(task),
                        attempt,
                        retry_in_ms = delay.as_millis() as u64,
                        error = %failure,
                        "effect failed; will retry"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.cancel.cancelled() => return false,
                    }
                }
            }
        }
    }

    pub(super) fn backoff(&self, attempt: u32, failure: &Failure) -> Duration {
        let base = self.cfg.retry_base.as_millis() as u64;
        let exp = base.saturating_mul(1u64 << attempt.min(16).saturating_sub(1));
        let mut ms = exp.min(self.cfg.retry_max.as_millis() as u64);
        // ±20% jitter so lanes that failed together do not retry together.
        ms = ms * (80 + fastrand::u64(0..=40)) / 100;
        if failure.kind == FailureKind::Auth {
            // Credentials will not fix themselves quickly: no hot loop.
            ms = ms.max(self.cfg.retry_max.as_millis() as u64);
        }
        let mut delay = Duration::from_millis(ms);
        if let Some(hint) = failure.retry_hint() {
            delay = delay.max(hint);
        }
        delay
    }

    pub(super) fn describe<'a>(&'a self, task: &'a Task) -> (&'a str, &'static str) {
        match task {
            Task::SyncMirror { room, .. } => (room.platform.as_str(), "sync_mirror"),
            Task::Detach { room, .. } => (room.platform.as_str(), "detach"),
            Task::Reply(e) => (self.feed_platform.as_str(), e.kind()),
            Task::MirrorReply { target, .. } => (target.platform.as_str(), "reply_copy"),
        }
    }

    pub(super) fn task_label(&self, task: &Task) -> String {
        match task {
            Task::SyncMirror { post, room } => format!("post {post} → {room}"),
            Task::Detach { post, room, .. } => format!("detach post {post} from {room}"),
            Task::Reply(e) => match e {
                ChatEvent::ReplyPosted { room, reply, .. } => {
                    format!("reply {room}/{reply} → feed")
                }
                ChatEvent::ReplyEdited { room, reply, .. } => {
                    format!("edit of {room}/{reply} → feed")
                }
                ChatEvent::ReplyDeleted { room, reply, .. } => {
                    format!("deletion of {room}/{reply} → feed")
                }
                ChatEvent::MessagePosted { room, message, .. } => {
                    format!("message {room}/{message} → feed post")
                }
                ChatEvent::MessageEdited { room, message, .. } => {
                    format!("edit of {room}/{message} → feed post")
                }
            },
            Task::MirrorReply { event, target } => {
                format!("reply {}/{} → {target}", event.room(), event.reply())
            }
        }
    }

    pub(super) fn dead_letter(&self, task: &Task, failure: &Failure) {
        let event = match task {
            Task::SyncMirror { post, room } => {
                // The creation will not be retried on its own: its intent has no meaning now.
                let key = post_intent_key(*post, room);
                let _ = self.store.remove_intent(&key);
                self.set_intent_state(&key, None);
                Inbound::SyncRoom {
                    post: *post,
                    room: room.clone(),
                }
            }
            Task::Detach { post, room, .. } => Inbound::SyncRoom {
                post: *post,
                room: room.clone(),
            },
            Task::Reply(e) => {
                if let ChatEvent::ReplyPosted { room, reply, .. }
                | ChatEvent::ReplyEdited { room, reply, .. } = e
                {
                    let key = comment_intent_key(room, reply);
                    let _ = self.store.remove_intent(&key);
                    self.set_intent_state(&key, None);
                }
                // Left open, it would keep the room waiting for a post that is not coming.
                if let ChatEvent::MessagePosted { room, message, .. } = e {
                    let key = chat_post_intent_key(room, message);
                    let _ = self.store.remove_intent(&key);
                    self.set_intent_state(&key, None);
                }
                Inbound::Chat(e.clone())
            }
            Task::MirrorReply { event, target } => {
                if let ChatEvent::ReplyPosted { room, reply, .. }
                | ChatEvent::ReplyEdited { room, reply, .. } = event
                {
                    let key = reply_mirror_intent_key(room, reply, target);
                    let _ = self.store.remove_intent(&key);
                    self.set_intent_state(&key, None);
                }
                // Released, the event runs again: its comment and other copies are recorded,
                // so only what is missing happens.
                Inbound::Chat(event.clone())
            }
        };
        let label = self.task_label(task);
        match self
            .store
            .add_dead_letter(label.clone(), failure.reason.clone(), event)
        {
            Ok(letter) => warn!(
                dead_letter = letter.id,
                task = %label,
                error = %failure,
                "permanent failure; moved to dead letters"
            ),
            Err(e) => {
                warn!(task = %label, error = %e, "permanent failure and the dead letter could not be stored")
            }
        }
        self.metrics
            .dead_letters
            .set(self.store.dead_letter_count() as i64);
    }

    pub(super) async fn execute(&self, task: &Task) -> Result<(), Failure> {
        match task {
            Task::SyncMirror { post, room } => self.sync_mirror(*post, room).await,
            Task::Detach {
                post,
                room,
                message,
            } => self.detach(*post, room, message).await,
            Task::Reply(event) => self.apply_reply(event).await,
            Task::MirrorReply { event, target } => self.mirror_reply(event, target).await,
        }
    }
}
