//! The performance harness behind `livefeed-bench`: the real `livefeed-bridge` binary driven
//! against the fakes, one scenario at a time, each figure reported absolute and as a ratio to
//! the platform ceiling it is bounded by. docs/performance.md has the scenarios, the ceilings
//! and the results.
//!
//! - [`process`]: start the bridge binary on a generated config, wait for `/readyz`, read its
//!   RSS, stop it with SIGTERM.
//! - [`idle`]: what the bridge costs the platforms when nothing happens, per intake mode.
//! - [`catchup`]: a backlog after a restart, and replies coming back, against scaled limits;
//!   with a homeserver in the environment, part of it into an encrypted Matrix room.
//! - [`matrix`]: a real Synapse's bot, person and room for it.
//! - [`latency`]: from the portal's answer to the chat call, per post.
//! - [`scale`]: a store with many mapped posts: ready time, RSS, disk, a reconcile round.
//! - [`Report`]: the table, printed and written as JSON.

pub mod catchup;
pub mod idle;
pub mod latency;
pub mod matrix;
pub mod process;
pub mod scale;

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::bitrix::{FakePortal, NewUser, PortalConfig};
use crate::slack::{FakeSlack, WorkspaceConfig};

/// The two fakes a scenario runs against, and the author of the feed's posts.
pub struct Fakes {
    /// The portal.
    pub portal: FakePortal,
    /// The workspace.
    pub slack: FakeSlack,
    /// The portal user who writes every post.
    pub author: u64,
}

impl Fakes {
    /// Start both as configured and add the author.
    pub async fn start(portal: PortalConfig, slack: WorkspaceConfig) -> Fakes {
        let portal = FakePortal::start(portal).await.expect("portal starts");
        let slack = FakeSlack::start(slack).await.expect("workspace starts");
        let author = portal.add_user(NewUser {
            name: "Ivan".into(),
            last_name: "Petrov".into(),
            active: true,
            ..Default::default()
        });
        Fakes {
            portal,
            slack,
            author,
        }
    }

    /// Both without rate limits: what is measured is the bridge, not the platforms.
    pub async fn unlimited() -> Fakes {
        Fakes::start(
            PortalConfig {
                rate_limit: None,
                ..PortalConfig::default()
            },
            WorkspaceConfig {
                post_rate: None,
                ..WorkspaceConfig::default()
            },
        )
        .await
    }

    /// A `bridge.yaml` on the webhook with limits off, the poll section as given (`{ … }`),
    /// one mapping of everyone's posts to `channel`, the store in `dir`, listening on `port`.
    pub fn unlimited_config(&self, poll: &str, channel: &str, dir: &Path, port: u16) -> String {
        let cfg = self.slack.config();
        format!(
            "bitrix24:\n  webhook_url: {}\n  poll: {poll}\n  rate_limit: {{ per_second: 0 }}\nslack:\n  bot_token: {}\n  app_token: {}\n  api_base: {}\n  post_rate: {{ per_second: 0 }}\nstore: {{ path: {} }}\nhttp: {{ listen: 127.0.0.1:{port} }}\nmappings:\n  - name: news\n    audience: [all]\n    slack: {{ channel: {channel} }}\n",
            self.portal.webhook_url(),
            cfg.bot_token,
            cfg.app_token,
            self.slack.api_base(),
            dir.join("data").display(),
        )
    }
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Scenario.
    pub scenario: String,
    /// What was measured.
    pub name: String,
    /// The value.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// The value as a share of its ceiling, when it has one.
    pub of_ceiling: Option<f64>,
    /// The target it is held against, in words.
    pub target: Option<String>,
}

/// Every figure of a run.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// In order of measurement.
    pub figures: Vec<Figure>,
}

impl Report {
    /// Record a figure.
    pub fn add(
        &mut self,
        scenario: &str,
        name: &str,
        value: f64,
        unit: &str,
        of_ceiling: Option<f64>,
        target: Option<&str>,
    ) {
        self.figures.push(Figure {
            scenario: scenario.into(),
            name: name.into(),
            value,
            unit: unit.into(),
            of_ceiling,
            target: target.map(Into::into),
        });
    }

    /// The table, one line per figure.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<12} {:<58} {:>12} {:<10} {:>9}  target",
            "scenario", "figure", "value", "unit", "ceiling"
        );
        for f in &self.figures {
            let ceiling = f
                .of_ceiling
                .map(|r| format!("{:.1} %", r * 100.0))
                .unwrap_or_default();
            let value = if f.value.fract() == 0.0 && f.value.abs() < 1e12 {
                format!("{}", f.value as i64)
            } else {
                format!("{:.3}", f.value)
            };
            let _ = writeln!(
                out,
                "{:<12} {:<58} {:>12} {:<10} {:>9}  {}",
                f.scenario,
                f.name,
                value,
                f.unit,
                ceiling,
                f.target.as_deref().unwrap_or("")
            );
        }
        out
    }

    /// Write the figures as JSON.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(
            path,
            serde_json::to_vec_pretty(self).expect("figures serialize"),
        )
    }
}
