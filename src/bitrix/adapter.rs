//! The feed side of the engine: comments the bridge writes and deletes
//! (docs/platforms/bitrix24.md §4.7–4.9).

use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use tracing::debug;

use super::client::{ApiError, BitrixClient, as_list, as_u64, value_text};
use super::intake::{RawPost, parse_date};
use super::people::People;
use super::{DISPLAY_NAME, PLATFORM, bbcode};
use crate::upstream::{Repeat, download};
use livefeed_core::adapters::{BoxFuture, Directory, FeedAdapter};
use livefeed_core::model::{
    Audience, CommentId, Failure, FeedFile, Fetched, FileContent, Platform, PostId,
};
use livefeed_core::richtext::Doc;
use livefeed_core::store::{Store, now_ms};

/// How long an answer of `user.admin` is trusted.
const ADMIN_TTL: Duration = Duration::from_secs(600);

/// How far back reconciliation looks before an intent's start (clock skew, slow requests).
const RECONCILE_SLACK: Duration = Duration::from_secs(300);

/// Comments on feed posts, written and deleted as the webhook's user.
pub struct BitrixFeed {
    client: BitrixClient,
    /// The portal's people by e-mail, for identity links.
    people: Option<People>,
    /// Whether the webhook's user is an administrator, and when that was asked.
    admin: std::sync::Mutex<Option<(bool, std::time::Instant)>>,
    /// The bridge's own records: which comment is on which post, and which feed entry
    /// (`log_id`) is which post, learned from them.
    store: Store,
}

/// A "Duplicate comment" answer refers to a comment the bridge wrote moments ago (a retry of a
/// call whose answer was lost); an identical comment older than this is not adopted.
const DUPLICATE_WINDOW_MS: i64 = 3600 * 1000;

/// What the bridge knows when it looks for its comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Evidence {
    /// Only that a write may have happened (an intent was open).
    MayHaveIt,
    /// The portal answered "Duplicate comment": the post has this text as the bridge user's
    /// latest comment.
    PostHasIt,
}

/// One of the bridge user's own comments, as `log.blogcomment.user.get` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OwnComment {
    comment: CommentId,
    /// The feed entry the comment is on (not the post id).
    log_id: Option<u64>,
    /// The post, where the portal says (older servers).
    post: Option<PostId>,
    text: String,
    /// Unix seconds.
    date: Option<i64>,
    /// Its attached files' names and sizes, sorted.
    files: Vec<(String, u64)>,
}

impl BitrixFeed {
    /// Comments through `client`; `store` holds the bridge's records.
    pub fn new(client: BitrixClient, store: Store) -> Self {
        BitrixFeed {
            client,
            people: None,
            admin: std::sync::Mutex::new(None),
            store,
        }
    }

    /// Look people up by e-mail through `people` (identity links).
    #[must_use]
    pub fn with_directory(mut self, people: People) -> Self {
        self.people = Some(people);
        self
    }

    async fn add(
        &self,
        post: PostId,
        doc: &Doc,
        files: &[FileContent],
        author: Option<&str>,
    ) -> Result<CommentId, Failure> {
        let text = bbcode::render(doc);
        let mut params = json!({ "POST_ID": post.0, "TEXT": text });
        if let Some(user) = author {
            // Honoured for an administrator's webhook only (`writes_as_others` asked first).
            params["USER_ID"] = json!(user);
        }
        if !files.is_empty() {
            // `[[name, base64], …]`, no `data:` prefix (docs/platforms/bitrix24.md §8).
            let base64 = &base64::engine::general_purpose::STANDARD;
            params["FILES"] = files
                .iter()
                .map(|f| json!([f.name, base64.encode(&f.bytes)]))
                .collect();
        }
        match self
            .client
            .call("log.blogcomment.add", params, Repeat::OnlyIfRejected)
            .await
        {
            Ok(resp) => as_u64(&resp.result)
                .map(CommentId)
                .ok_or_else(|| Failure::transient("log.blogcomment.add returned no comment id")),
            // Our latest comment on this post already says exactly this: it was added before.
            Err(e) if e.says("Duplicate comment") && files.is_empty() => {
                let since = now_ms() - DUPLICATE_WINDOW_MS;
                match self
                    .find(post, doc, &[], author, since, Evidence::PostHasIt)
                    .await?
                {
                    Some(id) => Ok(id),
                    None => Err(Failure::permanent(
                        "Bitrix24 reports a duplicate comment the bridge cannot find among its own",
                    )),
                }
            }
            Err(e) => Err(comment_failure(&e)),
        }
    }

