//! The Socket Mode WebSocket server (contract §5): ticket check at the handshake, `hello`,
//! envelopes written from the delivery queue, acks, pings, `disconnect` frames, abrupt closes
//! and half-open sockets.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request, Response,
};
use tokio_tungstenite::tungstenite::http::StatusCode;

use super::Shared;
use super::events::Outbound;

pub(crate) async fn serve(sh: Arc<Shared>, listener: TcpListener) {
    let mut stop = sh.shutdown.subscribe();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    tokio::spawn(connection(sh.clone(), stream));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
            _ = super::stopped(&mut stop) => return,
        }
    }
}

/// Handshake check: consumes the `ticket` of `/link/?ticket=…`, so each ticket opens exactly
/// one socket.
struct TicketCheck(Arc<Shared>);

impl Callback for TicketCheck {
    fn on_request(self, req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
        let uri = req.uri();
        let (status, why) = if !uri.path().starts_with("/link") {
            (StatusCode::NOT_FOUND, "not found")
        } else {
            let ticket = uri.query().and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "ticket")
                    .map(|(_, v)| v.into_owned())
            });
            if ticket.is_some_and(|t| self.0.lock().dl.tickets.remove(&t)) {
                return Ok(resp);
            }
            (StatusCode::UNAUTHORIZED, "invalid or used ticket")
        };
        let mut r = ErrorResponse::new(Some(why.to_owned()));
        *r.status_mut() = status;
        Err(r)
    }
}

fn disconnect_frame(reason: &str) -> Message {
    Message::text(
        json!({"type": "disconnect", "reason": reason,
               "debug_info": {"host": "applink-fakeslack"}})
        .to_string(),
    )
}

async fn connection(sh: Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let check = TicketCheck(sh.clone());
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, check).await else {
        return;
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let registered = sh.lock().dl.register(tx, sh.cfg.max_socket_connections);
    let Some((id, num)) = registered else {
        let _ = ws.send(disconnect_frame("too_many_websockets")).await;
        let _ = ws.close(None).await;
        return;
    };
    let hello = json!({
        "type": "hello", "num_connections": num,
        "debug_info": {"host": format!("applink-fakeslack-{id}"), "build_number": 1,
                       "approximate_connection_time": 18060},
        "connection_info": {"app_id": sh.cfg.app_id},
    });
    if ws.send(Message::text(hello.to_string())).await.is_ok() {
        sh.bump();
        sh.flush_pending();
        run(&sh, &mut ws, rx).await;
    }
    sh.lock().dl.conns.remove(&id);
    sh.bump();
}

async fn run(
    sh: &Arc<Shared>,
    ws: &mut WebSocketStream<TcpStream>,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
) {
    let mut stop = sh.shutdown.subscribe();
    let ping_every = sh.cfg.ping_interval;
    let mut next_ping = ping_every.map(|d| Instant::now() + d);
    let mut close_at: Option<Instant> = None;
    let mut frozen = false;
    loop {
        tokio::select! {
            msg = ws.next(), if !frozen => match msg {
                Some(Ok(Message::Text(t))) => on_client_frame(sh, t.as_str()),
                // tungstenite queues the pong; flushing sends it now.
                Some(Ok(Message::Ping(_))) => {
                    if ws.flush().await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Pong(_))) => {
                    sh.lock().dl.pongs += 1;
                    sh.bump();
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            out = rx.recv() => match out {
                Some(Outbound::Frame(text)) => {
                    // A half-open socket swallows envelopes; redelivery recovers them.
                    if !frozen && ws.send(Message::text(text)).await.is_err() {
                        return;
                    }
                }
                Some(Outbound::Disconnect { reason, grace }) => {
                    if ws.send(disconnect_frame(&reason)).await.is_err() {
                        return;
                    }
                    if grace.is_zero() {
                        let _ = ws.close(None).await;
                        return;
                    }
                    close_at = Some(Instant::now() + grace);
                }
                Some(Outbound::Freeze) => frozen = true,
                Some(Outbound::Close) => {
                    let _ = ws.close(None).await;
                    return;
                }
                Some(Outbound::Abort) | None => {
                    // RST, no close frame.
                    let _ = ws.get_ref().set_zero_linger();
                    return;
                }
            },
            _ = sleep_until(close_at), if close_at.is_some() => {
                let _ = ws.close(None).await;
                return;
            }
            _ = sleep_until(next_ping), if next_ping.is_some() && !frozen => {
                if ws.send(Message::Ping(b"fakeslack".to_vec().into())).await.is_err() {
                    return;
                }
                next_ping = ping_every.map(|d| Instant::now() + d);
            }
            _ = super::stopped(&mut stop) => {
                let _ = ws.close(None).await;
                return;
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Acks are `{"envelope_id": …}` with or without a `payload`; anything else is ignored.
fn on_client_frame(sh: &Shared, text: &str) {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        tracing::debug!("fake Slack: ignoring non-JSON socket frame");
        return;
    };
    if let Some(id) = v.get("envelope_id").and_then(Value::as_str) {
        sh.lock().dl.ack(id);
        sh.bump();
    }
}
