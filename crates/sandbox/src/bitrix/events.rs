//! Live Feed events of the local app (contract §5): `event.bind`/`unbind`/`get`,
//! `events`, the offline queue (`event.offline.*`) and online pushes.
//!
//! Dispatch follows `Bitrix\Rest\Event\Callback` and `CSocNetLogBlogPostRestProxy`: every
//! binding of the event is visited in id order; within one HTTP hit a post's
//! `ONLIVEFEEDPOSTUPDATE` goes to the first binding only and never after its
//! `ONLIVEFEEDPOSTADD`. Offline bindings queue a row (`EventOfflineTable::callEvent`:
//! merged with an identical unreserved row) unless the change came through OAuth from the
//! app itself with the binding's `auth_connector`; online bindings get a push, sent later
//! by one background sender, never retried.

use std::collections::HashSet;
use std::sync::Weak;
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use tokio::sync::mpsc;

use super::config::{EventBinding, OfflineRow, PushRecord};
use super::md5;
use super::methods::{ApiError, Ctx, Output};
use super::server::Shared;
use super::state::{Portal, php_trim};
use super::time::{self, MICROS};
use super::value::{Arr, Value, list, map};

/// The events the fake fires, all in scope `log`.
pub(crate) const LIVE_FEED_EVENTS: [&str; 3] = [
    "ONLIVEFEEDPOSTADD",
    "ONLIVEFEEDPOSTUPDATE",
    "ONLIVEFEEDPOSTDELETE",
];
const EVENT_SCOPE: &str = "log";
const OFFLINE_LIST_PAGE: usize = 50;
const OFFLINE_GET_LIMIT: i64 = 50;
/// First `event_handler_id` minus one (ids are not small in real portals).
const FIRST_BINDING_ID: u64 = 726;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PostEvent {
    Add,
    Update,
    Delete,
}

impl PostEvent {
    fn name(self) -> &'static str {
        match self {
            PostEvent::Add => LIVE_FEED_EVENTS[0],
            PostEvent::Update => LIVE_FEED_EVENTS[1],
            PostEvent::Delete => LIVE_FEED_EVENTS[2],
        }
    }
}

/// Who changed a post: the acting user, and for the app's own OAuth calls the
/// `auth_connector` they carried (`Some("")` normally).
pub(crate) struct Origin {
    pub user: u64,
    pub app_connector: Option<String>,
}

struct Binding {
    id: u64,
    event: String,
    /// Empty for an offline binding.
    handler: String,
    user: u64,
    connector: String,
}

impl Binding {
    fn offline(&self) -> bool {
        self.handler.is_empty()
    }
}

struct Row {
    id: u64,
    /// `TIMESTAMP_X` in portal seconds (the column has no fraction).
    stamp: i64,
    event: String,
    post_id: u64,
    local_user: u64,
    message_id: String,
    /// Empty when not reserved.
    process_id: String,
    connector: String,
    error: bool,
}

/// A push waiting for the background sender; `ts` is filled in when it leaves.
pub(crate) struct PendingPush {
    pub event: String,
    pub post_id: u64,
    pub url: String,
    pub handler_id: u64,
    pub form: Vec<(String, String)>,
}

#[derive(Default)]
pub(crate) struct EventState {
    bindings: Vec<Binding>,
    bound: u64,
    rows: Vec<Row>,
    queued: u64,
    pub pushes: Vec<PushRecord>,
    pub outbox: Vec<PendingPush>,
    /// Posts whose add or update was dispatched in the current hit.
    processed: HashSet<u64>,
}

impl EventState {
    /// A new HTTP hit (or UI action): `processEvent`'s static list starts empty.
    pub(crate) fn begin_hit(&mut self) {
        self.processed.clear();
    }
}

fn message_id(event: &str, post_id: u64) -> String {
    md5::hex(format!("{event}|{{\"FIELDS\":{{\"POST_ID\":{post_id}}}}}").as_bytes())
}

