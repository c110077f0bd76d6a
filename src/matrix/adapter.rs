//! The Matrix side of the engine: root messages for feed posts as `m.text` with an HTML
//! `formatted_body`, edits as `m.replace`, deletions as redactions.
//!
//! Every send carries a transaction id derived from what it is (the post for a root message,
//! the content for an edit, the target for a redaction). The homeserver answers a repeated
//! transaction id with the event it already created, so reconciliation after a crash is simply
//! sending again: [`ChatAdapter::find_post`] has nothing to look up.

use std::sync::Arc;

use matrix_sdk::Client;
use matrix_sdk::ruma::events::room::message::{ReplacementMetadata, RoomMessageEventContent};
use matrix_sdk::ruma::{EventId, OwnedTransactionId, RoomId};

use super::html;
use super::session::{http_failure, sdk_failure};
use livefeed_core::adapters::{BoxFuture, ChatAdapter, ChatPost, LayoutOptions};
use livefeed_core::layout::content_hash;
use livefeed_core::metrics::Metrics;
use livefeed_core::model::{Failure, FailureKind, Platform, PostId};

/// Matrix events may be up to 64 KiB; leave room for the HTML and the envelope.
const MAX_BODY_CHARS: usize = 16_000;

pub struct MatrixChat {
    client: Client,
    metrics: Arc<Metrics>,
}

impl MatrixChat {
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        MatrixChat { client, metrics }
    }

    /// Count a homeserver call in `api_calls` (the SDK makes them; we name them by endpoint).
    fn counted<T>(&self, method: &str, result: Result<T, Failure>) -> Result<T, Failure> {
        let outcome = match &result {
            Ok(_) => "ok",
            Err(f) => match f.kind {
                FailureKind::Transient {
                    retry_after: Some(_),
                } => "rate_limited",
                FailureKind::Transient { retry_after: None } => "server_error",
                FailureKind::Auth => "auth_error",
                FailureKind::Permanent => "error",
            },
        };
        self.metrics.api_call("matrix", method, outcome);
        result
    }

    /// The joined room; joins it first if the bot is invited (or the room is public).
    async fn room(&self, room: &str) -> Result<matrix_sdk::Room, Failure> {
        let id = RoomId::parse(room).map_err(|e| Failure::permanent(format!("{room}: {e}")))?;
        match self.client.get_room(&id) {
            Some(r) if r.state() == matrix_sdk::RoomState::Joined => Ok(r),
            _ => {
                let joined = self.client.join_room_by_id(&id).await.map_err(|e| {
                    let f = sdk_failure(&e);
                    if f.is_transient() {
                        f
                    } else {
                        Failure::permanent(format!(
                            "the bot is not in Matrix room {room} and cannot join it: {e}"
                        ))
                    }
                });
                self.counted("join", joined)
            }
        }
    }

    fn content(msg: &ChatPost) -> RoomMessageEventContent {
        RoomMessageEventContent::text_html(
            html::render_plain(&msg.doc),
            html::render_html(&msg.doc),
        )
    }
}

/// Transaction ids: deterministic, so a retried or reconciled send cannot create a second event.
pub fn root_txn(post: PostId) -> OwnedTransactionId {
    format!("lfb-root-{post}").into()
}

fn edit_txn(event: &str, msg: &ChatPost) -> OwnedTransactionId {
    format!("lfb-edit-{:016x}", content_hash(&(event, &msg.doc))).into()
}

fn redact_txn(event: &str) -> OwnedTransactionId {
    format!("lfb-redact-{:016x}", content_hash(&event)).into()
}

impl ChatAdapter for MatrixChat {
    fn platform(&self) -> Platform {
        Platform::Matrix
    }

    fn layout(&self) -> LayoutOptions {
        // Messages are sent as the bot: the author's name goes into the body.
        LayoutOptions {
            author_in_body: true,
            max_body_chars: MAX_BODY_CHARS,
        }
    }

    fn post<'a>(
        &'a self,
        room: &'a str,
        msg: &'a ChatPost,
    ) -> BoxFuture<'a, Result<String, Failure>> {
        Box::pin(async move {
            let room = self.room(room).await?;
            let sent = room
                .send(Self::content(msg))
                .with_transaction_id(root_txn(msg.post))
                .await
                .map_err(|e| sdk_failure(&e));
            let sent = self.counted("send", sent)?;
            Ok(sent.response.event_id.to_string())
        })
    }

    fn find_post<'a>(
        &'a self,
        _room: &'a str,
        _post: PostId,
        _since_ms: i64,
    ) -> BoxFuture<'a, Result<Option<String>, Failure>> {
        // Sending again with the same transaction id returns the existing event.
        Box::pin(async { Ok(None) })
    }

    fn edit<'a>(
        &'a self,
        room: &'a str,
        message: &'a str,
        msg: &'a ChatPost,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let room = self.room(room).await?;
            let target = EventId::parse(message)
                .map_err(|e| Failure::permanent(format!("{message}: {e}")))?;
            let content =
                Self::content(msg).make_replacement(ReplacementMetadata::new(target, None));
            let sent = room
                .send(content)
                .with_transaction_id(edit_txn(message, msg))
                .await
                .map_err(|e| sdk_failure(&e));
            self.counted("send", sent).map(drop)
        })
    }

    fn delete<'a>(&'a self, room: &'a str, message: &'a str) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let room = self.room(room).await?;
            let target = EventId::parse(message)
                .map_err(|e| Failure::permanent(format!("{message}: {e}")))?;
            let redacted = match room
                .redact(
                    &target,
                    Some("deleted in Bitrix24"),
                    Some(redact_txn(message)),
                )
                .await
            {
                Ok(_) => Ok(()),
                Err(e)
                    if matches!(
                        e.client_api_error_kind(),
                        Some(matrix_sdk::ruma::api::error::ErrorKind::NotFound)
                    ) =>
                {
                    Ok(())
                }
                Err(e) => Err(http_failure(&e)),
            };
            self.counted("redact", redacted)
        })
    }
}
