//! Event payloads and their delivery: the `event_callback` envelope (contract §3.3), Socket
//! Mode routing with acks and redelivery (§5.2), and signed Events API POSTs with retries
//! (§3.5, §4).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::mpsc;

use super::state::{Ev, EvKind, Workspace};
use super::text::b64_encode;
use super::{HttpDelivery, Shared, World};

/// `"v0=" + hex(HMAC-SHA256(secret, "v0:" + timestamp + ":" + body))` (contract §4).
pub fn sign_v0(secret: &str, timestamp: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail; an empty MAC would only make
    // every signature check fail, never panic.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::from("v0=");
    };
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// How a helper request is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignMode {
    Valid,
    /// A well-formed signature computed with the wrong secret.
    BadSignature,
    /// Correctly signed, but with a timestamp ten minutes old.
    StaleTimestamp,
}

/// The receiver's answer to a helper request.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: String,
}

pub(crate) enum Outbound {
    Frame(String),
    Disconnect { reason: String, grace: Duration },
    Abort,
    Freeze,
    Close,
}

pub(crate) struct ConnHandle {
    pub tx: mpsc::UnboundedSender<Outbound>,
    /// Told to go away: receives no new envelopes.
    pub draining: bool,
}

#[derive(Clone)]
pub(crate) struct Queued {
    payload: Arc<Value>,
    /// When the event was first sent (or queued): it is given up after
    /// `undelivered_retention`.
    since: std::time::Instant,
    attempt: u32,
    reason: &'static str,
    /// The connection that failed to ack it last time.
    avoid: Option<u64>,
    prev_envelope: Option<String>,
}

pub(crate) struct Inflight {
    q: Queued,
    conn: u64,
}

pub(crate) struct HttpJob {
    url: String,
    payload: Arc<Value>,
}

#[derive(Default)]
pub(crate) struct Delivery {
    pub events_url: Option<String>,
    pub tickets: HashSet<String>,
    pub conns: BTreeMap<u64, ConnHandle>,
    next_conn: u64,
    rr: usize,
    pub pending: VecDeque<Queued>,
    pub inflight: HashMap<String, Inflight>,
    pub acks: usize,
    pub pongs: usize,
    pub events_sent: Vec<Value>,
    pub envelopes: Vec<Value>,
    pub http_outstanding: usize,
    pub http_log: Vec<HttpDelivery>,
    pub failed: Vec<String>,
    pub duplicate_ratio: f64,
}

impl Delivery {
    pub(crate) fn broadcast(&mut self, make: impl Fn() -> Outbound) {
        for c in self.conns.values() {
            let _ = c.tx.send(make());
        }
    }

    pub(crate) fn disconnect_all(&mut self, reason: &str, grace: Duration) {
        for c in self.conns.values_mut() {
            c.draining = true;
            let _ = c.tx.send(Outbound::Disconnect {
                reason: reason.to_owned(),
                grace,
            });
        }
    }

    pub(crate) fn close_all(&mut self) {
        self.broadcast(|| Outbound::Close);
    }

    /// Round-robin over connections that are not draining, avoiding `avoid` if another exists.
    fn pick(&mut self, avoid: Option<u64>) -> Option<u64> {
        let active: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.draining)
            .map(|(id, _)| *id)
            .collect();
        let others: Vec<u64> = active
            .iter()
            .copied()
            .filter(|id| Some(*id) != avoid)
            .collect();
        let pool = if others.is_empty() { active } else { others };
        if pool.is_empty() {
            return None;
        }
        self.rr = self.rr.wrapping_add(1);
        Some(pool[self.rr % pool.len()])
    }

    /// Registers a socket, or refuses it when the app already has the maximum.
    pub(crate) fn register(
        &mut self,
        tx: mpsc::UnboundedSender<Outbound>,
        max: usize,
    ) -> Option<(u64, usize)> {
        if self.conns.len() >= max {
            return None;
        }
        self.next_conn += 1;
        let id = self.next_conn;
        self.conns.insert(
            id,
            ConnHandle {
                tx,
                draining: false,
            },
        );
        Some((id, self.conns.len()))
    }

    pub(crate) fn ack(&mut self, envelope_id: &str) {
        if self.inflight.remove(envelope_id).is_some() {
            self.acks += 1;
        }
    }
}

fn visible(ws: &Workspace, ev: &Ev) -> bool {
    let Some(ch) = ws.channels.get(&ev.channel) else {
        return false;
    };
    // Bots only hear conversations they are in, and only for subscribed scopes.
    if !ch.bot_member {
        return false;
    }
    let scope = match (ev.kind, ch.private) {
        (EvKind::Message, false) => "channels:history",
        (EvKind::Message, true) => "groups:history",
        (EvKind::Member | EvKind::Channel, false) => "channels:read",
        (EvKind::Member | EvKind::Channel, true) => "groups:read",
        (EvKind::Reaction, _) => "reactions:read",
    };
    ws.has_scope(scope)
}

