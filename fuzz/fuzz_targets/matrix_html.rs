//! Matrix `formatted_body` and plain `body`: parsing never panics; the result renders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livefeed_bridge::bitrix::bbcode;
use livefeed_bridge::matrix::html;

fuzz_target!(|data: &str| {
    let doc = html::parse(data);
    let _ = bbcode::render(&doc);
    let _ = html::parse(&html::render_html(&doc));
    let _ = bbcode::render(&html::parse_plain(data));
});
