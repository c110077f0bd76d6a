//! Hostile input: huge nesting and marker floods must parse without quadratic work or deep
//! recursion, and come out no deeper than `MAX_DEPTH`. (Assertions are on structure; a
//! quadratic parser would make these tests run for minutes.)

use livefeed_bridge::bitrix::bbcode;
use livefeed_bridge::matrix::html;
use livefeed_bridge::slack::mrkdwn;
use livefeed_core::richtext::{Block, Doc, Inline, MAX_DEPTH};

const N: usize = 100_000;

fn bb(input: &str) -> Doc {
    let doc = bbcode::parse(input);
    assert!(livefeed_core::testing::depth(&doc) <= MAX_DEPTH);
    doc
}

fn md(input: &str) -> Doc {
    let doc = mrkdwn::parse(input, &|_| None);
    assert!(livefeed_core::testing::depth(&doc) <= MAX_DEPTH);
    doc
}

fn h(input: &str) -> Doc {
    let doc = html::parse(input);
    assert!(livefeed_core::testing::depth(&doc) <= MAX_DEPTH);
    doc
}

/// Deterministic pseudo-random text over `alphabet`.
fn noise(alphabet: &[&str], len: usize, mut seed: u64) -> String {
    (0..len)
        .map(|_| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            alphabet[(seed >> 33) as usize % alphabet.len()]
        })
        .collect()
}

#[test]
fn nested_bbcode_styles_are_capped() {
    let doc = bb(&format!("{}x{}", "[B]".repeat(N), "[/B]".repeat(N)));
    assert_eq!(livefeed_core::testing::depth(&doc), MAX_DEPTH);
    assert_eq!(doc.plain_text(), "x");

    // Never closed: the openers kept on the stack come back as text, the rest are flattened.
    let doc = bb(&format!("{}x", "[B]".repeat(N)));
    assert_eq!(doc.plain_text(), format!("{}x", "[B]".repeat(MAX_DEPTH)));
}

#[test]
fn nested_bbcode_quotes_are_capped() {
    let doc = bb(&format!("{}q{}", "[QUOTE]".repeat(N), "[/QUOTE]".repeat(N)));
    assert_eq!(livefeed_core::testing::depth(&doc), MAX_DEPTH);
    assert_eq!(doc.plain_text().trim_start_matches(['>', ' ']), "q");
    bb(&"[QUOTE]".repeat(N));
    bb(&"[/QUOTE]".repeat(N));
}

#[test]
fn nested_bbcode_lists_are_capped() {
    let doc = bb(&format!(
        "{}i{}",
        "[LIST][*]".repeat(N),
        "[/LIST]".repeat(N)
    ));
    assert_eq!(livefeed_core::testing::depth(&doc), MAX_DEPTH);
    let mut blocks = doc.blocks;
    let mut levels = 0;
    while let [Block::List { items, .. }] = blocks.as_slice() {
        levels += 1;
        blocks = items[0].clone();
    }
    assert_eq!(levels, MAX_DEPTH);
    bb(&"[LIST][*]".repeat(N));
}

#[test]
fn bbcode_floods_of_unclosed_and_mixed_tags() {
    bb(&format!("see http://a.example/{}", ")".repeat(2 * N)));
    bb(&"http://a.example/(".repeat(N));
    for opener in [
        "[CODE]",
        "[IMG]",
        "[URL]",
        "[URL=https://a.example/",
        "[USER=1]",
        "[*]",
        "[",
    ] {
        let doc = bb(&opener.repeat(N));
        assert!(!doc.is_empty(), "{opener} flood must stay visible as text");
    }
    let soup = [
        "[B]",
        "[/B]",
        "[I]",
        "[/I]",
        "[U]",
        "[/U]",
        "[S]",
        "[/S]",
        "[QUOTE]",
        "[/QUOTE]",
        "[LIST]",
        "[/LIST]",
        "[*]",
        "[TABLE]",
        "[TR]",
        "[TD]",
        "[/TD]",
        "[/TR]",
        "[/TABLE]",
        "[URL=https://a.example]",
        "[/URL]",
        "[SIZE=3]",
        "[/SIZE]",
        "x",
        " ",
        "\n",
    ];
    bb(&noise(&soup, 2 * N, 7));
}

