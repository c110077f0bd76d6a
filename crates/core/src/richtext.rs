//! The one rich-text document in the middle (ARCHITECTURE.md, "One text model in the middle").
//!
//! Every platform format converts to and from [`Doc`]: BBCode (Bitrix24), mrkdwn (Slack),
//! HTML + plain body (Matrix). The converters live in the adapters and are pure functions; this
//! module only defines the shape and a few format-free helpers.
//!
//! Conventions every converter follows:
//! - A [`Block::Paragraph`] holds inline content; a single newline inside it is an
//!   [`Inline::LineBreak`], a blank line starts a new paragraph.
//! - Documents are kept *normalized* (see [`Doc::normalize`]): no empty text runs, adjacent text
//!   runs merged, no empty paragraphs. Parsers return normalized documents so golden tests can
//!   compare structures.
//! - Nesting deeper than [`MAX_DEPTH`] is flattened by parsers, so renderers may recurse freely.

use serde::{Deserialize, Serialize};

/// Deepest nesting of blocks or inline styles a parser keeps; deeper markup is flattened to its
/// text. Protects every recursive renderer from hostile input.
pub const MAX_DEPTH: usize = 24;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
/// A document: a sequence of blocks.
pub struct Doc {
    /// The blocks, in reading order.
    pub blocks: Vec<Block>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// A block of a document.
pub enum Block {
    /// Inline content; a blank line separates paragraphs.
    Paragraph(Vec<Inline>),
    /// A quotation of other blocks.
    Quote(Vec<Block>),
    /// Preformatted text, shown verbatim (never parsed for markup).
    Code(String),
    /// Each item is a sequence of blocks (usually one paragraph).
    List {
        /// Numbered rather than bulleted.
        ordered: bool,
        /// The items.
        items: Vec<Vec<Block>>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// Inline content of a paragraph.
pub enum Inline {
    /// Plain text.
    Text(String),
    /// Strong emphasis.
    Bold(Vec<Inline>),
    /// Emphasis.
    Italic(Vec<Inline>),
    /// Underlined text.
    Underline(Vec<Inline>),
    /// Struck-through text.
    Strike(Vec<Inline>),
    /// Inline code, verbatim.
    Code(String),
    /// A hyperlink; empty `text` means "show the URL itself".
    Link {
        /// Where it points.
        url: String,
        /// What it shows.
        text: Vec<Inline>,
    },
    /// A mention of a person or a group.
    Mention(Mention),
    /// An image shown inline.
    Image {
        /// Where the image is.
        url: String,
        /// Its description.
        alt: String,
    },
    /// An attached file known only by its platform id (e.g. a Bitrix24 Disk file); renderers show
    /// a placeholder or a link when they know one.
    File {
        /// The platform's file id.
        id: String,
        /// The file's name.
        name: String,
    },
    /// A line break inside a paragraph.
    LineBreak,
}

/// A reference to a person or a group. Renderers show `name`; `id` is the source platform's id
/// and is only meaningful together with `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mention {
    /// What is mentioned.
    pub kind: MentionKind,
    /// Its id on the source platform.
    pub id: String,
    /// What to show.
    pub name: String,
    /// The person's id on the platform the document is rendered for, when an identity link
    /// says who they are there: renderers then write a mention that notifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
/// What a [`Mention`] refers to.
pub enum MentionKind {
    /// A person.
    User,
    /// A workgroup / project (Bitrix24) or a user group (Slack).
    Group,
    /// A department.
    Department,
    /// A chat channel or room.
    Channel,
    /// `@here`, `@channel`, `@everyone`-style broadcasts.
    Broadcast,
}

impl Doc {
    /// Call `f` on every inline of the document, depth first (a parent before its children).
    pub fn for_each_inline_mut(&mut self, f: &mut dyn FnMut(&mut Inline)) {
        fn inlines(list: &mut [Inline], f: &mut dyn FnMut(&mut Inline)) {
            for inline in list {
                f(inline);
                match inline {
                    Inline::Bold(c)
                    | Inline::Italic(c)
                    | Inline::Underline(c)
                    | Inline::Strike(c)
                    | Inline::Link { text: c, .. } => inlines(c, f),
                    _ => {}
                }
            }
        }
        fn blocks(list: &mut [Block], f: &mut dyn FnMut(&mut Inline)) {
            for block in list {
                match block {
                    Block::Paragraph(i) => inlines(i, f),
                    Block::Quote(b) => blocks(b, f),
                    Block::List { items, .. } => items.iter_mut().for_each(|b| blocks(b, f)),
                    Block::Code(_) => {}
                }
            }
        }
        blocks(&mut self.blocks, f);
    }

    /// A document of these blocks.
    pub fn new(blocks: Vec<Block>) -> Self {
        Doc { blocks }
    }

    /// A document of one paragraph.
    pub fn paragraph(inlines: Vec<Inline>) -> Self {
        Doc {
            blocks: vec![Block::Paragraph(inlines)],
        }
    }

    /// A document holding one paragraph of plain text (newlines become line breaks).
    pub fn plain(text: &str) -> Self {
        Doc::paragraph(text_with_breaks(text)).normalize()
    }

    /// Whether the document shows nothing.
    pub fn is_empty(&self) -> bool {
        self.blocks.iter().all(block_is_empty)
    }

    /// The text a human would read, without markup: paragraphs separated by a blank line, list
    /// items prefixed with `• ` or `N. `, quotes with `> `. Used for notification fallbacks,
    /// Matrix plain bodies and content hashes.
    pub fn plain_text(&self) -> String {
        let mut out = String::new();
        blocks_plain(&self.blocks, &mut out, "");
        out
    }

    /// Merge adjacent text runs, drop empty runs and empty paragraphs, recursively.
    #[must_use]
    pub fn normalize(self) -> Self {
        Doc {
            blocks: normalize_blocks(self.blocks),
        }
    }
}

/// Split text on `\n` into text runs separated by [`Inline::LineBreak`].
pub fn text_with_breaks(text: &str) -> Vec<Inline> {
    let mut out = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push(Inline::LineBreak);
        }
        if !line.is_empty() {
            out.push(Inline::Text(line.to_string()));
        }
    }
    out
}

/// The text of inline content without markup.
pub fn inlines_plain(inlines: &[Inline]) -> String {
    let mut out = String::new();
    push_inlines_plain(inlines, &mut out);
    out
}

fn push_inlines_plain(inlines: &[Inline], out: &mut String) {
    for inline in inlines {
        match inline {
            Inline::Text(t) | Inline::Code(t) => out.push_str(t),
            Inline::Bold(c) | Inline::Italic(c) | Inline::Underline(c) | Inline::Strike(c) => {
                push_inlines_plain(c, out)
            }
            Inline::Link { url, text } => {
                if text.is_empty() {
                    out.push_str(url);
                } else {
                    push_inlines_plain(text, out);
                }
            }
            Inline::Mention(m) => out.push_str(&m.name),
            Inline::Image { url, alt } => out.push_str(if alt.is_empty() { url } else { alt }),
            Inline::File { id, name } => out.push_str(if name.is_empty() { id } else { name }),
            Inline::LineBreak => out.push('\n'),
        }
    }
}

fn blocks_plain(blocks: &[Block], out: &mut String, prefix: &str) {
    for (i, block) in blocks.iter().enumerate() {
        if i > 0 {
            out.push('\n');
            out.push_str(prefix.trim_end());
            out.push('\n');
            out.push_str(prefix);
        }
        match block {
            Block::Paragraph(inlines) => {
                let text = inlines_plain(inlines);
                push_prefixed(&text, prefix, out);
            }
            Block::Code(text) => push_prefixed(text, prefix, out),
            Block::Quote(inner) => {
                let nested = format!("{prefix}> ");
                out.push_str("> ");
                let mut tmp = String::new();
                blocks_plain(inner, &mut tmp, &nested);
                out.push_str(&tmp);
            }
            Block::List { ordered, items } => {
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        out.push('\n');
                        out.push_str(prefix);
                    }
                    let marker = if *ordered {
                        format!("{}. ", n + 1)
                    } else {
                        "• ".to_string()
                    };
                    out.push_str(&marker);
                    let nested = format!("{prefix}{}", " ".repeat(marker.chars().count()));
                    let mut tmp = String::new();
                    blocks_plain(item, &mut tmp, &nested);
                    out.push_str(&tmp);
                }
            }
        }
    }
}

