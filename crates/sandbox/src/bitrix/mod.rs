//! A faithful fake Bitrix24 portal for end-to-end tests and the `livefeed-sandbox` demo.
//!
//! It serves the REST API of an incoming webhook (`/rest/{user}/{secret}/{method}`)
//! as described in `docs/platforms/bitrix24.md`, strict wherever the real server is strict:
//! PHP parameter parsing, PHP `json_encode` output (`\/`, `\uXXXX`, `[]` for empty
//! maps), string-typed numbers in list payloads, odd error codes, the leaky-bucket
//! limiter, `batch` semantics, Live Feed visibility and ordering.
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
//! - Files are stored only as far as posts and comments need them (ids, names,
//!   sizes); there is no Disk API and no event/offline API (`event.*` answer
//!   `403 WRONG_AUTH_TYPE` as for any webhook).
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
//!
//! ```text
//! curl -s localhost:PORT/_sandbox/posts -d '{"author":2,"text":"Hi #team"}' -H 'content-type: application/json'
//! ```

mod batch;
mod config;
mod control;
mod methods;
mod params;
mod portal;
mod server;
mod state;
mod time;
mod value;

pub use config::{
    CommentView, Fault, FaultKind, LeakyBucket, NewPost, NewUser, PortalConfig, PostView,
    RequestRecord, SubCallRecord,
};
pub use portal::FakePortal;
pub use state::SandboxError;
