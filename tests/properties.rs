//! Property tests: the parsers accept anything, and rendering then parsing gives back every
//! document the target format can express.

use livefeed_bridge::bitrix::bbcode;
use livefeed_bridge::matrix::html;
use livefeed_bridge::slack::mrkdwn;
use livefeed_core::richtext::{Block, Doc, Inline, MAX_DEPTH, Mention, MentionKind};
use proptest::prelude::*;

fn no_names(_: &str) -> Option<String> {
    None
}

/// What a parser returns must be normalized and no deeper than `MAX_DEPTH`.
fn assert_well_formed(doc: &Doc) {
    assert_eq!(
        *doc,
        doc.clone().normalize(),
        "parser output is not normalized"
    );
    assert!(
        livefeed_core::testing::depth(doc) <= MAX_DEPTH,
        "too deep: {}",
        livefeed_core::testing::depth(doc)
    );
}

/// Strings over the characters both markups care about.
fn markup_soup() -> impl Strategy<Value = String> {
    "[\\[\\]/=*_~`<>|&@#!:;\\n a-zA-Z0-9\u{200B}•.-]{0,120}"
}

/// Sequences of real tags and tokens, shuffled, so nesting and mismatches get exercised.
fn tag_soup() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("[B]"),
        Just("[/B]"),
        Just("[i]"),
        Just("[/i]"),
        Just("[U]"),
        Just("[/S]"),
        Just("[QUOTE]"),
        Just("[QUOTE=Ivan]"),
        Just("[/QUOTE]"),
        Just("[CODE]"),
        Just("[/CODE]"),
        Just("[LIST]"),
        Just("[LIST=1]"),
        Just("[*]"),
        Just("[/LIST]"),
        Just("[URL=https://a.example]"),
        Just("[URL]"),
        Just("[/URL]"),
        Just("[IMG]"),
        Just("[/IMG]"),
        Just("[USER=1]"),
        Just("[/USER]"),
        Just("[TABLE]"),
        Just("[TR]"),
        Just("[TD]"),
        Just("[/TD]"),
        Just("[/TR]"),
        Just("[/TABLE]"),
        Just("[SIZE=3]"),
        Just("[/SIZE]"),
        Just("[DISK FILE ID=n5]"),
        Just("https://x.example/a."),
        Just("*"),
        Just("_"),
        Just("~"),
        Just("`"),
        Just("```"),
        Just("<@U1>"),
        Just("<https://a|b>"),
        Just("&gt; "),
        Just("• "),
        Just("1. "),
        Just("    "),
        Just("\n"),
        Just("\n\n"),
        Just("text"),
        Just(" "),
        Just("\u{200B}"),
    ];
    prop::collection::vec(piece, 0..60).prop_map(|pieces| pieces.concat())
}

proptest! {
    #[test]
    fn bbcode_parse_accepts_any_string(input in any::<String>()) {
        assert_well_formed(&bbcode::parse(&input));
    }

    #[test]
    fn bbcode_parse_accepts_markup_soup(input in markup_soup()) {
        assert_well_formed(&bbcode::parse(&input));
    }

    #[test]
    fn bbcode_parse_accepts_tag_soup(input in tag_soup()) {
        assert_well_formed(&bbcode::parse(&input));
    }

    #[test]
    fn mrkdwn_parse_accepts_any_string(input in any::<String>()) {
        assert_well_formed(&mrkdwn::parse(&input, &no_names));
    }

    #[test]
    fn mrkdwn_parse_accepts_markup_soup(input in markup_soup()) {
        assert_well_formed(&mrkdwn::parse(&input, &no_names));
    }

    #[test]
    fn mrkdwn_parse_accepts_tag_soup(input in tag_soup()) {
        assert_well_formed(&mrkdwn::parse(&input, &no_names));
    }

    #[test]
    fn html_parse_accepts_any_string(input in any::<String>()) {
        assert_well_formed(&html::parse(&input));
        assert_well_formed(&html::parse_plain(&input));
    }

    #[test]
    fn html_parse_accepts_html_soup(input in html_soup()) {
        assert_well_formed(&html::parse(&input));
    }

    #[test]
    fn renderers_accept_any_document(doc in any_doc()) {
        assert_well_formed(&bbcode::parse(&bbcode::render(&doc)));
        assert_well_formed(&mrkdwn::parse(&mrkdwn::render(&doc), &no_names));
        assert_well_formed(&html::parse(&html::render_html(&doc)));
    }

    #[test]
    fn html_round_trip(doc in html_doc()) {
        let text = html::render_html(&doc);
        prop_assert_eq!(html::parse(&text), doc, "rendered as {:?}", text);
    }

    #[test]
    fn bbcode_round_trip(doc in bbcode_doc()) {
        let text = bbcode::render(&doc);
        prop_assert_eq!(bbcode::parse(&text), doc, "rendered as {:?}", text);
    }

    #[test]
    fn mrkdwn_round_trip(doc in mrkdwn_doc()) {
        let text = mrkdwn::render(&doc);
        prop_assert_eq!(mrkdwn::parse(&text, &no_names), doc, "rendered as {:?}", text);
    }
}

