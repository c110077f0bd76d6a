//! The shape of what the bridge writes, as neutral documents: a mirrored post's root message
//! and an attributed comment. Adapters only render these; every platform gets the same layout.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::adapters::LayoutOptions;
use super::model::{FeedPost, Person};
use super::richtext::{Block, Doc, Inline, normalize_inlines};

/// The root message for a post: important mark, (author), title, body, link and comment count.
///
/// `comments` counts the post's comments *not* written by the bridge; `feed` is the feed's
/// name for people ("Open in `feed`").
pub fn root_message(post: &FeedPost, comments: u32, opts: LayoutOptions, feed: &str) -> Doc {
    let mut blocks = Vec::new();
    if post.important {
        let mut mark = vec![
            Inline::Text("❗ ".into()),
            Inline::Bold(vec![Inline::Text("Important".into())]),
        ];
        if let Some(n) = post.readers {
            mark.push(Inline::Text(format!(" · Read by {n}")));
        }
        blocks.push(Block::Paragraph(mark));
    }
    if opts.author_in_body {
        blocks.push(Block::Paragraph(vec![
            Inline::Bold(vec![Inline::Text(post.author.name.clone())]),
            Inline::Text(format!(" in {feed}:")),
        ]));
    }
    if let Some(title) = post.title.as_deref().filter(|t| !t.trim().is_empty()) {
        blocks.push(Block::Paragraph(vec![Inline::Bold(vec![Inline::Text(
            title.trim().to_string(),
        )])]));
    }
    let (body, cut) = truncate(&post.body, opts.max_body_chars);
    blocks.extend(body.blocks);
    if cut {
        blocks.push(Block::Paragraph(vec![Inline::Italic(vec![Inline::Text(
            format!("(continued in {feed})"),
        )])]));
    }
    let mut footer = vec![Inline::Link {
        url: post.url.clone(),
        text: vec![Inline::Text(format!("Open in {feed}"))],
    }];
    if comments > 0 {
        let noun = if comments == 1 { "comment" } else { "comments" };
        footer.push(Inline::Text(" · ".into()));
        footer.push(Inline::Link {
            url: post.url.clone(),
            text: vec![Inline::Text(format!("{comments} {noun} in {feed}"))],
        });
    }
    blocks.push(Block::Paragraph(footer));
    Doc::new(blocks).normalize()
}

/// A chat reply as a feed comment: `**Name** (Platform): text…`, where `platform` is the chat
/// platform's name for people.
pub fn attributed_comment(author: &Person, platform: &str, body: &Doc) -> Doc {
    let mut prefix = vec![
        Inline::Bold(vec![Inline::Text(author.name.clone())]),
        Inline::Text(format!(" ({platform}): ")),
    ];
    let mut blocks = body.blocks.clone();
    match blocks.first_mut() {
        Some(Block::Paragraph(first)) => {
            prefix.append(first);
            *first = prefix;
        }
        _ => {
            prefix[1] = Inline::Text(format!(" ({platform}):"));
            blocks.insert(0, Block::Paragraph(prefix));
        }
    }
    Doc::new(blocks).normalize()
}

/// The line a chat thread gets for a post's file larger than the limit: its name and size,
/// linking to the post.
pub fn file_link(name: &str, size: u64, url: &str, feed: &str) -> Doc {
    Doc::new(vec![Block::Paragraph(vec![
        Inline::Text("📎 ".into()),
        Inline::Link {
            url: url.to_string(),
            text: vec![Inline::Text(name.to_string())],
        },
        Inline::Text(format!(
            " ({}): too large to attach here; open the post in {feed}",
            human_size(size)
        )),
    ])])
    .normalize()
}

