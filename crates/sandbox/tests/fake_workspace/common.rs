//! Helpers shared by the fake-Slack conformance tests.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use livefeed_sandbox::slack::{FakeSlack, NewUser, WorkspaceConfig, sign_v0};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Guards against hangs only; tests synchronise on conditions, never on sleeps.
pub const GUARD: Duration = Duration::from_secs(10);

pub struct Ws {
    pub fake: FakeSlack,
    pub http: reqwest::Client,
    pub human: String,
    pub human2: String,
    pub feed: String,
}

pub async fn start(cfg: WorkspaceConfig) -> Ws {
    let fake = FakeSlack::start(cfg).await.expect("start fake slack");
    let human = fake.add_user(NewUser {
        display_name: "ivan.p".into(),
        image_72: Some("https://avatars.example/ivan_72.png".into()),
        ..NewUser::new("ivan", "Ivan Petrov")
    });
    let human2 = fake.add_user(NewUser::new("anna", "Anna Smirnova"));
    let feed = fake.add_channel("b24-feed", false, true);
    Ws {
        fake,
        http: reqwest::Client::new(),
        human,
        human2,
        feed,
    }
}

/// Default workspace without `chat.postMessage` pacing, for tests that are not about it.
pub async fn start_default() -> Ws {
    start(WorkspaceConfig {
        post_rate: None,
        ..WorkspaceConfig::default()
    })
    .await
}

pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Ws {
    pub fn url(&self, method: &str) -> String {
        format!("{}{method}", self.fake.api_base())
    }

    pub fn bot(&self) -> &str {
        &self.fake.config().bot_token
    }

    async fn finish(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            headers,
            body,
        }
    }

    /// POST JSON with the bot token in the header, as the bridge does for writes.
    pub async fn json(&self, method: &str, body: Value) -> Reply {
        let resp = self
            .http
            .post(self.url(method))
            .bearer_auth(self.bot())
            .header("Content-Type", "application/json; charset=utf-8")
            .body(body.to_string())
            .send()
            .await
            .expect("send");
        Self::finish(resp).await
    }

    /// POST form-encoded with the bot token in the header, as the bridge does for reads.
    pub async fn form(&self, method: &str, pairs: &[(&str, &str)]) -> Reply {
        let resp = self
            .http
            .post(self.url(method))
            .bearer_auth(self.bot())
            .form(pairs)
            .send()
            .await
            .expect("send");
        Self::finish(resp).await
    }

    pub async fn raw(&self, req: reqwest::RequestBuilder) -> Reply {
        Self::finish(req.send().await.expect("send")).await
    }

    pub async fn post(&self, channel: &str, text: &str) -> Value {
        let r = self
            .json(
                "chat.postMessage",
                json!({"channel": channel, "text": text}),
            )
            .await;
        assert_eq!(r.body["ok"], true, "{}", r.body);
        r.body
    }

    /// The last emitted event_callback payload.
    pub fn last_event(&self) -> Value {
        self.fake
            .events_sent()
            .last()
            .cloned()
            .unwrap_or(Value::Null)
    }

    pub async fn open_socket(&self) -> (Sock, Value) {
        let r = self
            .raw(
                self.http
                    .post(self.url("apps.connections.open"))
                    .bearer_auth(&self.fake.config().app_token)
                    .header("Content-Type", "application/json;charset=utf-8"),
            )
            .await;
        assert_eq!(r.body["ok"], true, "{}", r.body);
        let url = r.body["url"].as_str().expect("url").to_owned();
        let mut sock = Sock::connect(&url).await.expect("ws connect");
        let hello = sock.next_json().await;
        (sock, hello)
    }
}

pub struct Sock {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub url: String,
}