/// Sequences of HTML tags, entities and text, shuffled.
fn html_soup() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("<p>"),
        Just("</p>"),
        Just("<b>"),
        Just("</b>"),
        Just("<em>"),
        Just("</em>"),
        Just("<blockquote>"),
        Just("</blockquote>"),
        Just("<pre><code>"),
        Just("</code></pre>"),
        Just("<ul>"),
        Just("<ol>"),
        Just("<li>"),
        Just("</li>"),
        Just("</ul>"),
        Just("<a href=\"https://a.example/?x=1&amp;y\">"),
        Just("<a href='https://matrix.to/#/@u:hs'>"),
        Just("<a href=javascript:x>"),
        Just("</a>"),
        Just("<br>"),
        Just("<br/>"),
        Just("<img src=\"mxc://hs/x\" alt=\":e:\">"),
        Just("<mx-reply>"),
        Just("</mx-reply>"),
        Just("<table><tr><td>"),
        Just("</td><td>"),
        Just("</tr></table>"),
        Just("<!--"),
        Just("-->"),
        Just("<a \""),
        Just("&amp;"),
        Just("&#x41;"),
        Just("&bogus"),
        Just("<"),
        Just(">"),
        Just("\n"),
        Just(" "),
        Just("text"),
    ];
    prop::collection::vec(piece, 0..60).prop_map(|pieces| pieces.concat())
}

// ---------------------------------------------------------------------------------------------
// Arbitrary documents (for "never panics")

fn any_doc() -> impl Strategy<Value = Doc> {
    let leaf = prop_oneof![
        any::<String>().prop_map(Inline::Text),
        markup_soup().prop_map(Inline::Text),
        any::<String>().prop_map(Inline::Code),
        (markup_soup(), markup_soup()).prop_map(|(url, alt)| Inline::Image { url, alt }),
        (markup_soup(), any::<String>()).prop_map(|(id, name)| Inline::File { id, name }),
        // A target, when there is one, is rendered as a mention that notifies: renderers
        // must keep any text in it from breaking out.
        (
            markup_soup(),
            markup_soup(),
            proptest::option::of(markup_soup())
        )
            .prop_map(|(id, name, target)| Inline::Mention(Mention {
                kind: MentionKind::User,
                id,
                name,
                target,
            })),
        Just(Inline::LineBreak),
    ];
    let inline = leaf.prop_recursive(4, 24, 4, |inner| {
        let children = prop::collection::vec(inner, 0..4);
        prop_oneof![
            children.clone().prop_map(Inline::Bold),
            children.clone().prop_map(Inline::Italic),
            children.clone().prop_map(Inline::Underline),
            children.clone().prop_map(Inline::Strike),
            (markup_soup(), children).prop_map(|(url, text)| Inline::Link { url, text }),
        ]
    });
    let block_leaf = prop_oneof![
        prop::collection::vec(inline, 0..5).prop_map(Block::Paragraph),
        any::<String>().prop_map(Block::Code),
    ];
    let block = block_leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Block::Quote),
            (
                any::<bool>(),
                prop::collection::vec(prop::collection::vec(inner, 0..3), 0..3)
            )
                .prop_map(|(ordered, items)| Block::List { ordered, items }),
        ]
    });
    prop::collection::vec(block, 0..4).prop_map(Doc::new)
}

// ---------------------------------------------------------------------------------------------
// Documents BBCode can express

/// A word: no edge whitespace, no `://` (bare URLs are auto-linked), but tag-like brackets and
/// other markup characters are welcome.
fn bbcode_word() -> impl Strategy<Value = String> {
    "[a-zA-Zа-яё0-9][a-zA-Zа-яё0-9.,!?&<>()'\"#@:;|*_~`=/\\[\\]-]{0,8}"
        .prop_filter("no bare URLs", |w| !w.contains("://"))
}