/// The note a comment gets for a reply's file it does not carry: one larger than the limit
/// (`size` known), or one the bridge could not fetch.
pub fn file_note(name: &str, size: Option<u64>, platform: &str) -> Block {
    let text = match size {
        Some(size) => format!(
            "📎 {name} ({}) was too large to attach; it is in the {platform} thread.",
            human_size(size)
        ),
        None => format!("📎 {name} could not be attached; it is in the {platform} thread."),
    };
    Block::Paragraph(vec![Inline::Italic(vec![Inline::Text(text)])])
}

/// Bytes for people: `812 B`, `14.2 KB`, `25.0 MB`.
pub fn human_size(bytes: u64) -> String {
    const KB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KB {
        format!("{bytes} B")
    } else if b < KB * KB {
        format!("{:.1} KB", b / KB)
    } else if b < KB * KB * KB {
        format!("{:.1} MB", b / KB / KB)
    } else {
        format!("{:.1} GB", b / KB / KB / KB)
    }
}

/// A stable 64-bit hash of anything serializable (what was sent, to detect real changes).
pub fn content_hash<T: Serialize>(value: &T) -> u64 {
    let bytes = serde_json::to_vec(value).expect("hashable values serialize");
    let digest = Sha256::digest(&bytes);
    u64::from_be_bytes(digest[..8].try_into().expect("digest has 8 bytes"))
}

/// Cut a document to about `max_chars` characters of text (0 = no limit). Returns whether
/// anything was cut.
fn truncate(doc: &Doc, max_chars: usize) -> (Doc, bool) {
    if max_chars == 0 || doc.plain_text().chars().count() <= max_chars {
        return (doc.clone(), false);
    }
    let mut budget = max_chars;
    let blocks = truncate_blocks(&doc.blocks, &mut budget);
    (Doc::new(blocks).normalize(), true)
}

fn truncate_blocks(blocks: &[Block], budget: &mut usize) -> Vec<Block> {
    let mut out = Vec::new();
    for block in blocks {
        if *budget == 0 {
            break;
        }
        match block {
            Block::Paragraph(inlines) => {
                out.push(Block::Paragraph(truncate_inlines(inlines, budget)));
            }
            Block::Code(text) => out.push(Block::Code(take_chars(text, budget))),
            Block::Quote(inner) => out.push(Block::Quote(truncate_blocks(inner, budget))),
            Block::List { ordered, items } => {
                let mut kept = Vec::new();
                for item in items {
                    if *budget == 0 {
                        break;
                    }
                    kept.push(truncate_blocks(item, budget));
                }
                out.push(Block::List {
                    ordered: *ordered,
                    items: kept,
                });
            }
        }
    }
    out
}

fn truncate_inlines(inlines: &[Inline], budget: &mut usize) -> Vec<Inline> {
    let mut out = Vec::new();
    for inline in inlines {
        if *budget == 0 {
            out.push(Inline::Text("…".into()));
            break;
        }
        match inline {
            Inline::Text(t) => {
                let kept = take_chars(t, budget);
                let cut = kept.len() < t.len();
                out.push(Inline::Text(kept));
                if cut {
                    out.push(Inline::Text("…".into()));
                    break;
                }
            }
            Inline::Bold(c) => out.push(Inline::Bold(truncate_inlines(c, budget))),
            Inline::Italic(c) => out.push(Inline::Italic(truncate_inlines(c, budget))),
            Inline::Underline(c) => out.push(Inline::Underline(truncate_inlines(c, budget))),
            Inline::Strike(c) => out.push(Inline::Strike(truncate_inlines(c, budget))),
            other => {
                // Atoms (links, mentions, code) are kept whole or not at all.
                let len = super::richtext::inlines_plain(std::slice::from_ref(other))
                    .chars()
                    .count();
                if len > *budget {
                    out.push(Inline::Text("…".into()));
                    *budget = 0;
                    break;
                }
                *budget -= len;
                out.push(other.clone());
            }
        }
    }
    normalize_inlines(out)
}

fn take_chars(text: &str, budget: &mut usize) -> String {
    let kept: String = text.chars().take(*budget).collect();
    *budget -= kept.chars().count();
    kept
}

