//! TEMPORARY stub; replaced by the real converter.
use crate::core::richtext::Doc;
pub fn render_html(doc: &Doc) -> String {
    doc.plain_text()
}
pub fn render_plain(doc: &Doc) -> String {
    doc.plain_text()
}
pub fn parse(html: &str) -> Doc {
    Doc::plain(html)
}
pub fn parse_plain(body: &str) -> Doc {
    Doc::plain(body)
}