fn words(word: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    prop::collection::vec(word, 1..4).prop_map(|w| w.join(" "))
}

fn url() -> impl Strategy<Value = String> {
    "https://[a-z]{1,6}\\.example/[a-z0-9/?=&%._<>-]{0,12}"
}

fn bbcode_inline(depth: u32) -> BoxedStrategy<Inline> {
    let leaf = prop_oneof![
        4 => words(bbcode_word()).prop_map(Inline::Text),
        1 => url().prop_map(|url| Inline::Link { url, text: Vec::new() }),
        1 => url().prop_map(|url| Inline::Image { url, alt: String::new() }),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    let children = || prop::collection::vec(bbcode_inline(depth - 1), 1..3);
    prop_oneof![
        3 => leaf,
        1 => children().prop_map(Inline::Bold),
        1 => children().prop_map(Inline::Italic),
        1 => children().prop_map(Inline::Underline),
        1 => children().prop_map(Inline::Strike),
        1 => (url(), prop::collection::vec(link_text_inline(depth - 1), 1..3))
            .prop_map(|(url, text)| Inline::Link { url, text }),
    ]
    .boxed()
}

/// Inside a link: anything but another link.
fn link_text_inline(depth: u32) -> BoxedStrategy<Inline> {
    let text = words(bbcode_word()).prop_map(Inline::Text);
    if depth == 0 {
        return text.boxed();
    }
    let children = || prop::collection::vec(link_text_inline(depth - 1), 1..3);
    prop_oneof![
        3 => text,
        1 => children().prop_map(Inline::Bold),
        1 => children().prop_map(Inline::Italic),
    ]
    .boxed()
}

/// Lines of inline content joined by single line breaks; spaces may sit between pieces but not
/// at the paragraph's edges.
fn paragraph(inline: BoxedStrategy<Inline>, space: bool) -> impl Strategy<Value = Block> {
    let line = prop::collection::vec((inline, any::<bool>()), 1..4).prop_map(move |pieces| {
        let mut out = Vec::new();
        for (k, (inline, spaced)) in pieces.into_iter().enumerate() {
            if k > 0 && spaced && space {
                out.push(Inline::Text(" ".into()));
            }
            out.push(inline);
        }
        out
    });
    prop::collection::vec(line, 1..3).prop_map(|lines| {
        Block::Paragraph(
            lines
                .into_iter()
                .enumerate()
                .flat_map(|(k, line)| (k > 0).then_some(Inline::LineBreak).into_iter().chain(line))
                .collect(),
        )
    })
}

fn bbcode_block() -> impl Strategy<Value = Block> {
    let leaf = prop_oneof![
        3 => paragraph(bbcode_inline(2), true),
        1 => "[a-z0-9 {}();<>&*_\\n]{0,20}".prop_map(Block::Code),
    ];
    leaf.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..3).prop_map(Block::Quote),
            (
                any::<bool>(),
                prop::collection::vec(prop::collection::vec(inner, 1..3), 1..3)
            )
                .prop_map(|(ordered, items)| Block::List { ordered, items }),
        ]
    })
}

fn bbcode_doc() -> impl Strategy<Value = Doc> {
    prop::collection::vec(bbcode_block(), 0..4).prop_map(|blocks| Doc::new(blocks).normalize())
}

/// Documents Matrix HTML can express: BBCode's, with images as plain links (they render as
/// links, since Matrix `<img>` only loads `mxc://`).
fn html_doc() -> impl Strategy<Value = Doc> {
    fn no_images(inlines: Vec<Inline>) -> Vec<Inline> {
        inlines
            .into_iter()
            .map(|inline| match inline {
                Inline::Image { url, .. } => Inline::Link {
                    url,
                    text: Vec::new(),
                },
                Inline::Bold(c) => Inline::Bold(no_images(c)),
                Inline::Italic(c) => Inline::Italic(no_images(c)),
                Inline::Underline(c) => Inline::Underline(no_images(c)),
                Inline::Strike(c) => Inline::Strike(no_images(c)),
                Inline::Link { url, text } => Inline::Link {
                    url,
                    text: no_images(text),
                },
                other => other,
            })
            .collect()
    }
    fn without_images(block: Block) -> Block {
        match block {
            Block::Paragraph(inlines) => Block::Paragraph(no_images(inlines)),
            Block::Quote(inner) => Block::Quote(inner.into_iter().map(without_images).collect()),
            Block::List { ordered, items } => Block::List {
                ordered,
                items: items
                    .into_iter()
                    .map(|item| item.into_iter().map(without_images).collect())
                    .collect(),
            },
            code => code,
        }
    }
    bbcode_doc()
        .prop_map(|doc| Doc::new(doc.blocks.into_iter().map(without_images).collect()).normalize())
}

