//! Fault suite: the same seeded workload as the crash suite, with 20% of the requests to every
//! Bitrix24 and Slack endpoint failing (500/502/503, QUERY_LIMIT_EXCEEDED,
//! OPERATION_TIME_LIMIT, 429 with Retry-After, connection resets, slow answers), Socket Mode
//! connections dropped again and again, and the platforms' rate limits on. It must still end
//! exactly right, and the bridge must never send faster than the limits allow.
//! (Matrix's M_LIMIT_EXCEEDED is covered against Synapse in `e2e_matrix`.)
//!
//! Replay: `FAULT_SEED=12345 cargo test --test faults -- --nocapture`.

#![recursion_limit = "256"]

mod support;

use std::time::Duration;

use support::workload::{Options, env_or, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_percent_faults_everywhere_still_end_exactly_right() {
    let seed = env_or("FAULT_SEED", fastrand::u64(..1_000_000));
    say!("fault suite: seed {seed}; replay with FAULT_SEED={seed}");
    let out = run(Options {
        name: "fault suite",
        seed,
        posts: env_or("FAULT_POSTS", 40) as usize,
        replies: env_or("FAULT_REPLIES", 30) as usize,
        kills: 0,
        crashpoints: false,
        faults: 0.2,
        socket_drops_every: 15,
        outages: 0,
        slack_retention: Duration::from_secs(360),
        slack_429s: 0.0,
        real_limits: true,
        converge: Duration::from_secs(env_or("FAULT_CONVERGE_SECS", 240)),
        bridge_env: Vec::new(),
        intake: "poll",
    })
    .await;
    let b24_faults = out
        .portal
        .requests()
        .iter()
        .filter(|r| r.status != 200)
        .count();
    let slack_429 = out
        .slack
        .requests()
        .iter()
        .filter(|r| r.status == 429)
        .count();
    let slack_faults = out
        .slack
        .requests()
        .iter()
        .filter(|r| r.status != 200)
        .count();
    say!(
        "{} — Bitrix24: {} requests, {} failed; Slack: {} requests, {} failed ({} × 429), rate-limit violations: Bitrix24 {} / Slack {}",
        out.summary("fault suite", seed),
        out.portal.requests().len(),
        b24_faults,
        out.slack.requests().len(),
        slack_faults,
        slack_429,
        out.portal.rate_limit_rejections(),
        out.slack.rate_limit_violations()
    );
    out.assert_exact(seed);
    // 20% of requests fail; some of those are the same request failing twice in a row.
    assert!(
        b24_faults * 10 >= out.portal.requests().len() && b24_faults > 10,
        "the Bitrix24 faults really happened"
    );
    assert!(
        slack_faults * 10 >= out.slack.requests().len() && slack_faults > 10,
        "the Slack faults really happened"
    );
    assert!(slack_429 > 0, "some 429s were answered");
    assert_eq!(
        out.slack.rate_limit_violations(),
        0,
        "nothing sent inside a Retry-After window"
    );
    assert_eq!(
        out.portal.rate_limit_rejections(),
        0,
        "the bridge paced itself under the leaky bucket"
    );
}
