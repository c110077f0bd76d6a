//! A faithful fake Bitrix24 portal for end-to-end tests and the `livefeed-sandbox` demo.
//!
//! It serves the REST API of an incoming webhook (`/rest/{user}/{secret}/{method}`)
//! as described in `docs/platforms/bitrix24.md`, strict wherever the real server is strict:
//! PHP parameter parsing, PHP `json_encode` output (`\/`, `\uXXXX`, `[]` for empty
//! maps), string-typed numbers in list payloads, odd error codes, the leaky-bucket
//! limiter, `batch` semantics, Live Feed visibility and ordering.
//!
//! It also models one **local OAuth app** ([`OAuthApp`], contract §1.5 and §5):
//! - an authorization server on the same listener: `/oauth/token/` (`refresh_token` and
//!   `authorization_code` grants, strict rotation: a used refresh token or code is dead at
//!   once, the previous access token lives until it expires) and `/oauth/authorize/` (302 to
//!   `redirect_uri` with a single-use code valid 30 s); tokens live on the portal clock;
//! - REST at `/rest/{method}` with the token in `Authorization: Bearer`, `auth` or
//!   `access_token` (that precedence), acting as the token's user with the app's scopes,
//!   through the same bucket, faults and request log as the webhook (tokens never logged);
//!   `401 expired_token`, `401 invalid_token` (unknown or revoked), `401 authorization_error`
//!   (the token's user does not exist or is inactive);
//! - `event.bind`/`unbind`/`get`, `events`, `event.offline.get`/`clear`/`error`/`list` for
//!   `ONLIVEFEEDPOSTADD`/`UPDATE`/`DELETE` (webhooks still get `403 WRONG_AUTH_TYPE`);
//! - the offline queue: every post add/edit/delete, from the UI (control API, Rust API), a
//!   webhook or OAuth, queues a row per offline binding, except the app's own OAuth changes
//!   with the binding's `auth_connector`; identical unreserved rows merge; `clear=0`
//!   reservations under a 32-character `process_id`;
//! - online pushes: form-encoded POSTs of the documented fields, sent in order by one
//!   background sender after the change, never retried, with `push_timeout`; pushes carry
//!   a fresh access token of the acting user (or the binding's `auth_type` user).
//!
//! The fake serves **plain HTTP on 127.0.0.1** and accepts it; a real portal answers
//! webhook calls over HTTP with `400 INVALID_REQUEST "Https required."`.
//!
//! # Where the contract is uncertain
//! Defaults follow the documentation; [`PortalConfig`] switches the alternatives
//! (`invalid_credentials_status`, `comment_user_get_post_id`,
//! `comment_user_get_upper_keys`, `legacy_date_format`, `escape_unicode`,
//! `clamp_out_of_range_page`, `cloud`). Other choices:
//! - `log.blogpost.get` cursor mode (`FIRST_ID`/`LAST_ID`/`LIMIT`, any of them present):
//!   over post ids, selected like `log.blogcomment.user.get` (`FIRST_ID`: the `LIMIT`
//!   lowest ids above it; otherwise the highest ids below `LAST_ID`), returned in
//!   activity order, default `LIMIT` 50, max 200, no `total`/`next`.
//! - Offset pages past the end repeat the last page (`CDBResult` clamping).
//! - Injected `OPERATION_TIME_LIMIT` answers carry no `time` (no error does); the
//!   reset time is in `time.operating_reset_at` of the method's successful answers.
//! - `time.start` and `time.processing` alternate between integers and floats.
//! - In-string `batch` references interpolate any scalar; arrays become `"Array"`.
//! - A post's rights (what `LOG_RIGHTS` filters on) are its destinations plus the author's
//!   own `U<author>`, and `G2`/`AU` besides `UA` for posts to everyone, as the blog module
//!   stores them; `HAS_SOCNET_ALL` says whether a post is for everyone.
//! - Administrators (the webhook user by default) see only what their destinations
//!   allow in `log.blogpost.get`, but may comment on, edit and delete any post.
//! - Files (docs/platforms/bitrix24.md §8): `FILES` uploads keep their bytes in the author's
//!   Disk; posts and comments list attached-object ids; `disk.attachedObject.get` and
//!   `disk.file.get` answer with string numbers and a `DOWNLOAD_URL` on this listener
//!   (`/bitrix/tools/disk/uf.php`, token derived from the webhook secret), which serves the
//!   bytes only with that token and a `User-Agent` (nginx's 404 page otherwise). No other Disk
//!   method. `disk.file.get`'s real URL is `/rest/download.json`; the fake serves every
//!   download from one endpoint.
//!
//! Choices for the OAuth app and events (sources: the rest module in
//! `avshatalov48/bitrix-core-business`, the official Python SDK `bitrix24/b24pysdk`):
//! - Token endpoint errors as the SDK's integration tests see them: a wrong `client_id`
//!   is **HTTP 200** `{"error":"wrong_client"}`, a wrong secret `400
//!   {"error":"invalid_client"}`, an unknown, used, expired or revoked refresh token or code
//!   `400 {"error":"invalid_grant"}` (these three without `error_description`), a missing
//!   token or code `400 invalid_request "No \"refresh_token\" parameter found"`, a missing
//!   `grant_type` `400 invalid_request`, another one `400 unsupported_grant_type`. The
//!   client is checked before the grant. `Fault { method: Some("oauth.token") }` (queued
//!   only) fails the token endpoint; `method: None` rules never touch it. The token
//!   endpoint is a separate server in reality: no leaky bucket, not in the request log.
//! - The portal and its OAuth server share one listener, so `domain`, `auth[domain]` and
//!   `server_domain` are `127.0.0.1:PORT`, and `client_endpoint` = `server_endpoint` =
//!   `http://127.0.0.1:PORT/rest/`. `member_id` is the MD5 of `portal_host`. Tokens and
//!   codes are 70 hex digits; `scope` is the app's scopes joined by commas (a real answer
//!   may say `app`).
//! - `/oauth/authorize/` needs no login (the installing admin is "logged in"); a wrong
//!   `client_id` is `400` with an HTML page.
//! - `revoke_grants` invalidates every token and code but keeps bindings and the queue
//!   (an uninstall would drop them; a real revoked token may also answer
//!   `APPLICATION_NOT_FOUND`/`NOT_INSTALLED`, unverified).
//! - A duplicate `event.bind` (same event, handler, `auth_type`, connector) is `400
//!   ERROR_CORE "Unable to set event handler: Handler already binded"` (`EventTable::
//!   checkUniq`). Handler URLs are not validated. Only the three Live Feed events exist
//!   (`events` lists them when the app has scope `log`); any other name, or no `log`
//!   scope, is `400 ERROR_EVENT_NOT_FOUND`. Binding ids start at 727.
//! - One REST request (a whole `batch`) or one UI action is one server hit. As in
//!   `CSocNetLogBlogPostRestProxy`, a post's `ONLIVEFEEDPOSTUPDATE` reaches only the
//!   **first** binding (lowest id) of the event in a hit, and none after the post's
//!   `ONLIVEFEEDPOSTADD` in the same hit; the skipped binding is skipped even when the
//!   first one then drops the event as the app's own change.
//! - Events fire for UI create/edit/delete and for the "important" flag (an edit); not for
//!   shares (the source updates the feed entry only when its sites change) or comments.
//! - `EVENT_ADDITIONAL` is `{"user_id": "<acting user>"}`; `TIMESTAMP_X` has whole
//!   seconds, ties sort by `ID`. `EVENT_DATA.FIELDS.POST_ID` is a JSON number; `ID` a
//!   string. `event.offline.error` follows `markError` (other non-error copies of the
//!   message are dropped; a released row that meets an existing error row merges into it).
//!   A merge into an error row keeps it an error.
//! - `app.info` with a token answers the docs' fields (`CODE` = `client_id`), unverified.
//!
//! # Control API (no auth, not rate limited, not in the request log)
//! | Route | Body | Effect |
//! |---|---|---|
//! | `GET /_sandbox` | | portal summary |
//! | `GET /_sandbox/users` | | users |
//! | `POST /_sandbox/users` | `{name, last_name, photo?, admin?, departments?, active?}` | → `{id}` |
//! | `POST /_sandbox/departments` | `{name, parent?}` | → `{id}` |
//! | `POST /_sandbox/groups` | `{name, members?}` | → `{id}` |
//! | `POST /_sandbox/groups/{id}/members` | `{user}` | add member |
//! | `GET /_sandbox/posts` | | all posts (deleted too) |
//! | `POST /_sandbox/posts` | `{author, title?, text, dest?, important?}` | post as `author` → `{id}` |
//! | `GET /_sandbox/posts/{id}` | | one post |
//! | `PATCH /_sandbox/posts/{id}` | `{title?, text}` | edit (no title: MICRO) |
//! | `DELETE /_sandbox/posts/{id}` | | delete |
//! | `POST /_sandbox/posts/{id}/share` | `{dest: [...]}` | add recipients |
//! | `POST /_sandbox/posts/{id}/important` | `{important}` | flag |
//! | `GET /_sandbox/posts/{id}/comments` | | live comments, oldest first |
//! | `POST /_sandbox/posts/{id}/comments` | `{author, text}` | comment → `{id}` |
//! | `DELETE /_sandbox/comments/{id}` | | delete comment |
//! | `GET /_sandbox/requests` | | REST request log |
//! | `POST /_sandbox/oauth/code` | | authorization code for the app → `{code}` |
//! | `POST /_sandbox/oauth/expire` | | every access token expires now |
//! | `POST /_sandbox/oauth/revoke` | | every token and code stops working |
//! | `GET /_sandbox/events` | | `{bindings, offline, pushes}` |
//!
//! ```text
//! curl -s localhost:PORT/_sandbox/posts -d '{"author":2,"text":"Hi #team"}' -H 'content-type: application/json'
//! ```

mod batch;
mod config;
mod control;
mod events;
mod md5;
mod methods;
mod oauth;
mod params;
mod portal;
mod server;
mod state;
mod time;
mod value;

pub use config::{
    CommentView, EventBinding, Fault, FaultKind, LeakyBucket, NewFile, NewPost, NewUser, OAuthApp,
    OfflineRow, PortalConfig, PostView, PushRecord, RequestRecord, SubCallRecord,
};
pub use portal::FakePortal;
pub use state::SandboxError;