// ---------------------------------------------------------------------------------------------
// Documents mrkdwn can express: one quote level, no underline, no style inside itself, styles
// and links within a line, list items of one paragraph and an optional nested list.

/// A word that starts with a letter, so no line starts like a list or a quote, and holds no
/// style markers (Slack has no escape for them).
fn mrkdwn_word() -> impl Strategy<Value = String> {
    "[a-zA-Zа-яё][a-zA-Zа-яё0-9.,!?&<>()'\"#@:;|/=+%\\[\\]-]{0,8}"
        .prop_filter("no bare URLs", |w| !w.contains("://"))
}

#[derive(Clone, Copy)]
struct Styles {
    bold: bool,
    italic: bool,
    strike: bool,
}

fn mrkdwn_inline(depth: u32, open: Styles) -> BoxedStrategy<Inline> {
    let leaf = prop_oneof![
        4 => words(mrkdwn_word()).prop_map(Inline::Text),
        1 => "[a-z0-9 *_~<>&|.-]{0,6}[a-z0-9]".prop_map(Inline::Code),
        1 => (url(), prop::option::of(words(mrkdwn_word().prop_filter("no bar", |w| !w.contains('|')))))
            .prop_map(|(url, label)| Inline::Link {
                url,
                text: label.map(Inline::Text).into_iter().collect(),
            }),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    let mut options = vec![(3, leaf.boxed())];
    let styled = |styles: Styles, wrap: fn(Vec<Inline>) -> Inline| {
        prop::collection::vec(mrkdwn_inline(depth - 1, styles), 1..3)
            .prop_map(wrap)
            .boxed()
    };
    if !open.bold {
        options.push((1, styled(Styles { bold: true, ..open }, Inline::Bold)));
    }
    if !open.italic {
        options.push((
            1,
            styled(
                Styles {
                    italic: true,
                    ..open
                },
                Inline::Italic,
            ),
        ));
    }
    if !open.strike {
        options.push((
            1,
            styled(
                Styles {
                    strike: true,
                    ..open
                },
                Inline::Strike,
            ),
        ));
    }
    prop::strategy::Union::new_weighted(options).boxed()
}

fn mrkdwn_paragraph() -> impl Strategy<Value = Block> {
    let none = Styles {
        bold: false,
        italic: false,
        strike: false,
    };
    paragraph(mrkdwn_inline(3, none), true)
}

fn mrkdwn_list(depth: u32) -> BoxedStrategy<Block> {
    let item = if depth == 0 {
        mrkdwn_paragraph().prop_map(|p| vec![p]).boxed()
    } else {
        (mrkdwn_paragraph(), prop::option::of(mrkdwn_list(depth - 1)))
            .prop_map(|(p, nested)| std::iter::once(p).chain(nested).collect())
            .boxed()
    };
    (any::<bool>(), prop::collection::vec(item, 1..4))
        .prop_map(|(ordered, items)| Block::List { ordered, items })
        .boxed()
}

fn mrkdwn_block(in_quote: bool) -> BoxedStrategy<Block> {
    let mut options = vec![
        (3, mrkdwn_paragraph().boxed()),
        (
            1,
            "[a-z0-9 {}();<>&*_|\\n]{0,20}"
                .prop_map(Block::Code)
                .boxed(),
        ),
        (1, mrkdwn_list(2)),
    ];
    if !in_quote {
        options.push((
            1,
            prop::collection::vec(mrkdwn_block(true), 1..3)
                .prop_map(Block::Quote)
                .boxed(),
        ));
    }
    prop::strategy::Union::new_weighted(options).boxed()
}

fn mrkdwn_doc() -> impl Strategy<Value = Doc> {
    prop::collection::vec(mrkdwn_block(false), 0..4).prop_map(|blocks| Doc::new(blocks).normalize())
}
