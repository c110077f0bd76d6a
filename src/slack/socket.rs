//! Socket Mode intake (docs/platforms/slack.md §5): no public URL needed.
//!
//! `apps.connections.open` (app-level token) gives a single-use WebSocket URL; Slack greets with
//! `hello`, sends `events_api` envelopes, and asks us to reconnect with `disconnect`
//! (`warning`, `refresh_requested`) or simply drops the socket. An envelope is acknowledged only
//! after its event is in the journal: a crash before that point makes Slack redeliver it, and
//! the `event_id` deduplication makes the redelivery harmless. Reconnects back off
//! exponentially with jitter; `link_disabled` (Socket Mode switched off) waits long instead of
//! looping.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use livefeed_core::health::Health;

use super::PLATFORM;
use super::api::{Body, SlackApi};
use super::intake::SlackIntake;
use crate::secret::Secret;
use crate::upstream::{ErrorClass, Repeat};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type Sink = futures_util::stream::SplitSink<Socket, Message>;
const PING_EVERY: Duration = Duration::from_secs(10);
/// No frame (not even a pong) for this long means a half-open socket.
const IDLE_LIMIT: Duration = Duration::from_secs(35);

enum End {
    /// Slack asked for a new connection.
    Reconnect,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("Slack refused the app token or Socket Mode is off: {0}")]
    Auth(String),
    #[error("{0}")]
    Other(String),
    /// A working connection ended: reconnect at once, it is not a failure streak.
    #[error("{0}")]
    Dropped(String),
}

/// The Socket Mode connection: reconnects until the bridge stops, hands every event to the
/// intake and acknowledges it once journaled.
pub struct SocketMode {
    api: SlackApi,
    app_token: Secret,
    intake: SlackIntake,
    health: Arc<Health>,
    /// Asked for a catch-up on every `hello`: events sent while no connection listened may
    /// have been given up by Slack.
    catch_up: mpsc::Sender<()>,
}

impl SocketMode {
    /// A connection that will use `app_token` (`xapp-…`).
    pub fn new(
        api: SlackApi,
        app_token: Secret,
        intake: SlackIntake,
        health: Arc<Health>,
        catch_up: mpsc::Sender<()>,
    ) -> Self {
        health.register(PLATFORM.as_str());
        SocketMode {
            api,
            app_token,
            intake,
            health,
            catch_up,
        }
    }