impl Portal {
    /// A post was added, edited or deleted: dispatch to every binding of the event.
    pub(crate) fn post_event(&mut self, kind: PostEvent, post_id: u64, origin: &Origin) {
        let name = kind.name();
        let targets: Vec<(u64, String, u64, String)> = self
            .events
            .bindings
            .iter()
            .filter(|b| b.event == name)
            .map(|b| (b.id, b.handler.clone(), b.user, b.connector.clone()))
            .collect();
        for (id, handler, user, connector) in targets {
            match kind {
                PostEvent::Update => {
                    if !self.events.processed.insert(post_id) {
                        continue;
                    }
                }
                PostEvent::Add => {
                    self.events.processed.insert(post_id);
                }
                PostEvent::Delete => {}
            }
            let local_user = if user > 0 { user } else { origin.user };
            if handler.is_empty() {
                if origin.app_connector.as_deref() == Some(connector.as_str()) {
                    continue;
                }
                self.enqueue_offline(name, post_id, local_user, connector);
            } else {
                let token = (local_user > 0).then(|| self.mint_access(local_user).0);
                let app_token = self.cfg.oauth.application_token.clone();
                let form = self.push_form(name, id, post_id, token.as_deref(), &app_token);
                self.events.outbox.push(PendingPush {
                    event: name.to_owned(),
                    post_id,
                    url: handler,
                    handler_id: id,
                    form,
                });
            }
        }
    }

    fn enqueue_offline(&mut self, event: &str, post_id: u64, user: u64, connector: String) {
        let message_id = message_id(event, post_id);
        let stamp = self.now_secs();
        // The merge key is (MESSAGE_ID, APP_ID, CONNECTOR_ID, PROCESS_ID): a reserved row
        // is left alone, an error row is refreshed and stays an error.
        if let Some(row) = self.events.rows.iter_mut().find(|r| {
            r.message_id == message_id && r.connector == connector && r.process_id.is_empty()
        }) {
            row.stamp = stamp;
            row.local_user = user;
            return;
        }
        self.events.queued += 1;
        self.events.rows.push(Row {
            id: self.events.queued,
            stamp,
            event: event.to_owned(),
            post_id,
            local_user: user,
            message_id,
            process_id: String::new(),
            connector,
            error: false,
        });
    }

    /// The handler request body (contract §5.2) without `ts`'s value.
    pub(crate) fn push_form(
        &self,
        event: &str,
        handler_id: u64,
        post_id: u64,
        access_token: Option<&str>,
        application_token: &str,
    ) -> Vec<(String, String)> {
        let mut form: Vec<(String, String)> = vec![
            ("event".into(), event.to_owned()),
            ("event_handler_id".into(), handler_id.to_string()),
            ("data[FIELDS][POST_ID]".into(), post_id.to_string()),
            ("ts".into(), String::new()),
        ];
        let mut auth = |k: &str, v: String| form.push((format!("auth[{k}]"), v));
        if let Some(token) = access_token {
            auth("access_token", token.to_owned());
            auth(
                "expires_in",
                self.cfg.oauth.access_ttl.as_secs().to_string(),
            );
            auth("scope", self.oauth_scope());
        }
        auth("domain", self.domain());
        auth("server_endpoint", self.rest_endpoint());
        if access_token.is_some() {
            auth("status", "L".to_owned());
        }
        auth("client_endpoint", self.rest_endpoint());
        auth("member_id", self.member_id());
        auth("application_token", application_token.to_owned());
        form
    }

    /// A forged push: a real-looking body with an unknown access token and the given
    /// `application_token`.
    pub(crate) fn forged_push(
        &mut self,
        event: &str,
        post_id: u64,
        url: &str,
        application_token: &str,
    ) -> Vec<(String, String)> {
        let event = event.to_ascii_uppercase();
        let handler_id = self
            .events
            .bindings
            .iter()
            .find(|b| b.event == event && b.handler == url)
            .map_or(0, |b| b.id);
        let token = self.random_string(70);
        self.push_form(&event, handler_id, post_id, Some(&token), application_token)
    }

    pub(crate) fn binding_views(&self) -> Vec<EventBinding> {
        self.events
            .bindings
            .iter()
            .map(|b| EventBinding {
                id: b.id,
                event: b.event.clone(),
                handler: (!b.offline()).then(|| b.handler.clone()),
                auth_type: b.user,
                connector: b.connector.clone(),
                offline: b.offline(),
            })
            .collect()
    }