    /// One of a post's files: an attached Disk object through `disk.attachedObject.get` and
    /// its `DOWNLOAD_URL`, or an image the post's text shows, by its address.
    async fn fetch(
        &self,
        post: PostId,
        file: &FeedFile,
        max_bytes: u64,
    ) -> Result<Fetched, Failure> {
        if let Some(url) = file.id.strip_prefix("url:") {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(Failure::permanent(format!(
                    "an image in post {post}: not an http(s) address"
                )));
            }
            let what = format!("an image in post {post}");
            return download::fetch(self.client.file_request(url), &file.name, max_bytes, &what)
                .await;
        }
        let object = match self
            .client
            .call(
                "disk.attachedObject.get",
                json!({ "id": file.id }),
                Repeat::Safe,
            )
            .await
        {
            Ok(resp) => resp.result,
            // Taken off the post (or its Disk file deleted) since the post was read; or the
            // credentials lack the `disk` scope, which refuses this file, not the whole side
            // (an auth failure would stop the feed).
            Err(e)
                if ["ERROR_NOT_FOUND", "ACCESS_DENIED", "insufficient_scope"]
                    .contains(&e.code.as_str()) =>
            {
                return Err(Failure::permanent(e.to_string()));
            }
            Err(e) => return Err(e.to_failure()),
        };
        let size = object.get("SIZE").and_then(as_u64).unwrap_or(0);
        if size > max_bytes {
            return Ok(Fetched::TooLarge { size });
        }
        let name = object
            .get("NAME")
            .map(value_text)
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| file.name.clone());
        let url = object
            .get("DOWNLOAD_URL")
            .map(value_text)
            .unwrap_or_default();
        if url.is_empty() {
            return Err(Failure::permanent(format!(
                "Disk file {}: no DOWNLOAD_URL",
                file.id
            )));
        }
        let what = format!("Disk file {}", file.id);
        download::fetch(self.client.file_request(&url), &name, max_bytes, &what).await
    }

    /// The bridge user's comment with this text on `post`, written since `since_ms` and not
    /// yet recorded for another reply (docs/platforms/bitrix24.md §4.9).
    ///
    /// The list names each comment's feed entry (`log_id`), not its post. Comments the
    /// bridge recorded tell which entry is which post; those learned pairs are kept. A comment
    /// is adopted when its entry is known to be `post` (or the portal names the post). While
    /// the post's entry is unknown, nothing is adopted on text alone: the same text on another
    /// post must never be taken. Only when the portal itself said the post has this comment
    /// ("Duplicate comment") is the one unrecorded candidate on an unknown entry taken, or, for
    /// a comment with files (which that rule skips), when the one candidate carries exactly
    /// these files, by name and size.
    async fn find(
        &self,
        post: PostId,
        doc: &Doc,
        files: &[FileContent],
        author: Option<&str>,
        since_ms: i64,
        evidence: Evidence,
    ) -> Result<Option<CommentId>, Failure> {
        let text = bbcode::render(doc);
        let mut params = json!({ "LIMIT": 100 });
        if let Some(user) = author {
            params["USER_ID"] = json!(user);
        }
        let resp = self
            .client
            .call("log.blogcomment.user.get", params, Repeat::Safe)
            .await
            .map_err(|e| e.to_failure())?;
        let comments = own_comments(&resp.result);
        self.learn_entries(&comments);
        let since = (since_ms - RECONCILE_SLACK.as_millis() as i64) / 1000;
        // An administrator reading another user's comments gets them without their text
        // (docs/platforms/bitrix24.md §4.9): then only one candidate on the post is taken.
        let blind = author.is_some() && comments.iter().all(|c| c.text.is_empty());
        let candidates: Vec<&OwnComment> = comments
            .iter()
            .filter(|c| blind || c.text.trim() == text.trim())
            .filter(|c| c.date.is_none_or(|d| d >= since))
            .filter(|c| matches!(self.store.post_of_comment(c.comment), Ok(None)))
            .collect();
        let post_of = |c: &OwnComment| -> Option<PostId> {
            c.post.or_else(|| c.log_id.and_then(|l| self.entry_post(l)))
        };
        let on_post: Vec<CommentId> = candidates
            .iter()
            .filter(|c| post_of(c) == Some(post))
            .filter(|c| !blind || files.is_empty() || c.files == names_and_sizes(files))
            .map(|c| c.comment)
            .collect();
        let on_post = match (blind, on_post.as_slice()) {
            (true, [only]) => Some(*only),
            (true, _) => None,
            (false, found) => found.iter().max().copied(),
        };
        let found = on_post.or_else(|| {
            let unknown: Vec<&&OwnComment> =
                candidates.iter().filter(|c| post_of(c).is_none()).collect();
            match (evidence, self.post_entry_known(post), unknown.as_slice()) {
                // Blind, a lone comment on an unknown entry may be one the person wrote
                // themselves on another post: never taken.
                (Evidence::PostHasIt, false, [only]) if !blind => Some(only.comment),
                (Evidence::MayHaveIt, false, [only])
                    if !blind && !files.is_empty() && only.files == names_and_sizes(files) =>
                {
                    Some(only.comment)
                }
                _ => None,
            }
        });
        debug!(%post, found = ?found, candidates = candidates.len(), "looked for the bridge's own comment");
        Ok(found)
    }

    /// Whether the webhook's user is a portal administrator (`user.admin`), asked at most
    /// every [`ADMIN_TTL`]; while the portal cannot say, no.
    async fn is_admin(&self) -> bool {
        let cached = *self.admin.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((admin, at)) = cached
            && at.elapsed() < ADMIN_TTL
        {
            return admin;
        }
        match self
            .client
            .call("user.admin", json!({}), Repeat::Safe)
            .await
        {
            Ok(resp) => {
                let admin = resp.result.as_bool() == Some(true)
                    || value_text(&resp.result).eq_ignore_ascii_case("true");
                *self.admin.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((admin, std::time::Instant::now()));
                admin
            }
            Err(e) => {
                debug!(error = %e, "user.admin failed; comments keep the attribution for now");
                false
            }
        }
    }

    /// Remember which feed entry is which post, from the comments the bridge has recorded.
    fn learn_entries(&self, comments: &[OwnComment]) {
        for c in comments {
            let (Some(log_id), Ok(Some(post))) = (c.log_id, self.store.post_of_comment(c.comment))
            else {
                continue;
            };
            let _ = self.store.put_cursor(&entry_key(log_id), &post.0);
            let _ = self.store.put_cursor(&post_entry_key(post), &log_id);
        }
    }

    fn entry_post(&self, log_id: u64) -> Option<PostId> {
        self.store
            .cursor::<u64>(&entry_key(log_id))
            .ok()
            .flatten()
            .map(PostId)
    }

    fn post_entry_known(&self, post: PostId) -> bool {
        matches!(self.store.cursor::<u64>(&post_entry_key(post)), Ok(Some(_)))
    }
}

