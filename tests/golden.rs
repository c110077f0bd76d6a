//! Golden tests: realistic feed posts and Slack replies with their expected conversions. The
//! expected files are the spec; review every change to them by eye.
//!
//! `UPDATE_GOLDEN=1 cargo test --test golden` rewrites the expected files from the current output.

use std::fs;
use std::path::{Path, PathBuf};

use livefeed_bridge::bitrix::bbcode;
use livefeed_bridge::matrix::html;
use livefeed_bridge::slack::mrkdwn;

/// The user directory the Slack side resolves `<@U…>` mentions with.
fn slack_user(id: &str) -> Option<String> {
    match id {
        "U0HUMAN02" => Some("Anna Smirnova".to_owned()),
        "U0HUMAN03" => Some("Dmitry Ivanov".to_owned()),
        _ => None,
    }
}

fn feed_to_slack(input: &str) -> String {
    mrkdwn::render(&bbcode::parse(input))
}

fn slack_to_feed(input: &str) -> String {
    bbcode::render(&mrkdwn::parse(input, &slack_user))
}

fn feed_to_matrix_html(input: &str) -> String {
    html::render_html(&bbcode::parse(input))
}

fn feed_to_matrix_body(input: &str) -> String {
    html::render_plain(&bbcode::parse(input))
}

fn matrix_to_feed(input: &str) -> String {
    bbcode::render(&html::parse(input))
}

#[test]
fn feed_posts_to_slack() {
    check(
        "feed_to_slack",
        "bbcode",
        "feed_to_slack",
        "mrkdwn",
        feed_to_slack,
    );
}

#[test]
fn slack_replies_to_feed() {
    check(
        "slack_to_feed",
        "mrkdwn",
        "slack_to_feed",
        "bbcode",
        slack_to_feed,
    );
}

/// The same feed posts as the Slack goldens, as Matrix `formatted_body` and plain `body`.
#[test]
fn feed_posts_to_matrix() {
    check(
        "feed_to_slack",
        "bbcode",
        "feed_to_matrix",
        "html",
        feed_to_matrix_html,
    );
    check(
        "feed_to_slack",
        "bbcode",
        "feed_to_matrix",
        "body",
        feed_to_matrix_body,
    );
}

#[test]
fn matrix_replies_to_feed() {
    check(
        "matrix_to_feed",
        "html",
        "matrix_to_feed",
        "bbcode",
        matrix_to_feed,
    );
}

/// Convert every `*.<from>` file in `input_dir` and compare with its `*.<to>` twin in
/// `output_dir`. Expected files hold the output plus a final newline.
fn check(input_dir: &str, from: &str, output_dir: &str, to: &str, convert: fn(&str) -> String) {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let dir = golden.join(input_dir);
    let out_dir = golden.join(output_dir);
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut inputs: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == from))
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no *.{from} files in {}", dir.display());

    let mut failures = Vec::new();
    for input in &inputs {
        let source = fs::read_to_string(input).expect("readable input");
        let actual = format!("{}\n", convert(&source));
        let expected_path = out_dir
            .join(input.file_name().expect("file name"))
            .with_extension(to);
        let expected = fs::read_to_string(&expected_path).ok();
        if expected.as_deref() == Some(actual.as_str()) {
            continue;
        }
        if update {
            fs::create_dir_all(&out_dir).expect("writable golden directory");
            fs::write(&expected_path, &actual).expect("writable expected file");
            eprintln!("updated {}", expected_path.display());
        } else {
            failures.push(format!(
                "{}\n--- expected ---\n{}\n--- actual ---\n{actual}",
                expected_path.display(),
                expected.as_deref().unwrap_or("<missing>"),
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden files differ (UPDATE_GOLDEN=1 rewrites them):\n\n{}",
        failures.len(),
        inputs.len(),
        failures.join("\n")
    );
}