    pub(crate) fn offline_views(&self) -> Vec<OfflineRow> {
        self.events
            .rows
            .iter()
            .map(|r| OfflineRow {
                id: r.id,
                name: r.event.clone(),
                post_id: r.post_id,
                message_id: r.message_id.clone(),
                process_id: (!r.process_id.is_empty()).then(|| r.process_id.clone()),
                error: r.error,
                connector: r.connector.clone(),
                user_id: r.local_user,
                timestamp: time::to_system_time(r.stamp.saturating_mul(MICROS)),
            })
            .collect()
    }
}

// ---- delivery -----------------------------------------------------------------------

/// Starts the background sender: pushes leave one at a time, in order, once each.
pub(crate) fn start_sender(
    shared: Weak<Shared>,
    timeout: Duration,
) -> mpsc::UnboundedSender<PendingPush> {
    let (tx, mut rx) = mpsc::unbounded_channel::<PendingPush>();
    let client = push_client(timeout);
    tokio::spawn(async move {
        while let Some(push) = rx.recv().await {
            let Some(ts) = shared.upgrade().map(|s| s.read(Portal::now_secs)) else {
                break;
            };
            let form = with_ts(push.form, ts);
            let (status, error) = deliver(&client, &push.url, &form).await;
            let Some(s) = shared.upgrade() else {
                break;
            };
            tracing::debug!(
                event = push.event,
                post_id = push.post_id,
                status = status.unwrap_or(0),
                "bitrix sandbox event push"
            );
            s.write(|p| {
                p.events.pushes.push(PushRecord {
                    event: push.event,
                    post_id: push.post_id,
                    url: push.url,
                    handler_id: push.handler_id,
                    status,
                    error,
                });
            });
        }
    });
    tx
}

pub(crate) fn push_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

pub(crate) fn with_ts(mut form: Vec<(String, String)>, ts: i64) -> Vec<(String, String)> {
    for (k, v) in &mut form {
        if k == "ts" {
            *v = ts.to_string();
        }
    }
    form
}

/// One POST, PHP-style form encoding (brackets percent-encoded).
pub(crate) async fn deliver(
    client: &reqwest::Client,
    url: &str,
    form: &[(String, String)],
) -> (Option<u16>, Option<String>) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let sent = client
        .post(url)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await;
    match sent {
        Ok(resp) => (Some(resp.status().as_u16()), None),
        Err(e) => (None, Some(e.to_string())),
    }
}

/// Hands the portal's new pushes to the sender (called after every portal write).
pub(crate) fn flush(pushes: Vec<PendingPush>, sender: Option<&mpsc::UnboundedSender<PendingPush>>) {
    let Some(sender) = sender else {
        return;
    };
    for push in pushes {
        let _ = sender.send(push);
    }
}

// ---- REST methods -------------------------------------------------------------------

fn wrong_auth_type() -> ApiError {
    ApiError::new(
        403,
        "WRONG_AUTH_TYPE",
        "Current authorization type is denied for this method",
    )
}

fn access_denied(detail: &str) -> ApiError {
    let text = if detail.is_empty() {
        "Access denied!".to_owned()
    } else {
        format!("Access denied! {detail}")
    };
    ApiError::new(403, "ACCESS_DENIED", &text)
}

fn argument(description: &str, name: &str) -> ApiError {
    ApiError::new(400, "ERROR_ARGUMENT", description).with_argument(name)
}

fn null_argument(name: &str) -> ApiError {
    argument(&format!("Argument '{name}' is null or empty"), name)
}

/// `isset($query[$key])`: present and not null.
fn isset<'a>(q: &'a Arr, key: &str) -> Option<&'a Value> {
    q.get(key).filter(|v| !matches!(v, Value::Null))
}

fn lower_keys(params: &Arr) -> Arr {
    params
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect()
}