fn entry_key(log_id: u64) -> String {
    format!("{}/entry/{log_id}", PLATFORM.as_str())
}

fn post_entry_key(post: PostId) -> String {
    format!("{}/post-entry/{}", PLATFORM.as_str(), post.0)
}

/// Files as [`OwnComment::files`] lists them.
fn names_and_sizes(files: &[FileContent]) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = files
        .iter()
        .map(|f| (f.name.clone(), f.bytes.len() as u64))
        .collect();
    out.sort();
    out
}

/// The comments of a `log.blogcomment.user.get` answer (lower- or upper-case keys), with the
/// names and sizes of their files from the answer's `files` map.
fn own_comments(result: &serde_json::Value) -> Vec<OwnComment> {
    let comments = result
        .get("comments")
        .or_else(|| result.get("COMMENTS"))
        .map(as_list)
        .unwrap_or_default();
    let described = result.get("files").or_else(|| result.get("FILES"));
    let file = |id: &serde_json::Value| -> Option<(String, u64)> {
        let f = described?.get(value_text(id).as_str())?;
        let field = |k: &str| f.get(k).or_else(|| f.get(k.to_uppercase().as_str()));
        Some((
            field("name").map(value_text)?,
            field("size").and_then(as_u64)?,
        ))
    };
    comments
        .into_iter()
        .filter_map(|c| {
            let field = |k: &str| c.get(k).or_else(|| c.get(k.to_uppercase().as_str()));
            Some(OwnComment {
                comment: CommentId(field("comment_id").and_then(as_u64)?),
                log_id: field("log_id").and_then(as_u64),
                post: field("post_id").and_then(as_u64).map(PostId),
                text: field("text").map(value_text).unwrap_or_default(),
                date: field("date").map(value_text).and_then(|d| parse_date(&d)),
                files: {
                    let mut files: Vec<(String, u64)> = field("attach")
                        .map(as_list)
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(&file)
                        .collect();
                    files.sort();
                    files
                },
            })
        })
        .collect()
}

/// The `DEST` code a post for `audience` is published with.
fn dest_code(audience: Audience) -> String {
    match audience {
        Audience::All => "UA".into(),
        Audience::Group(id) => format!("SG{id}"),
        Audience::Department(id) => format!("DR{id}"),
        Audience::User(id) => format!("U{id}"),
    }
}

