//! Slack message text: parsing (with mentions looked up) never panics; the result renders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livefeed_bridge::bitrix::bbcode;
use livefeed_bridge::slack::mrkdwn;

fuzz_target!(|data: &str| {
    let users = mrkdwn::mentioned_users(data);
    let doc = mrkdwn::parse(data, &|id| users.contains(&id.to_string()).then(|| format!("name of {id}")));
    let _ = bbcode::render(&doc);
    let _ = mrkdwn::parse(&mrkdwn::render(&doc), &|_| None);
});