impl Sock {
    pub async fn connect(url: &str) -> Result<Sock, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Sock {
            ws,
            url: url.to_owned(),
        })
    }

    /// The next JSON text frame (pings are answered by the library).
    pub async fn next_json(&mut self) -> Value {
        self.try_next_json()
            .await
            .expect("socket closed before a frame arrived")
    }

    pub async fn try_next_json(&mut self) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(GUARD, self.ws.next())
                .await
                .expect("no frame within the guard time")?;
            match msg {
                Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    pub async fn send_json(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send frame");
    }

    pub async fn ack(&mut self, envelope: &Value) {
        let id = envelope["envelope_id"].clone();
        self.send_json(json!({"envelope_id": id})).await;
    }
}

/// One scripted answer of the test receiver.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub status: u16,
    pub no_retry: bool,
    pub delay: Duration,
}

impl Step {
    pub fn status(status: u16) -> Step {
        Step {
            status,
            no_retry: false,
            delay: Duration::ZERO,
        }
    }
}

/// A tiny Events API receiver: records each request, verifies signatures like a real app
/// (401 when invalid or older than 300 s), answers `url_verification`, and otherwise follows
/// the script (then 200).
#[derive(Clone, Default)]
pub struct Receiver {
    pub secret: String,
    pub hits: Arc<Mutex<Vec<Hit>>>,
    pub script: Arc<Mutex<Vec<Step>>>,
    pub notify: Arc<tokio::sync::Notify>,
}

#[derive(Clone, Debug)]
pub struct Hit {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub signature_ok: bool,
}

impl Hit {
    pub fn header(&self, k: &str) -> Option<String> {
        self.headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

impl Receiver {
    pub fn new(secret: &str) -> Receiver {
        Receiver {
            secret: secret.to_owned(),
            ..Receiver::default()
        }
    }

    pub fn script(&self, steps: &[Step]) {
        self.script.lock().expect("lock").extend_from_slice(steps);
    }

    pub async fn start(self) -> String {
        use axum::body::Bytes;
        use axum::extract::State;
        use axum::http::{HeaderMap as AxHeaders, StatusCode};
        use axum::response::IntoResponse;

        async fn handle(
            State(r): State<Receiver>,
            headers: AxHeaders,
            body: Bytes,
        ) -> axum::response::Response {
            let mut h = HeaderMap::new();
            for (k, v) in &headers {
                if let (Ok(k), Ok(v)) = (
                    reqwest::header::HeaderName::from_bytes(k.as_str().as_bytes()),
                    reqwest::header::HeaderValue::from_bytes(v.as_bytes()),
                ) {
                    h.insert(k, v);
                }
            }
            let get = |k: &str| {
                headers
                    .get(k)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            let ts = get("x-slack-request-timestamp");
            let fresh = ts.parse::<u64>().is_ok_and(|t| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                now.abs_diff(t) <= 300
            });
            let signature_ok = fresh && get("x-slack-signature") == sign_v0(&r.secret, &ts, &body);
            r.hits.lock().expect("lock").push(Hit {
                headers: h,
                body: body.to_vec(),
                signature_ok,
            });
            r.notify.notify_waiters();
            if !signature_ok {
                return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
            }
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if v["type"] == "url_verification" {
                let challenge = v["challenge"].as_str().unwrap_or_default().to_owned();
                return (StatusCode::OK, [("content-type", "text/plain")], challenge)
                    .into_response();
            }
            let next = {
                let mut s = r.script.lock().expect("lock");
                if s.is_empty() {
                    None
                } else {
                    Some(s.remove(0))
                }
            };
            let Some(step) = next else {
                return (StatusCode::OK, "").into_response();
            };
            tokio::time::sleep(step.delay).await;
            let code = StatusCode::from_u16(step.status).expect("status");
            if step.no_retry {
                (code, [("X-Slack-No-Retry", "1")], "no").into_response()
            } else {
                (code, "scripted").into_response()
            }
        }

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new()
            .route("/slack/events", axum::routing::post(handle))
            .with_state(self);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}/slack/events")
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().expect("lock").clone()
    }

    pub async fn wait_hits(&self, n: usize) -> Vec<Hit> {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Register before checking so a delivery in between is not missed.
            notified.as_mut().enable();
            let hits = self.hits();
            if hits.len() >= n {
                return hits;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("expected {n} deliveries, got {}", self.hits().len());
            }
        }
    }
}