/// A post the portal refuses for good: no rights, no such destination or post.
fn post_failure(e: &ApiError) -> Failure {
    let refused = [
        "No write perms",
        "No post found",
        "Wrong post ID",
        "No destination specified",
        "No permissions",
    ];
    if refused.iter().any(|r| e.says(r)) {
        return Failure::permanent(e.to_string());
    }
    e.to_failure()
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
        files: &'a [FileContent],
        author: Option<&'a str>,
    ) -> BoxFuture<'a, Result<CommentId, Failure>> {
        Box::pin(self.add(post, doc, files, author))
    }

    fn writes_as_others(&self) -> BoxFuture<'_, bool> {
        Box::pin(self.is_admin())
    }

    fn fetch_file<'a>(
        &'a self,
        post: PostId,
        file: &'a FeedFile,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<Fetched, Failure>> {
        Box::pin(self.fetch(post, file, max_bytes))
    }

    fn find_comment<'a>(
        &'a self,
        post: PostId,
        doc: &'a Doc,
        files: &'a [FileContent],
        author: Option<&'a str>,
        since_ms: i64,
    ) -> BoxFuture<'a, Result<Option<CommentId>, Failure>> {
        Box::pin(self.find(post, doc, files, author, since_ms, Evidence::MayHaveIt))
    }

    fn directory(&self) -> Option<&dyn Directory> {
        self.people.as_ref().map(|p| p as &dyn Directory)
    }

    fn add_post<'a>(
        &'a self,
        audience: Audience,
        doc: &'a Doc,
        author: Option<&'a str>,
    ) -> BoxFuture<'a, Result<PostId, Failure>> {
        Box::pin(async move {
            let mut params = json!({
                "POST_MESSAGE": bbcode::render(doc),
                "DEST": [dest_code(audience)],
            });
            if let Some(user) = author {
                params["USER_ID"] = json!(user);
            }
            let resp = self
                .client
                .call("log.blogpost.add", params, Repeat::OnlyIfRejected)
                .await
                .map_err(|e| post_failure(&e))?;
            as_u64(&resp.result)
                .map(PostId)
                .ok_or_else(|| Failure::transient("log.blogpost.add returned no post id"))
        })
    }

    fn find_post<'a>(
        &'a self,
        audience: Audience,
        doc: &'a Doc,
        author: Option<&'a str>,
        since_ms: i64,
    ) -> BoxFuture<'a, Result<Option<PostId>, Failure>> {
        Box::pin(async move {
            // The audience's newest posts: a post written moments before a crash is among
            // them. Only one by the writer, with this text, not older than the intent and not
            // recorded for another message is taken.
            let text = bbcode::render(doc);
            let writer = author.and_then(|a| a.parse::<u64>().ok());
            let since = (since_ms - RECONCILE_SLACK.as_millis() as i64) / 1000;
            let resp = self
                .client
                .call(
                    "log.blogpost.get",
                    json!({ "LOG_RIGHTS": [dest_code(audience)] }),
                    Repeat::Safe,
                )
                .await
                .map_err(|e| e.to_failure())?;
            let found: Vec<PostId> = as_list(&resp.result)
                .into_iter()
                .filter_map(RawPost::parse)
                .filter(|p| writer.is_none_or(|w| p.author_id == w))
                .filter(|p| p.text.trim() == text.trim() && p.published_at >= since)
                .map(|p| PostId(p.id))
                // Not the post of another message: those have a person's message as a root.
                .filter(|p| {
                    matches!(self.store.mirrors(*p), Ok(m) if m.iter().all(|(_, m)| !m.foreign))
                })
                .collect();
            debug!(found = ?found, "looked for the post written from chat");
            Ok(match found.as_slice() {
                [only] => Some(*only),
                _ => None,
            })
        })
    }

    fn update_post<'a>(&'a self, post: PostId, doc: &'a Doc) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let params = json!({ "POST_ID": post.0, "POST_MESSAGE": bbcode::render(doc) });
            self.client
                .call("log.blogpost.update", params, Repeat::Safe)
                .await
                .map(drop)
                .map_err(|e| post_failure(&e))
        })
    }

    fn delete_post<'a>(&'a self, post: PostId) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            match self
                .client
                .call(
                    "log.blogpost.delete",
                    json!({ "POST_ID": post.0 }),
                    Repeat::Safe,
                )
                .await
            {
                Ok(_) => Ok(()),
                // Gone already.
                Err(e) if e.says("No post found") || e.says("Wrong post ID") => Ok(()),
                Err(e) => Err(post_failure(&e)),
            }
        })
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
