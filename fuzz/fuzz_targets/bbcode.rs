//! BBCode from the feed: parsing never panics, stays within MAX_DEPTH, and every renderer
//! copes with whatever the parser produced.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livefeed_bridge::bitrix::bbcode;
use livefeed_bridge::matrix::html;
use livefeed_bridge::slack::mrkdwn;

fuzz_target!(|data: &str| {
    let doc = bbcode::parse(data);
    let again = bbcode::parse(&bbcode::render(&doc));
    let _ = mrkdwn::render(&doc);
    let _ = html::render_html(&again);
    let _ = html::render_plain(&again);
    let _ = doc.plain_text();
});
