//! The `/_sandbox/…` JSON control API for manual demos (routes listed in the module doc of
//! `sandbox::slack`). Every input error is a 400 with `{"ok":false,"error":…}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{FakeSlack, NewUser, Shared};

type St = State<Arc<Shared>>;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_sandbox/state", get(state))
        .route("/_sandbox/users", get(list_users).post(add_user))
        .route("/_sandbox/channels", get(list_channels).post(add_channel))
        .route("/_sandbox/channels/{id}/archive", post(archive))
        .route("/_sandbox/channels/{id}/bot_member", post(bot_member))
        .route("/_sandbox/post", post(post_msg))
        .route("/_sandbox/reply", post(reply))
        .route("/_sandbox/edit", post(edit))
        .route("/_sandbox/delete", post(delete))
        .route("/_sandbox/react", post(react))
        .route("/_sandbox/history/{channel}", get(history))
        .route("/_sandbox/thread/{channel}/{ts}", get(thread))
        .route("/_sandbox/requests", get(requests))
        .route("/_sandbox/events", get(events))
        .route("/_sandbox/disconnect", post(disconnect))
        .route("/_sandbox/events_url", post(events_url))
}

fn fake(sh: Arc<Shared>) -> FakeSlack {
    FakeSlack(sh)
}

/// A control-API input error: HTTP 400 with Slack-style JSON.
struct Bad(String);

impl IntoResponse for Bad {
    fn into_response(self) -> Response {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"ok": false, "error": self.0})),
        )
            .into_response()
    }
}

fn bad(e: impl std::fmt::Display) -> Bad {
    Bad(e.to_string())
}

type Out = Result<Response, Bad>;

fn good(v: Value) -> Response {
    let mut v = v;
    if let Value::Object(o) = &mut v {
        o.insert("ok".into(), json!(true));
    }
    axum::Json(v).into_response()
}

