//! `livefeed-bridge check`: validate the config, then let every configured platform probe its
//! credentials and targets, and say in plain words what is wrong and how to fix it.

use std::fmt;
use std::sync::Arc;

use livefeed_core::metrics::Metrics;

use crate::config::Config;
use crate::{bitrix, matrix, slack};

/// How one finding went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Works.
    Ok,
    /// Works for now, but needs attention.
    Warn,
    /// Does not work: the bridge would fail here.
    Fail,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// How it went.
    pub status: Status,
    /// What was found, and the fix when something is wrong.
    pub text: String,
}

/// Everything `check` found, in order.
#[derive(Debug, Default)]
pub struct Report {
    /// The findings.
    pub lines: Vec<Line>,
}

impl Report {
    /// Record something that works.
    pub fn ok(&mut self, text: impl Into<String>) {
        self.push(Status::Ok, text);
    }

    /// Record something that needs attention.
    pub fn warn(&mut self, text: impl Into<String>) {
        self.push(Status::Warn, text);
    }

    /// Record something that does not work.
    pub fn fail(&mut self, text: impl Into<String>) {
        self.push(Status::Fail, text);
    }

    fn push(&mut self, status: Status, text: impl Into<String>) {
        self.lines.push(Line {
            status,
            text: text.into(),
        });
    }

    /// Whether nothing failed.
    pub fn passed(&self) -> bool {
        self.lines.iter().all(|l| l.status != Status::Fail)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in &self.lines {
            let mark = match l.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            writeln!(f, "[{mark}] {}", l.text)?;
        }
        let fails = self
            .lines
            .iter()
            .filter(|l| l.status == Status::Fail)
            .count();
        if fails == 0 {
            writeln!(f, "all checks passed")
        } else {
            writeln!(f, "{fails} check(s) failed")
        }
    }
}

/// Probe everything the config names: one line per platform.
pub async fn probe(config: &Config) -> Report {
    let mut report = Report::default();
    report.ok(format!(
        "config {}: {} mapping(s), {} room(s)",
        config.path.display(),
        config.mappings.len(),
        config.rooms().len()
    ));
    report.ok(format!(
        "people: {} linked in the config; matching by e-mail {}; comments as their author {}",
        config.people.links.len(),
        if config.people.match_by_email {
            "on (where both sides show addresses; see the scope lines)"
        } else {
            "off"
        },
        if config.people.comments_as_author {
            "on where the portal allows it (see the Bitrix24 lines)"
        } else {
            "off"
        }
    ));
    let metrics = Arc::new(Metrics::new());
    bitrix::probe(&config.bitrix24, &config.store.path, &metrics, &mut report).await;
    if let Some(s) = &config.slack {
        let channels = config.rooms_on(&slack::PLATFORM);
        slack::probe(s, &channels, config.http.listen, &metrics, &mut report).await;
    }
    if let Some(m) = &config.matrix {
        matrix::probe::probe(m, &config.rooms_on(&matrix::PLATFORM), &mut report).await;
    }
    report
}
