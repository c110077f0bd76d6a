//! `/_sandbox/…`: a small JSON API for driving the portal by hand (curl demos). It acts
//! like people in the Bitrix24 UI: no auth, no rate limit, not in the request log.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use super::config::{CommentView, NewPost, NewUser, PostView};
use super::server::Shared;
use super::state::SandboxError;
use super::time;

type AppState = State<Arc<Shared>>;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_sandbox", get(info))
        .route("/_sandbox/", get(info))
        .route("/_sandbox/users", get(list_users).post(create_user))
        .route("/_sandbox/departments", post(create_department))
        .route("/_sandbox/groups", post(create_group))
        .route("/_sandbox/groups/{id}/members", post(add_member))
        .route("/_sandbox/posts", get(list_posts).post(create_post))
        .route(
            "/_sandbox/posts/{id}",
            get(get_post).patch(edit_post).delete(delete_post),
        )
        .route("/_sandbox/posts/{id}/share", post(share_post))
        .route("/_sandbox/posts/{id}/important", post(set_important))
        .route(
            "/_sandbox/posts/{id}/comments",
            get(list_comments).post(create_comment),
        )
        .route(
            "/_sandbox/comments/{id}",
            axum::routing::delete(delete_comment),
        )
        .route("/_sandbox/requests", get(list_requests))
        .route("/_sandbox/oauth/code", post(oauth_code))
        .route("/_sandbox/oauth/expire", post(oauth_expire))
        .route("/_sandbox/oauth/revoke", post(oauth_revoke))
        .route("/_sandbox/events", get(list_events))
}

fn failure(e: SandboxError) -> Response {
    let status = match e {
        SandboxError::EmptyText => StatusCode::BAD_REQUEST,
        _ => StatusCode::NOT_FOUND,
    };
    (status, Json(json!({ "error": e.to_string() }))).into_response()
}

fn done<T: serde::Serialize>(r: Result<T, SandboxError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => failure(e),
    }
}

fn iso(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    time::format_iso(secs, 0)
}

pub(crate) fn post_json(p: &PostView) -> JsonValue {
    json!({
        "id": p.id, "log_id": p.log_id, "blog_id": p.blog_id, "author": p.author,
        "title": p.title, "micro": p.micro, "text": p.text, "dest": p.dest,
        "important": p.important, "num_comments": p.num_comments, "deleted": p.deleted,
        "published": p.published, "tags": p.tags, "files": p.files,
        "date_publish": iso(p.date_publish), "log_update": iso(p.log_update),
    })
}

fn comment_json(c: &CommentView) -> JsonValue {
    json!({
        "comment_id": c.comment_id, "log_comment_id": c.log_comment_id, "post_id": c.post_id,
        "author": c.author, "text": c.text, "date": iso(c.date), "files": c.files,
    })
}

async fn info(State(s): AppState) -> Json<JsonValue> {
    Json(s.read(|p| {
        json!({
            "portal_host": p.cfg.portal_host,
            "webhook_user": p.cfg.webhook_user,
            "scopes": p.cfg.scopes,
            "users": p.users.len(),
            "posts": p.posts.values().filter(|x| !x.deleted).count(),
            "requests": p.requests.len(),
        })
    }))
}

async fn list_users(State(s): AppState) -> Json<JsonValue> {
    Json(s.read(|p| {
        p.users
            .values()
            .map(|u| {
                json!({
                    "id": u.id, "name": u.name, "last_name": u.last_name, "admin": u.admin,
                    "active": u.active, "departments": u.departments, "photo": u.photo,
                })
            })
            .collect()
    }))
}

#[derive(Deserialize)]
struct UserBody {
    name: String,
    last_name: String,
    photo: Option<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    departments: Vec<u64>,
    active: Option<bool>,
    #[serde(default)]
    email: Option<String>,
}

async fn create_user(State(s): AppState, Json(b): Json<UserBody>) -> Response {
    let u = NewUser {
        name: b.name,
        last_name: b.last_name,
        photo: b.photo,
        admin: b.admin,
        departments: b.departments,
        active: b.active.unwrap_or(true),
        email: b.email,
    };
    done(s.write(|p| p.add_user(u)).map(|id| json!({ "id": id })))
}

#[derive(Deserialize)]
struct DepartmentBody {
    name: String,
    parent: Option<u64>,
}

async fn create_department(State(s): AppState, Json(b): Json<DepartmentBody>) -> Response {
    done(
        s.write(|p| p.add_department(&b.name, b.parent))
            .map(|id| json!({ "id": id })),
    )
}

#[derive(Deserialize)]
struct GroupBody {
    name: String,
    #[serde(default)]
    members: Vec<u64>,
}