/// `event.*` and `events`: OAuth app context only.
pub(crate) fn call(
    p: &mut Portal,
    ctx: &Ctx,
    method: &str,
    params: &Arr,
    start: i64,
) -> Result<Output, ApiError> {
    if !ctx.oauth {
        return Err(wrong_auth_type());
    }
    match method {
        "events" => Ok(Output::value(events_list(ctx, params))),
        "event.bind" => bind(p, ctx, params),
        "event.unbind" => unbind(p, ctx, params),
        "event.get" => Ok(Output::value(event_get(p, ctx))),
        "event.offline.get" => offline_get(p, ctx, params),
        "event.offline.clear" => offline_clear(p, ctx, params),
        "event.offline.error" => offline_error(p, ctx, params),
        "event.offline.list" => offline_list(p, ctx, params, start),
        _ => Err(ApiError::method_not_found()),
    }
}

fn events_list(ctx: &Ctx, params: &Arr) -> Value {
    let q = params.upper_keys();
    let scopes: Vec<String> = match isset(&q, "SCOPE") {
        Some(s) if !s.to_php_string().is_empty() => vec![s.to_php_string()],
        Some(_) => Vec::new(),
        None if q.get("FULL").is_some_and(Value::truthy) => vec![EVENT_SCOPE.to_owned()],
        None => ctx.scopes.clone(),
    };
    if scopes.iter().any(|s| s == EVENT_SCOPE) {
        list(LIVE_FEED_EVENTS.iter().map(|e| Value::from(*e)))
    } else {
        list([])
    }
}

/// `online` (default) or `offline`.
fn event_type(q: &Arr) -> Result<bool, ApiError> {
    let t = q
        .get("EVENT_TYPE")
        .map(Value::to_php_string)
        .unwrap_or_default()
        .to_lowercase();
    match t.as_str() {
        "" | "online" => Ok(false),
        "offline" => Ok(true),
        _ => Err(argument(
            "Value must be one of {online|offline}",
            "EVENT_TYPE",
        )),
    }
}

fn bind(p: &mut Portal, ctx: &Ctx, params: &Arr) -> Result<Output, ApiError> {
    let q = params.upper_keys();
    let event = q
        .get("EVENT")
        .map(Value::to_php_string)
        .unwrap_or_default()
        .to_uppercase();
    let handler = q
        .get("HANDLER")
        .map(Value::to_php_string)
        .unwrap_or_default();
    let admin = p.is_admin(ctx.user);
    let mut user = q.get("AUTH_TYPE").map_or(0, Value::to_int).max(0) as u64;
    if user > 0 {
        if !admin && user != ctx.user {
            return Err(access_denied(
                "Event binding with AUTH_TYPE requires administrator access rights",
            ));
        }
    } else if !admin {
        user = ctx.user;
    }
    if event.is_empty() {
        return Err(null_argument("EVENT"));
    }
    let offline = event_type(&q)?;
    let (handler, user) = if offline {
        if !admin {
            return Err(access_denied(
                "Offline events binding requires administrator access rights",
            ));
        }
        (String::new(), 0)
    } else {
        if handler.is_empty() {
            return Err(null_argument("HANDLER"));
        }
        (handler, user)
    };
    let in_scope = ctx.scopes.iter().any(|s| s == EVENT_SCOPE);
    if !in_scope || !LIVE_FEED_EVENTS.contains(&event.as_str()) {
        return Err(ApiError::new(
            400,
            "ERROR_EVENT_NOT_FOUND",
            "Event not found",
        ));
    }
    let duplicate = p.events.bindings.iter().any(|b| {
        b.event == event
            && b.handler == handler
            && b.user == user
            && b.connector == ctx.auth_connector
    });
    if duplicate {
        return Err(ApiError::new(
            400,
            "ERROR_CORE",
            "Unable to set event handler: Handler already binded",
        ));
    }
    p.events.bound += 1;
    let id = FIRST_BINDING_ID + p.events.bound;
    p.events.bindings.push(Binding {
        id,
        event,
        handler,
        user,
        connector: ctx.auth_connector.clone(),
    });
    Ok(Output::value(Value::Bool(true)))
}

