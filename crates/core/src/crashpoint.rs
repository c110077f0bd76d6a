//! Crash points for the crash suite: named moments where the process may abort itself, so the
//! suite can crash exactly between an effect and its record, between a journal write and its
//! flush, or before an acknowledgement — moments a random `kill -9` rarely hits.
//!
//! Off unless `LIVEFEED_CRASHPOINTS` is set (`name:probability,name:probability`, or `*:p`),
//! seeded by `LIVEFEED_CRASH_SEED`. When off, a hit costs one check of an initialised
//! `OnceLock`. An abort skips every destructor and flush, as a power cut would.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

struct Points {
    odds: HashMap<String, f64>,
    rng: Mutex<fastrand::Rng>,
}

static POINTS: OnceLock<Option<Points>> = OnceLock::new();

fn points() -> Option<&'static Points> {
    POINTS
        .get_or_init(|| {
            let spec = std::env::var("LIVEFEED_CRASHPOINTS").ok()?;
            let odds = spec
                .split(',')
                .filter_map(|p| {
                    let (name, odds) = p.split_once(':')?;
                    Some((name.trim().to_string(), odds.trim().parse().ok()?))
                })
                .collect();
            let seed = std::env::var("LIVEFEED_CRASH_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0u64)
                ^ u64::from(std::process::id());
            Some(Points {
                odds,
                rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            })
        })
        .as_ref()
}

/// Maybe abort here. Names in use: `journal.appended` (written, not yet flushed),
/// `engine.sent` (a root message exists, its record does not), `engine.commented` (a
/// comment exists, its record does not), `engine.recorded` (recorded, journal entry not yet
/// removed), `slack.journaled` (journaled, Socket Mode envelope not yet acknowledged).
pub fn hit(name: &str) {
    let Some(points) = points() else { return };
    let Some(odds) = points.odds.get(name).or_else(|| points.odds.get("*")) else {
        return;
    };
    let roll = points.rng.lock().unwrap_or_else(|p| p.into_inner()).f64();
    if roll < *odds {
        eprintln!("crashpoint {name}: aborting");
        std::process::abort();
    }
}
