//! Idle cost: requests per hour each platform gets from the bridge while nothing happens, per
//! intake mode, at the default configuration.
//!
//! An hour is simulated: every interval of the default configuration (poll, reconcile,
//! offline queue, the access token's lifetime) is divided by `scale`, and the requests counted
//! over `seconds` are scaled back to an hour. 20 posts are mirrored first, so the reconcile
//! round has posts to re-read, as it would on a real portal.

use std::time::Duration;

use super::process::{Bridge, free_port, temp_dir};
use super::{Fakes, Report};
use crate::bitrix::{LeakyBucket, NewPost, OAuthApp, PortalConfig};
use crate::slack::WorkspaceConfig;

/// What idle costs in one mode.
#[derive(Debug, Clone, Copy)]
pub struct IdleCost {
    /// Requests to the portal per hour (a `batch` is one request).
    pub bitrix_per_hour: f64,
    /// OAuth token refreshes per hour (not REST requests; the token server's).
    pub refreshes_per_hour: f64,
    /// Slack Web API calls per hour.
    pub slack_per_hour: f64,
}

/// The default intervals, divided by `scale`, as `bridge.yaml` durations.
fn scaled(default_ms: u64, scale: u32) -> String {
    format!("{}ms", (default_ms / u64::from(scale)).max(1))
}

/// Measure one mode (`poll`, `offline`, `push`).
pub async fn measure(mode: &str, scale: u32, seconds: u64) -> IdleCost {
    // Time runs `scale` times faster: the portal's leaky bucket drains that much faster and the
    // bridge paces that much faster, so the limits bind exactly as they would in real time.
    let bucket = PortalConfig::default().rate_limit.map(|b| LeakyBucket {
        drain_per_sec: b.drain_per_sec * f64::from(scale),
        ..b
    });
    // Mirroring the setup's posts is not what is measured: Slack's pacing is off.
    let Fakes {
        portal,
        slack,
        author,
    } = Fakes::start(
        PortalConfig {
            rate_limit: bucket,
            oauth: OAuthApp {
                access_ttl: Duration::from_millis(3_600_000 / u64::from(scale)),
                ..OAuthApp::default()
            },
            ..PortalConfig::default()
        },
        WorkspaceConfig {
            post_rate: None,
            ..WorkspaceConfig::default()
        },
    )
    .await;
    let news = slack.add_channel("company-news", false, true);
    let dir = temp_dir();
    let port = free_port();
    let cfg = slack.config();
    let app = OAuthApp::default();
    let bitrix = match mode {
        "poll" => format!(
            "bitrix24:\n  webhook_url: {}\n  poll:\n    interval: {}\n    reconcile_interval: {}\n",
            portal.webhook_url(),
            scaled(5_000, scale),
            scaled(300_000, scale)
        ),
        _ => {
            let url = portal.portal_url();
            let mut text = format!(
                "bitrix24:\n  intake: {mode}\n  oauth:\n    portal: {url}\n    server: {url}/\n    client_id: {}\n    client_secret: {}\n    refresh_token: {}\n  poll:\n    interval: {}\n    reconcile_interval: {}\n  offline:\n    interval: {}\n    idle_interval: {}\n",
                app.client_id,
                app.client_secret,
                portal.issue_refresh_token(),
                scaled(300_000, scale),
                scaled(300_000, scale),
                scaled(2_000, scale),
                scaled(30_000, scale),
            );
            if mode == "push" {
                text.push_str(&format!(
                    "  push:\n    path: /bitrix24/events\n    application_token: {}\n    handler_url: http://127.0.0.1:{port}/bitrix24/events\n",
                    app.application_token
                ));
            }
            text
        }
    };
    let config = format!(
        "{bitrix}  rate_limit: {{ per_second: {}, burst: 50 }}\nslack:\n  bot_token: {}\n  app_token: {}\n  api_base: {}\n  post_rate: {{ per_second: 0 }}\nstore: {{ path: {} }}\nhttp: {{ listen: 127.0.0.1:{port} }}\nmappings:\n  - name: news\n    audience: [all]\n    slack: {{ channel: {news} }}\n",
        2 * scale,
        cfg.bot_token,
        cfg.app_token,
        slack.api_base(),
        dir.join("data").display(),
    );
    let bridge = Bridge::start(&dir, &config, port, Duration::from_secs(30)).await;
    // Wait for the first poll's baseline (and the bindings), then give it posts to track.
    let baseline = Duration::from_secs(30);
    assert!(
        portal
            .wait_until(baseline, |p| p.request_count("log.blogpost.get")
                + p.request_count("batch")
                >= 1
                && (mode == "poll" || p.event_bindings().len() >= 3))
            .await,
        "{mode}: no first poll"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..20 {
        portal.create_post(
            author,
            NewPost {
                title: Some(format!("Idle {i}")),
                text: "to track".into(),
                dest: vec!["UA".into()],
                important: false,
                files: Vec::new(),
            },
        );
    }
    assert!(
        slack
            .wait_until(Duration::from_secs(120), |s| s.history(&news).len() >= 20)
            .await,
        "{mode}: the 20 posts were not mirrored"
    );
    // Let the last effects settle, then count over the window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (b0, r0, s0) = (
        portal.requests().len(),
        portal.oauth_refreshes(),
        slack.requests().len(),
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (b1, r1, s1) = (
        portal.requests().len(),
        portal.oauth_refreshes(),
        slack.requests().len(),
    );
    bridge.stop().await;
    let hours = (seconds * u64::from(scale)) as f64 / 3600.0;
    super::process::remove_dir(&dir);
    IdleCost {
        bitrix_per_hour: (b1 - b0) as f64 / hours,
        refreshes_per_hour: (r1 - r0) as f64 / hours,
        slack_per_hour: (s1 - s0) as f64 / hours,
    }
}

/// Every mode, into `report`.
pub async fn run(report: &mut Report, scale: u32, seconds: u64) {
    let mut poll_rate = None;
    for mode in ["poll", "offline", "push"] {
        let cost = measure(mode, scale, seconds).await;
        let against_poll = poll_rate.map(|p: f64| p / cost.bitrix_per_hour);
        if mode == "poll" {
            poll_rate = Some(cost.bitrix_per_hour);
        }
        let target = match against_poll {
            Some(_) if cost.bitrix_per_hour == 0.0 => "none in the window".into(),
            Some(x) => format!("{x:.1}× fewer than poll"),
            None => "the baseline".into(),
        };
        report.add(
            "idle",
            &format!("{mode}: Bitrix24 requests per hour"),
            cost.bitrix_per_hour.round(),
            "req/h",
            None,
            Some(&target),
        );
        if mode != "poll" {
            report.add(
                "idle",
                &format!("{mode}: OAuth token refreshes per hour"),
                cost.refreshes_per_hour.round(),
                "req/h",
                None,
                None,
            );
        }
        report.add(
            "idle",
            &format!("{mode}: Slack Web API calls per hour"),
            cost.slack_per_hour.round(),
            "req/h",
            None,
            None,
        );
    }
}