fn unbind(p: &mut Portal, ctx: &Ctx, params: &Arr) -> Result<Output, ApiError> {
    let q = params.upper_keys();
    let event = q
        .get("EVENT")
        .map(Value::to_php_string)
        .unwrap_or_default()
        .to_uppercase();
    let handler = q
        .get("HANDLER")
        .map(Value::to_php_string)
        .unwrap_or_default();
    if event.is_empty() {
        return Err(null_argument("EVENT"));
    }
    let offline = event_type(&q)?;
    let admin = p.is_admin(ctx.user);
    let before = p.events.bindings.len();
    if offline {
        if !admin {
            return Err(access_denied(
                "Offline events unbinding requires administrator access rights",
            ));
        }
        p.events
            .bindings
            .retain(|b| !(b.offline() && b.event == event && b.connector == ctx.auth_connector));
    } else {
        if handler.is_empty() {
            return Err(null_argument("HANDLER"));
        }
        let user = match isset(&q, "AUTH_TYPE") {
            Some(v) => {
                // `$query['AUTH_TYPE'] !== intval($USER->GetID())`: a string never
                // equals an int, so only a JSON number can pass for a non-admin.
                let own = matches!(v, Value::Int(n) if *n == ctx.user as i64);
                if !admin && !own {
                    return Err(access_denied(
                        "Event unbinding with AUTH_TYPE requires administrator access rights",
                    ));
                }
                Some(v.to_int().max(0) as u64)
            }
            None if !admin => Some(ctx.user),
            None => None,
        };
        p.events.bindings.retain(|b| {
            !(!b.offline()
                && b.event == event
                && b.handler == handler
                && user.is_none_or(|u| b.user == u))
        });
    }
    let count = (before - p.events.bindings.len()) as i64;
    Ok(Output::value(map([("count", Value::Int(count))])))
}

fn event_get(p: &Portal, ctx: &Ctx) -> Value {
    let admin = p.is_admin(ctx.user);
    list(
        p.events
            .bindings
            .iter()
            .filter(|b| admin || b.user == ctx.user)
            .map(|b| {
                if b.offline() {
                    map([
                        ("event", Value::from(b.event.as_str())),
                        ("connector_id", Value::from(b.connector.as_str())),
                        ("offline", Value::Int(1)),
                    ])
                } else {
                    map([
                        ("event", Value::from(b.event.as_str())),
                        ("handler", Value::from(b.handler.as_str())),
                        ("auth_type", Value::num_str(b.user)),
                        ("offline", Value::Int(0)),
                    ])
                }
            }),
    )
}

// ---- offline queue ----------------------------------------------------------------

const GET_FIELDS: &[&str] = &["ID", "TIMESTAMP_X", "EVENT_NAME", "MESSAGE_ID"];
const LIST_FIELDS: &[&str] = &[
    "ID",
    "TIMESTAMP_X",
    "EVENT_NAME",
    "MESSAGE_ID",
    "PROCESS_ID",
    "ERROR",
];
const FILTER_OPS: &[&str] = &["", "=", ">", "<", ">=", "<=", "@", "%"];

struct Cond {
    key: String,
    op: String,
    field: String,
    value: Value,
}

/// `IRestService::sanitizeFilter`.
fn sanitize_filter(v: Option<&Value>, fields: &[&str]) -> Result<Vec<Cond>, ApiError> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let Value::Arr(a) = v else {
        return Err(argument("The filter is not an array.", ""));
    };
    let mut out = Vec::new();
    for (key, value) in a.upper_keys().iter() {
        let split = key
            .find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(key.len());
        let (op, field) = key.split_at(split);
        if !FILTER_OPS.contains(&op) {
            return Err(argument(&format!("Filter operation not allowed: {op}"), ""));
        }
        if !fields.contains(&field) {
            return Err(argument(&format!("Filter field not allowed: {field}"), ""));
        }
        out.push(Cond {
            key: key.to_owned(),
            op: op.to_owned(),
            field: field.to_owned(),
            value: value.clone(),
        });
    }
    Ok(out)
}