async fn create_group(State(s): AppState, Json(b): Json<GroupBody>) -> Response {
    done(s.write(|p| {
        let id = p.add_group(&b.name);
        for m in &b.members {
            p.add_group_member(id, *m)?;
        }
        Ok(json!({ "id": id }))
    }))
}

#[derive(Deserialize)]
struct MemberBody {
    user: u64,
}

async fn add_member(
    State(s): AppState,
    Path(id): Path<u64>,
    Json(b): Json<MemberBody>,
) -> Response {
    done(
        s.write(|p| p.add_group_member(id, b.user))
            .map(|()| json!({})),
    )
}

async fn list_posts(State(s): AppState) -> Json<JsonValue> {
    Json(s.read(|p| {
        p.posts
            .values()
            .map(|x| post_json(&p.post_view(x)))
            .collect()
    }))
}

#[derive(Deserialize)]
struct PostBody {
    author: u64,
    title: Option<String>,
    text: String,
    #[serde(default)]
    dest: Vec<String>,
    #[serde(default)]
    important: bool,
}

async fn create_post(State(s): AppState, Json(b): Json<PostBody>) -> Response {
    let new = NewPost {
        title: b.title,
        text: b.text,
        dest: b.dest,
        important: b.important,
        files: Vec::new(),
    };
    done(
        s.write(|p| p.ui_create_post(b.author, new))
            .map(|id| json!({ "id": id })),
    )
}

async fn get_post(State(s): AppState, Path(id): Path<u64>) -> Response {
    done(s.read(|p| {
        p.posts
            .get(&id)
            .map(|x| post_json(&p.post_view(x)))
            .ok_or(SandboxError::UnknownPost(id))
    }))
}

#[derive(Deserialize)]
struct EditBody {
    title: Option<String>,
    text: String,
}

async fn edit_post(State(s): AppState, Path(id): Path<u64>, Json(b): Json<EditBody>) -> Response {
    done(
        s.write(|p| p.ui_update_post(id, b.title, &b.text))
            .map(|()| json!({})),
    )
}

async fn delete_post(State(s): AppState, Path(id): Path<u64>) -> Response {
    done(s.write(|p| p.ui_delete_post(id)).map(|()| json!({})))
}

#[derive(Deserialize)]
struct ShareBody {
    dest: Vec<String>,
}

async fn share_post(State(s): AppState, Path(id): Path<u64>, Json(b): Json<ShareBody>) -> Response {
    done(s.write(|p| p.ui_share_post(id, b.dest)).map(|()| json!({})))
}

#[derive(Deserialize)]
struct ImportantBody {
    important: bool,
}

async fn set_important(
    State(s): AppState,
    Path(id): Path<u64>,
    Json(b): Json<ImportantBody>,
) -> Response {
    done(
        s.write(|p| p.ui_set_important(id, b.important))
            .map(|()| json!({})),
    )
}

async fn list_comments(State(s): AppState, Path(id): Path<u64>) -> Response {
    done(s.read(|p| {
        p.posts
            .get(&id)
            .ok_or(SandboxError::UnknownPost(id))
            .map(|_| {
                p.comment_views(id)
                    .iter()
                    .map(comment_json)
                    .collect::<Vec<_>>()
            })
    }))
}

#[derive(Deserialize)]
struct CommentBody {
    author: u64,
    text: String,
}

async fn create_comment(
    State(s): AppState,
    Path(id): Path<u64>,
    Json(b): Json<CommentBody>,
) -> Response {
    done(
        s.write(|p| p.ui_add_comment(id, b.author, &b.text))
            .map(|cid| json!({ "id": cid })),
    )
}

async fn delete_comment(State(s): AppState, Path(id): Path<u64>) -> Response {
    done(s.write(|p| p.ui_delete_comment(id)).map(|()| json!({})))
}

async fn list_requests(State(s): AppState) -> Json<JsonValue> {
    Json(s.read(|p| json!(p.requests)))
}

async fn oauth_code(State(s): AppState) -> Json<JsonValue> {
    let code = s.write(|p| {
        let user = p.oauth_user();
        p.mint_code(user)
    });
    Json(json!({ "code": code }))
}

async fn oauth_expire(State(s): AppState) -> Json<JsonValue> {
    s.write(|p| p.expire_access_tokens());
    Json(json!({}))
}

async fn oauth_revoke(State(s): AppState) -> Json<JsonValue> {
    s.write(|p| p.revoke_grants());
    Json(json!({}))
}

async fn list_events(State(s): AppState) -> Json<JsonValue> {
    Json(s.read(|p| {
        let offline: Vec<JsonValue> = p
            .offline_views()
            .iter()
            .map(|r| {
                let mut v = json!(r);
                v["timestamp"] = json!(iso(r.timestamp));
                v
            })
            .collect();
        json!({
            "bindings": p.binding_views(),
            "offline": offline,
            "pushes": p.events.pushes,
        })
    }))
}
