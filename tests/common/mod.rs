//! Helpers shared by the integration tests.

use livefeed_core::richtext::{Block, Doc, Inline};

/// Nesting depth as `MAX_DEPTH` counts it: each quote, list, style and link is one level.
pub fn depth(doc: &Doc) -> usize {
    blocks_depth(&doc.blocks)
}

fn blocks_depth(blocks: &[Block]) -> usize {
    blocks
        .iter()
        .map(|block| match block {
            Block::Paragraph(inlines) => inlines_depth(inlines),
            Block::Quote(inner) => 1 + blocks_depth(inner),
            Block::Code(_) => 0,
            Block::List { items, .. } => {
                1 + items
                    .iter()
                    .map(|item| blocks_depth(item))
                    .max()
                    .unwrap_or(0)
            }
        })
        .max()
        .unwrap_or(0)
}

fn inlines_depth(inlines: &[Inline]) -> usize {
    inlines
        .iter()
        .map(|inline| match inline {
            Inline::Bold(c) | Inline::Italic(c) | Inline::Underline(c) | Inline::Strike(c) => {
                1 + inlines_depth(c)
            }
            Inline::Link { text, .. } => 1 + inlines_depth(text),
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}