fn body<T: DeserializeOwned>(b: &Bytes) -> Result<T, Bad> {
    serde_json::from_slice(b).map_err(|e| bad(format!("invalid body: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn known_channel(f: &FakeSlack, id: &str) -> Result<(), Bad> {
    if f.0.lock().ws.channels.contains_key(id) {
        Ok(())
    } else {
        Err(bad(format!("unknown channel {id}")))
    }
}

async fn state(State(sh): St) -> Out {
    let f = fake(sh);
    let c = f.config();
    Ok(good(json!({
        "team_id": c.team_id, "app_id": c.app_id, "bot_id": c.bot_id,
        "bot_user_id": c.bot_user_id, "api_base": f.api_base(), "scopes": f.scopes(),
        "socket_connections": f.socket_connections(), "unacked": f.unacked_envelopes(),
        "acks": f.acks(), "rate_limit_violations": f.rate_limit_violations(),
        "requests": f.requests().len(), "events": f.events_sent().len(),
    })))
}

async fn list_users(State(sh): St) -> Out {
    let w = sh.lock();
    let users: Vec<Value> = w
        .ws
        .users
        .values()
        .map(|u| json!({"id": u.id, "name": u.name, "real_name": u.real_name, "is_bot": u.is_bot}))
        .collect();
    Ok(good(json!({"users": users})))
}

async fn add_user(State(sh): St, b: Bytes) -> Out {
    let u: NewUser = body(&b)?;
    if u.name.is_empty() {
        return Err(bad("name is required"));
    }
    Ok(good(json!({"id": fake(sh).add_user(u)})))
}

async fn list_channels(State(sh): St) -> Out {
    let w = sh.lock();
    let chans: Vec<Value> =
        w.ws.channels
            .values()
            .map(|c| {
                json!({"id": c.id, "name": c.name, "private": c.private, "archived": c.archived,
                   "bot_member": c.bot_member})
            })
            .collect();
    Ok(good(json!({"channels": chans})))
}

#[derive(Deserialize)]
struct NewChannel {
    name: String,
    #[serde(default)]
    private: bool,
    #[serde(default)]
    bot_member: bool,
}

async fn add_channel(State(sh): St, b: Bytes) -> Out {
    let c: NewChannel = body(&b)?;
    if c.name.trim_start_matches('#').is_empty() {
        return Err(bad("name is required"));
    }
    Ok(good(
        json!({"id": fake(sh).add_channel(&c.name, c.private, c.bot_member)}),
    ))
}

async fn archive(State(sh): St, Path(id): Path<String>) -> Out {
    let f = fake(sh);
    known_channel(&f, &id)?;
    f.archive_channel(&id);
    Ok(good(json!({})))
}

#[derive(Deserialize)]
struct Member {
    member: bool,
}

async fn bot_member(State(sh): St, Path(id): Path<String>, b: Bytes) -> Out {
    let m: Member = body(&b)?;
    let f = fake(sh);
    known_channel(&f, &id)?;
    f.set_bot_member(&id, m.member);
    Ok(good(json!({})))
}

#[derive(Deserialize)]
struct Act {
    user: String,
    channel: String,
    #[serde(default)]
    ts: String,
    #[serde(default)]
    thread_ts: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    broadcast: bool,
    #[serde(default)]
    name: String,
}

async fn post_msg(State(sh): St, b: Bytes) -> Out {
    let a: Act = body(&b)?;
    match fake(sh).try_post(&a.user, &a.channel, &a.text) {
        Ok(ts) => Ok(good(json!({"ts": ts}))),
        Err(e) => Err(bad(e)),
    }
}

async fn reply(State(sh): St, b: Bytes) -> Out {
    let a: Act = body(&b)?;
    match fake(sh).try_reply(&a.user, &a.channel, &a.thread_ts, &a.text, a.broadcast) {
        Ok(ts) => Ok(good(json!({"ts": ts}))),
        Err(e) => Err(bad(e)),
    }
}

async fn edit(State(sh): St, b: Bytes) -> Out {
    let a: Act = body(&b)?;
    match fake(sh).try_edit(&a.user, &a.channel, &a.ts, &a.text) {
        Ok(()) => Ok(good(json!({}))),
        Err(e) => Err(bad(e)),
    }
}

async fn delete(State(sh): St, b: Bytes) -> Out {
    let a: Act = body(&b)?;
    match fake(sh).try_delete(&a.user, &a.channel, &a.ts) {
        Ok(()) => Ok(good(json!({}))),
        Err(e) => Err(bad(e)),
    }
}

async fn react(State(sh): St, b: Bytes) -> Out {
    let a: Act = body(&b)?;
    match fake(sh).try_react(&a.user, &a.channel, &a.ts, &a.name) {
        Ok(()) => Ok(good(json!({}))),
        Err(e) => Err(bad(e)),
    }
}

async fn history(State(sh): St, Path(channel): Path<String>) -> Out {
    let f = fake(sh);
    known_channel(&f, &channel)?;
    let msgs: Vec<Value> = f.history(&channel).into_iter().map(|m| m.raw).collect();
    Ok(good(json!({"messages": msgs})))
}

async fn thread(State(sh): St, Path((channel, ts)): Path<(String, String)>) -> Out {
    let f = fake(sh);
    let msgs: Vec<Value> = f.thread(&channel, &ts).into_iter().map(|m| m.raw).collect();
    if msgs.is_empty() {
        return Err(bad(format!("no thread {ts} in {channel}")));
    }
    Ok(good(json!({"messages": msgs})))
}

async fn requests(State(sh): St) -> Out {
    Ok(good(json!({"requests": to_json(&fake(sh).requests())})))
}

async fn events(State(sh): St) -> Out {
    Ok(good(json!({"events": fake(sh).events_sent()})))
}

#[derive(Deserialize)]
struct Reason {
    reason: String,
}

async fn disconnect(State(sh): St, b: Bytes) -> Out {
    let r: Reason = body(&b)?;
    fake(sh).disconnect_sockets(&r.reason);
    Ok(good(json!({})))
}

#[derive(Deserialize)]
struct Url {
    url: Option<String>,
}

async fn events_url(State(sh): St, b: Bytes) -> Out {
    let u: Url = body(&b)?;
    if let Some(url) = &u.url
        && reqwest::Url::parse(url).is_err()
    {
        return Err(bad(format!("invalid url {url}")));
    }
    fake(sh).set_events_url(u.url);
    Ok(good(json!({})))
}
