//! Whatever arrives from outside as JSON — a Slack event callback, a Bitrix24 list item —
//! is classified or rejected without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livefeed_bridge::bitrix::client::{as_i64, as_list, as_u64};
use livefeed_bridge::bitrix::intake::{RawPost, parse_date};
use livefeed_bridge::slack::intake::{Identity, classify};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_date(text);
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let own = Identity {
        user_id: "U0B24BOT1".into(),
        bot_id: "B0B24BOT1".into(),
        app_id: Some("A0B24APP1".into()),
    };
    let _ = classify(&value, &own);
    let _ = classify(&value["event"], &own);
    for item in as_list(&value) {
        let _ = RawPost::parse(item);
        let _ = as_u64(item);
        let _ = as_i64(item);
    }
    let _ = RawPost::parse(&value);
});
