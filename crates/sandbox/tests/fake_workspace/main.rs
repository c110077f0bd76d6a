//! Conformance tests for the fake Slack workspace, driven over HTTP and WebSocket.

mod common;
mod events_http;
mod socket_mode;
mod web_api;
