//! The performance harness behind `livefeed-bench`: the real `livefeed-bridge` binary driven
//! against the fakes, one scenario at a time, each figure reported absolute and as a ratio to
//! the platform ceiling it is bounded by. docs/performance.md has the scenarios, the ceilings
//! and the results.
//!
//! - [`process`]: start the bridge binary on a generated config, wait for `/readyz`, read its
//!   RSS, stop it with SIGTERM.
//! - [`idle`]: what the bridge costs the platforms when nothing happens, per intake mode.
//! - [`catchup`]: a backlog after a restart, and replies coming back, against scaled limits.
//! - [`latency`]: from the portal's answer to the chat call, per post.
//! - [`scale`]: a store with many mapped posts: ready time, RSS, disk, a reconcile round.
//! - [`Report`]: the table, printed and written as JSON.

pub mod catchup;
pub mod idle;
pub mod latency;
pub mod process;
pub mod scale;

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

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