/// `IRestService::sanitizeOrder`: `(field, descending)` pairs.
fn sanitize_order(
    v: Option<&Value>,
    default: &str,
    fields: &[&str],
) -> Result<Vec<(String, bool)>, ApiError> {
    let Some(v) = v else {
        return Ok(vec![(default.to_owned(), false)]);
    };
    let Value::Arr(a) = v else {
        return Err(argument("The order is not an array.", ""));
    };
    let mut out = Vec::new();
    for (key, value) in a.upper_keys().iter() {
        if key.parse::<i64>().is_ok() {
            let field = value.to_php_string();
            if !fields.contains(&field.as_str()) {
                return Err(argument(&format!("Order field not allowed: {field}"), ""));
            }
            out.push((field, false));
            continue;
        }
        if !fields.contains(&key) {
            return Err(argument(&format!("Order field not allowed: {key}"), ""));
        }
        let dir = value.to_php_string().to_uppercase();
        if dir != "ASC" && dir != "DESC" {
            return Err(argument("Order direction should be one of {ASC|DESC}", ""));
        }
        out.push((key.to_owned(), dir == "DESC"));
    }
    Ok(out)
}

fn values_of(v: &Value) -> Vec<&Value> {
    match v {
        Value::Arr(a) => a.values().collect(),
        other => vec![other],
    }
}

fn compare_num(actual: i64, op: &str, wanted: &Value) -> bool {
    let values: Vec<i64> = values_of(wanted).into_iter().map(Value::to_int).collect();
    let first = values.first().copied().unwrap_or(0);
    match op {
        "" | "=" | "@" => values.contains(&actual),
        ">" => actual > first,
        ">=" => actual >= first,
        "<" => actual < first,
        "<=" => actual <= first,
        _ => values
            .iter()
            .any(|v| actual.to_string().contains(&v.to_string())),
    }
}

fn compare_str(actual: &str, op: &str, wanted: &Value) -> bool {
    let actual = actual.to_lowercase();
    let values: Vec<String> = values_of(wanted)
        .into_iter()
        .map(|v| v.to_php_string().to_lowercase())
        .collect();
    let first = values.first().cloned().unwrap_or_default();
    match op {
        "" | "=" | "@" => values.contains(&actual),
        "%" => values.iter().any(|v| actual.contains(v.as_str())),
        ">" => actual > first,
        ">=" => actual >= first,
        "<" => actual < first,
        _ => actual <= first,
    }
}

fn row_matches(p: &Portal, r: &Row, conds: &[Cond]) -> bool {
    conds.iter().all(|c| match c.field.as_str() {
        "ID" => compare_num(r.id as i64, &c.op, &c.value),
        "TIMESTAMP_X" => {
            let wanted = time::parse_datetime(&c.value.to_php_string(), p.tz());
            wanted.is_some_and(|w| compare_num(r.stamp, &c.op, &Value::Int(w)))
        }
        "EVENT_NAME" => compare_str(&r.event, &c.op, &c.value),
        "MESSAGE_ID" => compare_str(&r.message_id, &c.op, &c.value),
        "PROCESS_ID" => compare_str(&r.process_id, &c.op, &c.value),
        "ERROR" => compare_num(i64::from(r.error), &c.op, &c.value),
        _ => true,
    })
}

fn sort_rows(rows: &mut [&Row], order: &[(String, bool)]) {
    rows.sort_by(|a, b| {
        for (field, desc) in order {
            let ord = match field.as_str() {
                "ID" => a.id.cmp(&b.id),
                "TIMESTAMP_X" => a.stamp.cmp(&b.stamp),
                "EVENT_NAME" => a.event.cmp(&b.event),
                "MESSAGE_ID" => a.message_id.cmp(&b.message_id),
                "PROCESS_ID" => a.process_id.cmp(&b.process_id),
                _ => a.error.cmp(&b.error),
            };
            let ord = if *desc { ord.reverse() } else { ord };
            if ord.is_ne() {
                return ord;
            }
        }
        a.id.cmp(&b.id)
    });
}

fn row_value(p: &Portal, r: &Row, listing: bool) -> Value {
    let mut a = Arr::new();
    a.insert("ID", Value::num_str(r.id));
    a.insert(
        "TIMESTAMP_X",
        Value::Str(p.iso(r.stamp.saturating_mul(MICROS))),
    );
    a.insert("EVENT_NAME", Value::from(r.event.as_str()));
    a.insert(
        "EVENT_DATA",
        map([("FIELDS", map([("POST_ID", Value::from(r.post_id))]))]),
    );
    a.insert(
        "EVENT_ADDITIONAL",
        map([("user_id", Value::num_str(r.local_user))]),
    );
    a.insert("MESSAGE_ID", Value::from(r.message_id.as_str()));
    if listing {
        a.insert("PROCESS_ID", Value::from(r.process_id.as_str()));
        a.insert("ERROR", Value::from(if r.error { "1" } else { "0" }));
    }
    Value::Arr(a)
}