#[test]
fn mrkdwn_marker_floods() {
    for (seed, alphabet) in [
        (1, &["*", "_", "~"][..]),
        (2, &["*", "_", "~", "a", " "][..]),
        (
            3,
            &["*", "_", "~", "`", "<", ">", "|", "@", "a", " ", "\n"][..],
        ),
    ] {
        bb(&noise(alphabet, 2 * N, seed));
        md(&noise(alphabet, 2 * N, seed));
    }
    for flood in [
        "*",
        "_",
        "~",
        "`",
        "```",
        "<",
        "<@",
        "&gt;",
        "\u{200B}*",
        "*a ",
    ] {
        md(&flood.repeat(2 * N));
    }
}

#[test]
fn mrkdwn_style_nesting_is_shallow() {
    // `*a *a *a … a* a* a*`: a style never opens inside itself.
    let doc = md(&format!("{}x{}", "*a ".repeat(N), " a*".repeat(N)));
    assert!(livefeed_core::testing::depth(&doc) <= 1);
}

#[test]
fn mrkdwn_deep_lists_and_quotes_are_capped() {
    // Ever deeper indentation, restarting every hundred levels to keep the input linear.
    let lines: String = (0..N / 5)
        .map(|k| format!("{}• item {k}\n", "    ".repeat(k % 100)))
        .collect();
    let doc = md(&lines);
    assert!(matches!(doc.blocks.first(), Some(Block::List { .. })));

    let doc = md(&"&gt; q\n".repeat(N));
    assert!(matches!(doc.blocks.as_slice(), [Block::Quote(_)]));
    md(&"&gt;&gt;&gt; ".repeat(N));
    md(&"```\n".repeat(N));
    md(&"```\n&gt; • x\n".repeat(N));
}

#[test]
fn huge_paragraph_keeps_its_text() {
    let text = "слово ".repeat(N);
    let doc = bb(&text);
    assert!(matches!(doc.blocks.as_slice(), [Block::Paragraph(p)] if p.len() == 1));
    let doc = md(&text);
    assert!(
        matches!(doc.blocks.as_slice(), [Block::Paragraph(p)] if matches!(p[..], [Inline::Text(_)]))
    );
}

#[test]
fn html_nesting_is_capped() {
    let doc = h(&format!("{}x{}", "<b><i>".repeat(N), "</i></b>".repeat(N)));
    assert_eq!(doc.plain_text(), "x");
    let doc = h(&format!(
        "{}q{}",
        "<blockquote>".repeat(N),
        "</blockquote>".repeat(N)
    ));
    assert_eq!(doc.plain_text().trim_start_matches("> "), "q");
    h(&"<ul><li>".repeat(N));
    h(&"<table><tr><td>".repeat(N));
}

#[test]
fn html_floods_stay_linear() {
    for flood in [
        "<",
        "<a \"",
        "<a '",
        "&",
        "&#",
        "&#x",
        "<!--",
        "</b>",
        "<b>",
        "<br>",
        "<p>",
        "<li>",
        "<mx-reply>",
        "</mx-reply>",
        "<script>",
        "<x",
        "=\"",
    ] {
        h(&flood.repeat(2 * N));
    }
    let alphabet = [
        "<", ">", "/", "b", "p", "a", " ", "\"", "'", "=", "&", ";", "#", "\n", "!", "-",
    ];
    h(&noise(&alphabet, 2 * N, 4));
    // Many unmatched closing tags after many ignored-for-depth opening ones.
    h(&format!("{}{}", "<i>".repeat(N), "</u>".repeat(N)));
}