fn event_callback(ws: &mut Workspace, ev: Ev) -> Value {
    let c = &ws.cfg;
    let et = ev.event.get("type").cloned().unwrap_or(Value::Null);
    let ctx = json!({"et": et, "tid": c.team_id, "aid": c.app_id, "cid": ev.channel});
    let context = format!("4-{}", b64_encode(ctx.to_string().as_bytes()));
    let mut v = json!({
        "token": c.verification_token, "team_id": c.team_id, "context_team_id": c.team_id,
        "context_enterprise_id": null, "api_app_id": c.app_id, "event": ev.event,
        "type": "event_callback", "event_id": "", "event_time": 0,
        "authorizations": [{"enterprise_id": null, "team_id": c.team_id, "user_id": c.bot_user_id,
                            "is_bot": true, "is_enterprise_install": false}],
        "is_ext_shared_channel": false, "event_context": context,
    });
    v["event_id"] = json!(ws.ids.event_id());
    v["event_time"] = json!(ws.now_secs());
    v
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Shared {
    /// Turns the events queued by mutations into deliveries. Runs under the world lock so that
    /// delivery order equals mutation order.
    pub(crate) fn flush(self: &Arc<Self>, w: &mut World) {
        let evs = std::mem::take(&mut w.ws.events);
        for ev in evs {
            if !visible(&w.ws, &ev) {
                continue;
            }
            let payload = event_callback(&mut w.ws, ev);
            w.dl.events_sent.push(payload.clone());
            let dup = w.dl.duplicate_ratio > 0.0 && w.ws.ids.f64() < w.dl.duplicate_ratio;
            let payload = Arc::new(payload);
            if dup {
                self.deliver(w, payload.clone());
            }
            self.deliver(w, payload);
        }
    }

    fn deliver(self: &Arc<Self>, w: &mut World, payload: Arc<Value>) {
        if let Some(url) = w.dl.events_url.clone() {
            w.dl.http_outstanding += 1;
            if self.http_tx.send(HttpJob { url, payload }).is_err() {
                w.dl.http_outstanding -= 1;
            }
            return;
        }
        self.route(
            w,
            Queued {
                payload,
                since: std::time::Instant::now(),
                attempt: 0,
                reason: "",
                avoid: None,
                prev_envelope: None,
            },
        );
    }

    /// Sends an envelope to one socket, or queues it until one connects.
    fn route(self: &Arc<Self>, w: &mut World, q: Queued) {
        loop {
            let Some(conn) = w.dl.pick(q.avoid) else {
                let me = self.clone();
                let left = self
                    .cfg
                    .undelivered_retention
                    .saturating_sub(q.since.elapsed());
                let since = q.since;
                w.dl.pending.push_back(q);
                self.rt.spawn(async move {
                    tokio::time::sleep(left).await;
                    me.give_up_queued(since);
                });
                return;
            };
            let envelope_id = match (
                &q.prev_envelope,
                self.cfg.quirks.redelivery_keeps_envelope_id,
            ) {
                (Some(prev), true) => prev.clone(),
                _ => w.ws.ids.uuid(),
            };
            let frame = json!({
                "envelope_id": envelope_id, "payload": *q.payload, "type": "events_api",
                "accepts_response_payload": false, "retry_attempt": q.attempt,
                "retry_reason": q.reason,
            });
            let sent =
                w.dl.conns
                    .get(&conn)
                    .is_some_and(|c| c.tx.send(Outbound::Frame(frame.to_string())).is_ok());
            if !sent {
                w.dl.conns.remove(&conn);
                continue;
            }
            w.dl.envelopes.push(frame);
            w.dl.inflight
                .insert(envelope_id.clone(), Inflight { q, conn });
            let me = self.clone();
            let wait = self.cfg.ack_timeout;
            self.rt.spawn(async move {
                tokio::time::sleep(wait).await;
                me.ack_timed_out(&envelope_id);
            });
            return;
        }
    }

    fn ack_timed_out(self: &Arc<Self>, envelope_id: &str) {
        {
            let mut guard = self.lock();
            let w = &mut *guard;
            let Some(inf) = w.dl.inflight.remove(envelope_id) else {
                return;
            };
            let expired = inf.q.since.elapsed() >= self.cfg.undelivered_retention;
            if inf.q.attempt >= self.cfg.socket_retries || expired {
                let id = inf.q.payload["event_id"].as_str().unwrap_or_default();
                w.dl.failed.push(id.to_owned());
            } else {
                let q = Queued {
                    payload: inf.q.payload,
                    since: inf.q.since,
                    attempt: inf.q.attempt + 1,
                    reason: "timeout",
                    avoid: Some(inf.conn),
                    prev_envelope: Some(envelope_id.to_owned()),
                };
                self.route(w, q);
            }
        }
        self.bump();
    }

    /// Drops events queued since `since` (or earlier) that are still waiting for a
    /// connection: Slack stopped retrying them.
    fn give_up_queued(self: &Arc<Self>, since: std::time::Instant) {
        {
            let mut guard = self.lock();
            let w = &mut *guard;
            let retention = self.cfg.undelivered_retention;
            let (expired, kept): (VecDeque<Queued>, VecDeque<Queued>) =
                std::mem::take(&mut w.dl.pending)
                    .into_iter()
                    .partition(|q| q.since <= since && q.since.elapsed() >= retention);
            w.dl.pending = kept;
            for q in expired {
                let id = q.payload["event_id"].as_str().unwrap_or_default();
                w.dl.failed.push(id.to_owned());
            }
        }
        self.bump();
    }

    /// Hands everything queued while no socket was usable to the open sockets.
    pub(crate) fn flush_pending(self: &Arc<Self>) {
        {
            let mut guard = self.lock();
            let w = &mut *guard;
            let queued: Vec<Queued> = w.dl.pending.drain(..).collect();
            for q in queued {
                self.route(w, q);
            }
        }
        self.bump();
    }
}

// ---- Events API over HTTP ---------------------------------------------------------------

enum Attempt {
    Done,
    Failed(&'static str),
}

pub(crate) async fn http_worker(sh: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<HttpJob>) {
    let mut stop = sh.shutdown.subscribe();
    loop {
        let job = tokio::select! {
            j = rx.recv() => match j { Some(j) => j, None => return },
            _ = super::stopped(&mut stop) => return,
        };
        let body = job.payload.to_string().into_bytes();
        let event_id = job.payload["event_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        // First attempts go out in order; retries run on their own schedule, as at Slack.
        match attempt(&sh, &job.url, &body, &event_id, 0, "").await {
            Attempt::Done => http_done(&sh, None),
            Attempt::Failed(reason) => {
                let sh2 = sh.clone();
                tokio::spawn(retry_chain(sh2, job.url, body, event_id, reason));
            }
        }
    }
}

async fn retry_chain(
    sh: Arc<Shared>,
    url: String,
    body: Vec<u8>,
    event_id: String,
    mut reason: &'static str,
) {
    for (i, delay) in sh.cfg.http_retry_delays.clone().into_iter().enumerate() {
        tokio::time::sleep(delay).await;
        if *sh.shutdown.borrow() {
            return;
        }
        let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
        match attempt(&sh, &url, &body, &event_id, n, reason).await {
            Attempt::Done => return http_done(&sh, None),
            Attempt::Failed(r) => reason = r,
        }
    }
    http_done(&sh, Some(event_id));
}

fn http_done(sh: &Shared, failed: Option<String>) {
    {
        let mut w = sh.lock();
        w.dl.http_outstanding = w.dl.http_outstanding.saturating_sub(1);
        if let Some(id) = failed {
            w.dl.failed.push(id);
        }
    }
    sh.bump();
}

async fn attempt(
    sh: &Shared,
    url: &str,
    body: &[u8],
    event_id: &str,
    retry_num: u32,
    reason: &str,
) -> Attempt {
    let retry = (retry_num > 0).then_some((retry_num, reason));
    let res = post(sh, url, body, SignMode::Valid, retry).await;
    let (outcome, rec) = match res {
        Ok(r) => {
            let ok = (200..300).contains(&r.reply.status);
            let no_retry = r.no_retry;
            let rec = HttpDelivery {
                event_id: event_id.to_owned(),
                retry_num,
                status: Some(r.reply.status),
                error: None,
                no_retry,
            };
            let outcome = if ok || no_retry {
                Attempt::Done
            } else {
                Attempt::Failed("http_error")
            };
            (outcome, rec)
        }
        Err(e) => {
            let reason = if e.is_timeout() {
                "http_timeout"
            } else if e.is_connect() {
                "connection_failed"
            } else if e.is_redirect() {
                "too_many_redirects"
            } else {
                "unknown_error"
            };
            let rec = HttpDelivery {
                event_id: event_id.to_owned(),
                retry_num,
                status: None,
                error: Some(reason.to_owned()),
                no_retry: false,
            };
            (Attempt::Failed(reason), rec)
        }
    };
    sh.lock().dl.http_log.push(rec);
    sh.bump();
    outcome
}

struct Sent {
    reply: HttpReply,
    no_retry: bool,
}

async fn post(
    sh: &Shared,
    url: &str,
    body: &[u8],
    mode: SignMode,
    retry: Option<(u32, &str)>,
) -> Result<Sent, reqwest::Error> {
    let now = unix_now();
    let ts = match mode {
        SignMode::StaleTimestamp => now.saturating_sub(600),
        _ => now,
    }
    .to_string();
    let secret = match mode {
        SignMode::BadSignature => format!("{}-wrong", sh.cfg.signing_secret),
        _ => sh.cfg.signing_secret.clone(),
    };
    let mut req = sh
        .http
        .post(url)
        .timeout(sh.cfg.http_timeout)
        .header("Content-Type", "application/json")
        .header("User-Agent", "Slackbot 1.0 (+https://api.slack.com/robots)")
        .header("X-Slack-Request-Timestamp", &ts)
        .header("X-Slack-Signature", sign_v0(&secret, &ts, body))
        .body(body.to_vec());
    if let Some((n, reason)) = retry {
        req = req
            .header("X-Slack-Retry-Num", n.to_string())
            .header("X-Slack-Retry-Reason", reason);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let no_retry = resp
        .headers()
        .get("x-slack-no-retry")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "1");
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await?;
    Ok(Sent {
        reply: HttpReply {
            status,
            content_type,
            body: text,
        },
        no_retry,
    })
}

pub(crate) async fn send_signed(
    sh: &Shared,
    url: &str,
    body: &[u8],
    mode: SignMode,
) -> Result<HttpReply, reqwest::Error> {
    Ok(post(sh, url, body, mode, None).await?.reply)
}

pub(crate) async fn send_url_verification(
    sh: &Arc<Shared>,
    url: &str,
) -> Result<(String, HttpReply), reqwest::Error> {
    let challenge = {
        let mut w = sh.lock();
        format!("{}{}", w.ws.ids.token(24), w.ws.ids.token(24))
    };
    let body = json!({"token": sh.cfg.verification_token, "challenge": challenge,
                      "type": "url_verification"})
    .to_string();
    let sent = post(sh, url, body.as_bytes(), SignMode::Valid, None).await?;
    Ok((challenge, sent.reply))
}

pub(crate) async fn send_app_rate_limited(
    sh: &Arc<Shared>,
    url: &str,
) -> Result<HttpReply, reqwest::Error> {
    let minute = unix_now() / 60 * 60;
    let body = json!({"token": sh.cfg.verification_token, "type": "app_rate_limited",
                      "team_id": sh.cfg.team_id, "minute_rate_limited": minute,
                      "api_app_id": sh.cfg.app_id})
    .to_string();
    Ok(post(sh, url, body.as_bytes(), SignMode::Valid, None)
        .await?
        .reply)
}

#[cfg(test)]
mod tests {
    use super::sign_v0;

    const SECRET: &str = "bridge-test-signing-secret";

    #[test]
    fn vector_1_slack_published_example() {
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        assert_eq!(
            sign_v0(
                "8f742231b10e8888abcd99yyyzzz85a5",
                "1531420618",
                body.as_bytes()
            ),
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
    }

    #[test]
    fn vector_2_event_callback() {
        let body = r#"{"token":"XXYYZZ","team_id":"T0001","api_app_id":"A0001","event":{"type":"message","channel":"C0001","user":"U0002","text":"hello &amp; <https://example.com|example>","ts":"1700000000.000100","thread_ts":"1699999999.000200","parent_user_id":"U0001","event_ts":"1700000000.000100","channel_type":"channel"},"type":"event_callback","event_id":"Ev0001","event_time":1700000000,"authorizations":[{"enterprise_id":null,"team_id":"T0001","user_id":"U0001","is_bot":true,"is_enterprise_install":false}],"is_ext_shared_channel":false,"event_context":"4-eyJldCI6Im1lc3NhZ2UifQ"}"#;
        assert_eq!(body.len(), 569);
        assert_eq!(
            sign_v0(SECRET, "1700000000", body.as_bytes()),
            "v0=8fe38785805887af2e425a591aec76328e780f9cce86908f5116fd2d33eb18d8"
        );
    }

    #[test]
    fn vector_3_url_verification() {
        let body = r#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
        assert_eq!(
            sign_v0(SECRET, "1700000000", body.as_bytes()),
            "v0=2017e7520e178f4eb14e9bacf5d2c1b71a81637eb5236eb825cc7110edf71e8f"
        );
    }

    #[test]
    fn vector_4_non_ascii() {
        assert_eq!(
            sign_v0(
                SECRET,
                "1700000000",
                "{\"text\":\"Привет, мир ✓\"}".as_bytes()
            ),
            "v0=ffaa6fcb6ff596497b99228d29c29a3144c02f8b394930b1db045134a1bdcc23"
        );
    }
}