fn require_admin(p: &Portal, ctx: &Ctx) -> Result<(), ApiError> {
    if p.is_admin(ctx.user) {
        Ok(())
    } else {
        Err(access_denied(""))
    }
}

fn feature_on(p: &Portal, code: &str) -> bool {
    p.cfg.features.iter().any(|(c, on)| c == code && *on)
}

fn process_id_param(q: &Arr) -> Option<String> {
    isset(q, "process_id").map(|v| php_trim(&v.to_php_string()).to_owned())
}

fn offline_get(p: &mut Portal, ctx: &Ctx, params: &Arr) -> Result<Output, ApiError> {
    require_admin(p, ctx)?;
    let q = lower_keys(params);
    let clear = isset(&q, "clear").is_none_or(|v| v.to_int() != 0);
    let given = process_id_param(&q);
    if !clear && !feature_on(p, "rest_offline_extended") {
        return Err(ApiError::new(
            403,
            "WRONG_LICENSE",
            "This feature is not enabled for the current license: extended offline events handling",
        ));
    }
    let limit = isset(&q, "limit").map_or(OFFLINE_GET_LIMIT, Value::to_int);
    let errors = isset(&q, "error").is_some_and(|v| v.to_int() == 1);
    if limit <= 0 {
        return Err(argument("Value must be positive integer", "LIMIT"));
    }
    let limit = limit as usize;
    let conds = sanitize_filter(isset(&q, "filter"), GET_FIELDS)?;
    let order = sanitize_order(isset(&q, "order"), "TIMESTAMP_X", GET_FIELDS)?;
    let connector = ctx.auth_connector.clone();
    let pid = match &given {
        Some(pid) => pid.clone(),
        None => {
            // `markEvents`: filter values must be scalars here.
            if let Some(c) = conds.iter().find(|c| matches!(c.value, Value::Arr(_))) {
                return Err(argument(
                    &format!("The value of an argument '{}' has an invalid type", c.key),
                    &c.key,
                ));
            }
            let pid = p.random_string(32);
            let mut free: Vec<&Row> = p
                .events
                .rows
                .iter()
                .filter(|r| {
                    r.connector == connector
                        && r.error == errors
                        && r.process_id.is_empty()
                        && row_matches(p, r, &conds)
                })
                .collect();
            sort_rows(&mut free, &order);
            let marked: HashSet<u64> = free.iter().take(limit).map(|r| r.id).collect();
            for r in p.events.rows.iter_mut().filter(|r| marked.contains(&r.id)) {
                r.process_id = pid.clone();
            }
            pid
        }
    };
    let mut picked: Vec<&Row> = p
        .events
        .rows
        .iter()
        .filter(|r| {
            r.connector == connector
                && r.error == errors
                && r.process_id == pid
                && row_matches(p, r, &conds)
        })
        .collect();
    sort_rows(&mut picked, &order);
    picked.truncate(limit);
    let events = list(picked.iter().map(|r| row_value(p, r, false)));
    let returned = !picked.is_empty();
    if clear && returned {
        p.events
            .rows
            .retain(|r| !(r.process_id == pid && r.connector == connector));
    }
    let process_id = if clear && given.is_none() {
        Value::Null
    } else {
        Value::Str(pid)
    };
    Ok(Output::value(map([
        ("process_id", process_id),
        ("events", events),
    ])))
}