#[cfg(test)]
mod tests {

    #[test]
    fn file_lines_name_the_file_and_its_size() {
        assert_eq!(human_size(812), "812 B");
        assert_eq!(human_size(10_000), "9.8 KB");
        assert_eq!(human_size(30 * 1024 * 1024), "30.0 MB");
        assert_eq!(
            file_link("video.mp4", 30 * 1024 * 1024, "https://p/1/", "Bitrix24").plain_text(),
            "📎 video.mp4 (30.0 MB): too large to attach here; open the post in Bitrix24"
        );
        let note = |size| Doc::new(vec![file_note("a.zip", size, "Slack")]).plain_text();
        assert_eq!(
            note(Some(2048)),
            "📎 a.zip (2.0 KB) was too large to attach; it is in the Slack thread."
        );
        assert_eq!(
            note(None),
            "📎 a.zip could not be attached; it is in the Slack thread."
        );
    }

    use super::*;
    use crate::testing::fixtures;

    fn post() -> FeedPost {
        FeedPost {
            title: Some("Quarterly plan".into()),
            body: Doc::plain(
                "Line one
Line two",
            ),
            ..fixtures::post(217)
        }
    }

    const OPTS: LayoutOptions = LayoutOptions {
        author_in_body: false,
        max_body_chars: 3500,
    };

    #[test]
    fn root_message_parts() {
        let doc = root_message(&post(), 0, OPTS, "Bitrix24");
        assert_eq!(
            doc.plain_text(),
            "Quarterly plan\n\nLine one\nLine two\n\nOpen in Bitrix24"
        );
        let mut p = post();
        p.important = true;
        p.title = None;
        let doc = root_message(
            &p,
            2,
            LayoutOptions {
                author_in_body: true,
                ..OPTS
            },
            "Bitrix24",
        );
        assert_eq!(
            doc.plain_text(),
            "❗ Important\n\nIvan Petrov in Bitrix24:\n\nLine one\nLine two\n\nOpen in Bitrix24 · 2 comments in Bitrix24"
        );
        assert!(
            root_message(&p, 1, OPTS, "Bitrix24")
                .plain_text()
                .ends_with("1 comment in Bitrix24")
        );
        p.readers = Some(3);
        assert!(
            root_message(&p, 0, OPTS, "Bitrix24")
                .plain_text()
                .starts_with("❗ Important · Read by 3\n\nLine one")
        );
    }

    #[test]
    fn long_bodies_are_cut() {
        let mut p = post();
        p.body = Doc::plain(&"word ".repeat(2000));
        let doc = root_message(
            &p,
            0,
            LayoutOptions {
                max_body_chars: 100,
                ..OPTS
            },
            "Bitrix24",
        );
        let text = doc.plain_text();
        assert!(text.chars().count() < 200, "{text}");
        assert!(
            text.contains("…\n\n(continued in Bitrix24)\n\nOpen in Bitrix24"),
            "{text}"
        );
    }

    #[test]
    fn attribution_joins_the_first_paragraph() {
        let who = fixtures::person("U1", "Anna Smirnova");
        let doc = attributed_comment(&who, "Slack", &Doc::plain("Looks good"));
        assert_eq!(
            doc,
            Doc::paragraph(vec![
                Inline::Bold(vec![Inline::Text("Anna Smirnova".into())]),
                Inline::Text(" (Slack): Looks good".into()),
            ])
        );
        let code = Doc::new(vec![Block::Code("x = 1".into())]);
        let doc = attributed_comment(&who, "Matrix", &code);
        assert_eq!(doc.plain_text(), "Anna Smirnova (Matrix):\n\nx = 1");
    }

    #[test]
    fn hashes_are_stable_and_distinct() {
        assert_eq!(content_hash(&"a"), content_hash(&"a"));
        assert_ne!(content_hash(&"a"), content_hash(&"b"));
        assert_eq!(content_hash(&1u32), 0x6b86b273ff34fce1);
    }
}
