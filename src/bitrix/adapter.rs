//! The feed side of the engine: comments the bridge writes and deletes
//! (docs/platforms/bitrix24.md §4.7–4.9).

use std::time::Duration;

use serde_json::json;
use tracing::debug;

use super::client::{ApiError, BitrixClient, as_list, as_u64, value_text};
use super::intake::parse_date;
use super::{DISPLAY_NAME, PLATFORM, bbcode};
use crate::upstream::Repeat;
use livefeed_core::adapters::{BoxFuture, FeedAdapter};
use livefeed_core::model::{CommentId, Failure, Platform, PostId};
use livefeed_core::richtext::Doc;

/// How far back reconciliation looks before an intent's start (clock skew, slow requests).
const RECONCILE_SLACK: Duration = Duration::from_secs(300);

/// Comments on feed posts, written and deleted as the webhook's user.
pub struct BitrixFeed {
    client: BitrixClient,
}

impl BitrixFeed {
    /// Comments through `client`.
    pub fn new(client: BitrixClient) -> Self {
        BitrixFeed { client }
    }

    async fn add(&self, post: PostId, doc: &Doc) -> Result<CommentId, Failure> {
        let text = bbcode::render(doc);
        let params = json!({ "POST_ID": post.0, "TEXT": text });
        match self
            .client
            .call("log.blogcomment.add", params, Repeat::OnlyIfRejected)
            .await
        {
            Ok(resp) => as_u64(&resp.result)
                .map(CommentId)
                .ok_or_else(|| Failure::transient("log.blogcomment.add returned no comment id")),
            // Our latest comment on this post already says exactly this: it was added before.
            Err(e) if e.says("Duplicate comment") => match self.find(post, doc, 0).await? {
                Some(id) => Ok(id),
                None => Err(Failure::permanent(
                    "Bitrix24 reports a duplicate comment the bridge cannot find among its own",
                )),
            },
            Err(e) => Err(comment_failure(&e)),
        }
    }

    /// The bridge user's own comments, newest first, matched on exact text.
    async fn find(
        &self,
        post: PostId,
        doc: &Doc,
        since_ms: i64,
    ) -> Result<Option<CommentId>, Failure> {
        let text = bbcode::render(doc);
        let resp = self
            .client
            .call(
                "log.blogcomment.user.get",
                json!({ "LIMIT": 100 }),
                Repeat::Safe,
            )
            .await
            .map_err(|e| e.to_failure())?;
        // Older servers used upper-case keys.
        let comments = resp
            .result
            .get("comments")
            .or_else(|| resp.result.get("COMMENTS"))
            .map(as_list)
            .unwrap_or_default();
        let since = (since_ms - RECONCILE_SLACK.as_millis() as i64) / 1000;
        let found = comments
            .into_iter()
            .filter(|c| {
                let field = |k: &str| c.get(k).or_else(|| c.get(k.to_uppercase().as_str()));
                let same_text =
                    field("text").map(value_text).as_deref().map(str::trim) == Some(text.trim());
                // `post_id` only on older servers; `log_id` is a feed entry id, not the post's.
                let same_post = field("post_id")
                    .and_then(as_u64)
                    .is_none_or(|p| p == post.0);
                let recent = since <= 0
                    || field("date")
                        .map(value_text)
                        .and_then(|d| parse_date(&d))
                        .is_none_or(|t| t >= since);
                same_text && same_post && recent
            })
            .filter_map(|c| {
                c.get("comment_id")
                    .or_else(|| c.get("COMMENT_ID"))
                    .and_then(as_u64)
            })
            .max();
        debug!(%post, found = ?found, "looked for the bridge's own comment");
        Ok(found.map(CommentId))
    }
}

fn comment_failure(e: &ApiError) -> Failure {
    // The post is gone or closed to us: this comment can never be written.
    if e.says("No post found") || e.says("No permissions") || e.says("No blog found") {
        return Failure::permanent(e.to_string());
    }
    e.to_failure()
}

impl FeedAdapter for BitrixFeed {
    fn platform(&self) -> Platform {
        PLATFORM
    }

    fn display_name(&self) -> &str {
        DISPLAY_NAME
    }

    fn add_comment<'a>(
        &'a self,
        post: PostId,
        doc: &'a Doc,
    ) -> BoxFuture<'a, Result<CommentId, Failure>> {
        Box::pin(self.add(post, doc))
    }

    fn find_comment<'a>(
        &'a self,
        post: PostId,
        doc: &'a Doc,
        since_ms: i64,
    ) -> BoxFuture<'a, Result<Option<CommentId>, Failure>> {
        Box::pin(self.find(post, doc, since_ms))
    }

    fn delete_comment<'a>(&'a self, comment: CommentId) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let params = json!({ "COMMENT_ID": comment.0 });
            match self
                .client
                .call("log.blogcomment.delete", params, Repeat::Safe)
                .await
            {
                Ok(_) => Ok(()),
                // Gone already. Bitrix24 checks permissions before existence, so a missing
                // comment also answers "No delete perms"; the bridge only deletes its own
                // comments, which it may always delete.
                Err(e) if e.says("No comment found") || e.says("No delete perms") => Ok(()),
                Err(e) => Err(comment_failure(&e)),
            }
        })
    }
}