fn push_prefixed(text: &str, prefix: &str, out: &mut String) {
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
            out.push_str(prefix);
        }
        out.push_str(line);
    }
}

fn block_is_empty(block: &Block) -> bool {
    match block {
        Block::Paragraph(inlines) => inlines.iter().all(inline_is_blank),
        Block::Quote(inner) => inner.iter().all(block_is_empty),
        Block::Code(text) => text.trim().is_empty(),
        Block::List { items, .. } => items.iter().all(|i| i.iter().all(block_is_empty)),
    }
}

fn inline_is_blank(inline: &Inline) -> bool {
    match inline {
        Inline::Text(t) => t.trim().is_empty(),
        Inline::LineBreak => true,
        Inline::Bold(c) | Inline::Italic(c) | Inline::Underline(c) | Inline::Strike(c) => {
            c.iter().all(inline_is_blank)
        }
        _ => false,
    }
}

fn normalize_blocks(blocks: Vec<Block>) -> Vec<Block> {
    blocks
        .into_iter()
        .filter_map(|block| match block {
            Block::Paragraph(inlines) => {
                let inlines = normalize_inlines(inlines);
                (!inlines.is_empty()).then_some(Block::Paragraph(inlines))
            }
            Block::Quote(inner) => {
                let inner = normalize_blocks(inner);
                (!inner.is_empty()).then_some(Block::Quote(inner))
            }
            Block::Code(text) => Some(Block::Code(text)),
            Block::List { ordered, items } => {
                let items: Vec<Vec<Block>> = items
                    .into_iter()
                    .map(normalize_blocks)
                    .filter(|i| !i.is_empty())
                    .collect();
                (!items.is_empty()).then_some(Block::List { ordered, items })
            }
        })
        .collect()
}

