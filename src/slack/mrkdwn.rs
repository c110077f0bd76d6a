//! TEMPORARY stub; replaced by the real converter.
use crate::core::richtext::Doc;
pub fn render(doc: &Doc) -> String {
    doc.plain_text()
}
pub fn parse(input: &str, _user_name: &dyn Fn(&str) -> Option<String>) -> Doc {
    Doc::plain(input)
}
pub fn mentioned_users(_input: &str) -> Vec<String> {
    Vec::new()
}