fn offline_clear(p: &mut Portal, ctx: &Ctx, params: &Arr) -> Result<Output, ApiError> {
    require_admin(p, ctx)?;
    let q = lower_keys(params);
    let Some(pid) = process_id_param(&q) else {
        return Err(null_argument("PROCESS_ID"));
    };
    let connector = ctx.auth_connector.clone();
    // `message_id` wins over `id`; an empty list means the whole process.
    let in_process = |r: &Row| r.process_id == pid && r.connector == connector;
    if let Some(m) = isset(&q, "message_id") {
        let Value::Arr(a) = m else {
            return Err(argument(
                "Value must be array of MESSAGE_ID values",
                "message_id",
            ));
        };
        let mut ids = Vec::new();
        for v in a.values() {
            let id = php_trim(&v.to_php_string()).to_owned();
            if id.chars().count() != 32 {
                return Err(argument(
                    "Value must be array of MESSAGE_ID values",
                    "messsage_id",
                ));
            }
            ids.push(id);
        }
        p.events
            .rows
            .retain(|r| !(in_process(r) && (ids.is_empty() || ids.contains(&r.message_id))));
    } else if let Some(v) = isset(&q, "id") {
        let Value::Arr(a) = v else {
            return Err(argument("Value must be array of integers", "id"));
        };
        let mut ids = Vec::new();
        for v in a.values() {
            let id = v.to_int();
            if id <= 0 {
                return Err(argument("Value must be array of integers", "id"));
            }
            ids.push(id as u64);
        }
        p.events
            .rows
            .retain(|r| !(in_process(r) && (ids.is_empty() || ids.contains(&r.id))));
    } else {
        p.events.rows.retain(|r| !in_process(r));
    }
    Ok(Output::value(Value::Bool(true)))
}

/// `EventOfflineTable::markError`: the process's rows with these message ids become
/// errors and are released; other unreserved or reserved non-error copies are dropped.
fn offline_error(p: &mut Portal, ctx: &Ctx, params: &Arr) -> Result<Output, ApiError> {
    require_admin(p, ctx)?;
    let q = lower_keys(params);
    let Some(pid) = process_id_param(&q) else {
        return Err(null_argument("PROCESS_ID"));
    };
    let Some(Value::Arr(ids)) = isset(&q, "message_id") else {
        return Err(argument(
            "Value must be array of MESSAGE_ID values",
            "message_id",
        ));
    };
    let ids: Vec<String> = ids.values().map(Value::to_php_string).collect();
    if ids.is_empty() {
        return Ok(Output::value(Value::Bool(true)));
    }
    let connector = ctx.auth_connector.clone();
    let hit = |r: &Row| r.connector == connector && ids.contains(&r.message_id);
    p.events
        .rows
        .retain(|r| !(hit(r) && !r.error && r.process_id != pid));
    let released: Vec<u64> = p
        .events
        .rows
        .iter()
        .filter(|r| hit(r) && !r.error)
        .map(|r| r.id)
        .collect();
    for id in released {
        let Some(i) = p.events.rows.iter().position(|r| r.id == id) else {
            continue;
        };
        let clash = p.events.rows.iter().any(|o| {
            o.id != id
                && o.process_id.is_empty()
                && o.connector == p.events.rows[i].connector
                && o.message_id == p.events.rows[i].message_id
        });
        if clash {
            // The unique key (MESSAGE_ID, APP_ID, CONNECTOR_ID, PROCESS_ID) already has
            // an error row: keep that one.
            p.events.rows.remove(i);
        } else {
            let row = &mut p.events.rows[i];
            row.error = true;
            row.process_id.clear();
        }
    }
    Ok(Output::value(Value::Bool(true)))
}

fn offline_list(p: &Portal, ctx: &Ctx, params: &Arr, start: i64) -> Result<Output, ApiError> {
    require_admin(p, ctx)?;
    let q = lower_keys(params);
    let conds = sanitize_filter(isset(&q, "filter"), LIST_FIELDS)?;
    let order = sanitize_order(isset(&q, "order"), "ID", LIST_FIELDS)?;
    let mut rows: Vec<&Row> = p
        .events
        .rows
        .iter()
        .filter(|r| r.connector == ctx.auth_connector && row_matches(p, r, &conds))
        .collect();
    sort_rows(&mut rows, &order);
    let total = rows.len();
    let offset = usize::try_from(start.max(0)).unwrap_or(usize::MAX);
    let page: Vec<&Row> = rows
        .into_iter()
        .skip(offset)
        .take(OFFLINE_LIST_PAGE)
        .collect();
    let next = offset.saturating_add(page.len());
    Ok(Output {
        result: list(page.iter().map(|r| row_value(p, r, true))),
        total: Some(total as i64),
        next: (next < total).then_some(next as i64),
    })
}
