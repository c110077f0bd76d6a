//! TEMPORARY stub; replaced by the real converter.
use crate::core::richtext::Doc;
pub fn parse(input: &str) -> Doc {
    Doc::plain(input)
}
pub fn render(doc: &Doc) -> String {
    doc.plain_text()
}