    /// Stay connected until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let outcome = tokio::select! {
                o = self.session() => o,
                _ = cancel.cancelled() => return,
            };
            self.health.disconnected(PLATFORM.as_str());
            let delay = match outcome {
                Ok(End::Reconnect) => {
                    failures = 0;
                    info!("Socket Mode: reconnecting as Slack asked");
                    Duration::ZERO
                }
                Err(SessionError::Auth(e)) => {
                    warn!(error = %e, "Socket Mode cannot connect; retrying in 60 s");
                    self.health.error(PLATFORM.as_str(), &e, true);
                    Duration::from_secs(60)
                }
                Err(SessionError::Dropped(e)) => {
                    failures = 0;
                    warn!(error = %e, "Socket Mode connection dropped; reconnecting");
                    self.health.error(PLATFORM.as_str(), &e, false);
                    Duration::from_millis(100 + fastrand::u64(0..400))
                }
                Err(SessionError::Other(e)) => {
                    failures += 1;
                    let base = 500u64.saturating_mul(1 << failures.min(6));
                    let delay = Duration::from_millis(base.min(30_000) + fastrand::u64(0..500));
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Socket Mode connection lost");
                    self.health.error(PLATFORM.as_str(), &e, false);
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// Ask for a WebSocket URL with the app-level token and connect to it.
    async fn open(&self) -> Result<Socket, SessionError> {
        let opened = self
            .api
            .call_with(
                "apps.connections.open",
                None,
                Body::Form(Vec::new()),
                Repeat::Safe,
                &self.app_token,
            )
            .await
            .map_err(|e| match e.class {
                ErrorClass::Auth => SessionError::Auth(e.to_string()),
                _ => SessionError::Other(e.to_string()),
            })?;
        let url = opened
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| SessionError::Other("apps.connections.open returned no url".into()))?;
        // The URL carries a one-time ticket: never log it.
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| SessionError::Other(format!("WebSocket connect failed: {e}")))?;
        Ok(ws)
    }

    /// One connection, from `apps.connections.open` until it ends.
    async fn session(&self) -> Result<End, SessionError> {
        let (mut sink, mut stream) = self.open().await?.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut last_frame = Instant::now();
        let mut greeted = false;
        loop {
            let frame = tokio::select! {
                f = stream.next() => f,
                _ = ping.tick() => {
                    if last_frame.elapsed() > IDLE_LIMIT {
                        return Err(lost(greeted, "no traffic from Slack; the socket is half-open".into()));
                    }
                    sink.send(Message::Ping(Vec::new().into()))
                        .await
                        .map_err(|e| lost(greeted, format!("ping failed: {e}")))?;
                    continue;
                }
            };
            let frame = match frame {
                None => return Err(lost(greeted, "Slack closed the socket".into())),
                Some(Err(e)) => return Err(lost(greeted, format!("socket error: {e}"))),
                Some(Ok(f)) => f,
            };
            last_frame = Instant::now();
            let text = match frame {
                Message::Text(t) => t,
                Message::Ping(p) => {
                    let _ = sink.send(Message::Pong(p)).await;
                    continue;
                }
                Message::Close(_) => {
                    return Err(lost(greeted, "Slack closed the socket".into()));
                }
                _ => continue,
            };
            let Ok(envelope) = serde_json::from_str::<Value>(text.as_str()) else {
                warn!(bytes = text.len(), "Socket Mode frame is not JSON; ignored");
                continue;
            };
            if let Some(end) = self.envelope(&envelope, &mut sink, &mut greeted).await? {
                return Ok(end);
            }
        }
    }

    /// Act on one envelope; `Some` ends the connection.
    async fn envelope(
        &self,
        envelope: &Value,
        sink: &mut Sink,
        greeted: &mut bool,
    ) -> Result<Option<End>, SessionError> {
        match envelope.get("type").and_then(Value::as_str) {
            Some("hello") => {
                *greeted = true;
                info!("Socket Mode connected");
                self.health.ok(PLATFORM.as_str());
                // A full queue already has a catch-up coming.
                let _ = self.catch_up.try_send(());
            }
            Some("disconnect") => {
                let reason = envelope.get("reason").and_then(Value::as_str).unwrap_or("");
                if reason == "link_disabled" {
                    return Err(SessionError::Auth(
                        "Socket Mode is disabled in the Slack app's settings".into(),
                    ));
                }
                debug!(reason, "Slack asked for a reconnect");
                let _ = sink.send(Message::Close(None)).await;
                return Ok(Some(End::Reconnect));
            }
            Some("events_api") => {
                let Some(id) = envelope.get("envelope_id").and_then(Value::as_str) else {
                    warn!("events_api envelope without envelope_id; ignored");
                    return Ok(None);
                };
                let payload = envelope.get("payload").cloned().unwrap_or(Value::Null);
                match self.intake.handle(&payload).await {
                    Ok(()) => {
                        livefeed_core::crashpoint::hit("slack.journaled");
                        let ack = json!({ "envelope_id": id }).to_string();
                        sink.send(Message::Text(ack.into()))
                            .await
                            .map_err(|e| lost(*greeted, format!("ack failed: {e}")))?;
                        self.health.ok(PLATFORM.as_str());
                    }
                    // Not acknowledged: Slack redelivers it.
                    Err(e) => {
                        warn!(error = %e, "cannot journal a Slack event; leaving it unacknowledged")
                    }
                }
            }
            other => {
                // Slash commands and interactivity are not ours; acknowledge so Slack stops.
                if let Some(id) = envelope.get("envelope_id").and_then(Value::as_str) {
                    let ack = json!({ "envelope_id": id }).to_string();
                    let _ = sink.send(Message::Text(ack.into())).await;
                }
                debug!(kind = ?other, "Socket Mode frame ignored");
            }
        }
        Ok(None)
    }
}

/// Errors after `hello` are drops of a working link, not connection failures.
fn lost(greeted: bool, e: String) -> SessionError {
    if greeted {
        SessionError::Dropped(e)
    } else {
        SessionError::Other(e)
    }
}