/// Merge adjacent text runs and drop empty ones and empty style wrappers.
pub fn normalize_inlines(inlines: Vec<Inline>) -> Vec<Inline> {
    let mut out: Vec<Inline> = Vec::with_capacity(inlines.len());
    for inline in inlines {
        let inline = match inline {
            Inline::Text(t) if t.is_empty() => continue,
            Inline::Bold(c) => wrap_nonempty(c, Inline::Bold),
            Inline::Italic(c) => wrap_nonempty(c, Inline::Italic),
            Inline::Underline(c) => wrap_nonempty(c, Inline::Underline),
            Inline::Strike(c) => wrap_nonempty(c, Inline::Strike),
            Inline::Link { url, text } => Some(Inline::Link {
                url,
                text: normalize_inlines(text),
            }),
            other => Some(other),
        };
        let Some(inline) = inline else { continue };
        if let (Some(Inline::Text(prev)), Inline::Text(next)) = (out.last_mut(), &inline) {
            prev.push_str(next);
            continue;
        }
        out.push(inline);
    }
    // A paragraph never starts or ends with a line break.
    let leading = out
        .iter()
        .take_while(|i| matches!(i, Inline::LineBreak))
        .count();
    out.drain(..leading);
    while matches!(out.last(), Some(Inline::LineBreak)) {
        out.pop();
    }
    out
}

/// Normalize and drop whitespace at a paragraph's edges (indentation inside stays). Parsers
/// use it when they close a paragraph.
pub fn trim_paragraph(mut inlines: Vec<Inline>) -> Vec<Inline> {
    loop {
        inlines = normalize_inlines(inlines);
        let mut changed = false;
        if let Some(Inline::Text(t)) = inlines.first_mut()
            && t.starts_with(char::is_whitespace)
        {
            *t = t.trim_start().to_owned();
            changed = true;
        }
        if let Some(Inline::Text(t)) = inlines.last_mut()
            && t.ends_with(char::is_whitespace)
        {
            *t = t.trim_end().to_owned();
            changed = true;
        }
        if !changed {
            return inlines;
        }
    }
}

fn wrap_nonempty(children: Vec<Inline>, wrap: fn(Vec<Inline>) -> Inline) -> Option<Inline> {
    let children = normalize_inlines(children);
    (!children.is_empty()).then(|| wrap(children))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_merges_and_drops() {
        let doc = Doc::new(vec![
            Block::Paragraph(vec![
                Inline::LineBreak,
                Inline::Text("a".into()),
                Inline::Text(String::new()),
                Inline::Text("b".into()),
                Inline::Bold(vec![]),
                Inline::LineBreak,
            ]),
            Block::Paragraph(vec![]),
        ])
        .normalize();
        assert_eq!(doc, Doc::paragraph(vec![Inline::Text("ab".into())]));
    }

    #[test]
    fn plain_text_of_nested_blocks() {
        let doc = Doc::new(vec![
            Block::Paragraph(vec![
                Inline::Bold(vec![Inline::Text("Title".into())]),
                Inline::LineBreak,
                Inline::Text("line".into()),
            ]),
            Block::List {
                ordered: true,
                items: vec![
                    vec![Block::Paragraph(vec![Inline::Text("one".into())])],
                    vec![Block::Paragraph(vec![Inline::Text("two".into())])],
                ],
            },
            Block::Quote(vec![Block::Paragraph(vec![Inline::Text("q".into())])]),
        ]);
        assert_eq!(doc.plain_text(), "Title\nline\n\n1. one\n2. two\n\n> q");
    }

    #[test]
    fn emptiness() {
        assert!(Doc::plain(" \n ").is_empty());
        assert!(!Doc::plain("x").is_empty());
    }
}
