//! Matrix message formats ⇄ [`Doc`]: `formatted_body` HTML (`org.matrix.custom.html`) and the
//! plain `body` every event also carries.
//!
//! Rendering emits only tags from the Matrix spec's recommended set (client-server API,
//! "m.room.message msgtypes"), so every client shows the same thing. Images become links: Matrix `<img>` only
//! loads `mxc://` URLs and the feed's are `https://`.
//!
//! Parsing is a small, forgiving HTML reader, not a browser: it builds a bounded tree (nesting
//! deeper than [`MAX_DEPTH`] keeps the text and drops the tags), closes what the author forgot to
//! close, ignores stray closing tags, collapses whitespace as HTML does, and drops the reply
//! fallback (`<mx-reply>`), which only repeats the message being answered. `matrix.to` links to
//! people and rooms become mentions. It never panics; whatever it cannot read is kept as text.

use std::collections::HashMap;

use livefeed_core::richtext::{
    Block, Doc, Inline, MAX_DEPTH, Mention, MentionKind, inlines_plain, text_with_breaks,
    trim_paragraph,
};

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

/// `formatted_body` for a document.
pub fn render_html(doc: &Doc) -> String {
    let mut out = String::new();
    for block in &doc.blocks {
        render_block(block, &mut out);
    }
    out
}

/// The plain `body`: what a client without HTML shows, and what notifications and search use.
/// Like [`Doc::plain_text`], but a link whose label hides its target shows both.
pub fn render_plain(doc: &Doc) -> String {
    Doc::new(doc.blocks.iter().map(block_with_urls).collect()).plain_text()
}

fn render_block(block: &Block, out: &mut String) {
    match block {
        Block::Paragraph(inlines) => {
            out.push_str("<p>");
            render_inlines(inlines, out);
            out.push_str("</p>");
        }
        Block::Quote(inner) => {
            out.push_str("<blockquote>");
            for b in inner {
                render_block(b, out);
            }
            out.push_str("</blockquote>");
        }
        Block::Code(text) => {
            // Readers drop one newline right after `<pre>` and (we do) one before `</pre>`, so
            // code that starts or ends with a newline gets an extra one to survive.
            out.push_str("<pre><code>");
            if text.starts_with('\n') {
                out.push('\n');
            }
            push_escaped(text, out);
            if text.ends_with('\n') {
                out.push('\n');
            }
            out.push_str("</code></pre>");
        }
        Block::List { ordered, items } => {
            let tag = if *ordered { "ol" } else { "ul" };
            out.push_str(&format!("<{tag}>"));
            for item in items {
                out.push_str("<li>");
                // A one-paragraph item renders bare: `<li><p>…</p></li>` adds a gap in most clients.
                match item.as_slice() {
                    [Block::Paragraph(inlines)] => render_inlines(inlines, out),
                    blocks => blocks.iter().for_each(|b| render_block(b, out)),
                }
                out.push_str("</li>");
            }
            out.push_str(&format!("</{tag}>"));
        }
    }
}

fn render_inlines(inlines: &[Inline], out: &mut String) {
    for inline in inlines {
        render_inline(inline, out);
    }
}

fn render_inline(inline: &Inline, out: &mut String) {
    let wrap = |tag: &str, children: &[Inline], out: &mut String| {
        out.push_str(&format!("<{tag}>"));
        render_inlines(children, out);
        out.push_str(&format!("</{tag}>"));
    };
    match inline {
        Inline::Text(text) => push_escaped(text, out),
        Inline::Bold(c) => wrap("strong", c, out),
        Inline::Italic(c) => wrap("em", c, out),
        Inline::Underline(c) => wrap("u", c, out),
        Inline::Strike(c) => wrap("del", c, out),
        Inline::Code(text) => {
            out.push_str("<code>");
            push_escaped(text, out);
            out.push_str("</code>");
        }
        Inline::Link { url, text } => {
            if !is_safe_url(url) {
                render_inlines(text, out);
                return;
            }
            out.push_str("<a href=\"");
            push_escaped(url.trim(), out);
            out.push_str("\">");
            if text.is_empty() {
                push_escaped(url.trim(), out);
            } else {
                render_inlines(text, out);
            }
            out.push_str("</a>");
        }
        // A linked person: a pill, which clients show as the person and which notifies them
        // together with `m.mentions` ([`mentioned_users`]).
        Inline::Mention(Mention {
            kind: MentionKind::User,
            target: Some(user),
            name,
            ..
        }) if is_matrix_user_id(user) => {
            out.push_str("<a href=\"https://matrix.to/#/");
            push_escaped(user, out);
            out.push_str("\">");
            push_escaped(if name.is_empty() { user } else { name }, out);
            out.push_str("</a>");
        }
        Inline::Mention(m) => push_escaped(&mention_label(m), out),
        Inline::Image { url, alt } => {
            let label = if alt.trim().is_empty() { "image" } else { alt };
            if is_safe_url(url) {
                out.push_str("<a href=\"");
                push_escaped(url.trim(), out);
                out.push_str("\">");
                push_escaped(label, out);
                out.push_str("</a>");
            } else {
                push_escaped(label, out);
            }
        }
        Inline::File { name, .. } => {
            let name = if name.trim().is_empty() { "file" } else { name };
            out.push_str("📎 ");
            push_escaped(name, out);
        }
        Inline::LineBreak => out.push_str("<br>"),
    }
}

fn push_escaped(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

/// Only schemes a reader can safely follow become links; `javascript:` and friends stay text.
fn is_safe_url(url: &str) -> bool {
    let url = url.trim().to_ascii_lowercase();
    [
        "https://", "http://", "mailto:", "ftp://", "mxc://", "matrix:",
    ]
    .iter()
    .any(|scheme| url.starts_with(scheme))
}

/// `@localpart:server` with nothing that could break out of an attribute.
fn is_matrix_user_id(id: &str) -> bool {
    id.starts_with('@')
        && id.contains(':')
        && !id.contains(['"', '<', '>', '&', ' ', '\'', '/', '#', '?'])
}

/// The users a document mentions by a link (pills), for the event's `m.mentions`.
pub fn mentioned_users(doc: &Doc) -> Vec<String> {
    let mut users = Vec::new();
    let mut doc = doc.clone();
    for m in livefeed_core::adapters::mentions_mut(&mut doc) {
        if let (MentionKind::User, Some(user)) = (m.kind, &m.target)
            && is_matrix_user_id(user)
            && !users.contains(user)
        {
            users.push(user.clone());
        }
    }
    users
}

fn mention_label(m: &Mention) -> String {
    let name = if m.name.is_empty() { &m.id } else { &m.name };
    match m.kind {
        // Never a bare `@room`: the plain body would notify the whole room.
        MentionKind::Broadcast => format!("@\u{200B}{}", name.trim_start_matches('@')),
        MentionKind::Channel if !name.starts_with('#') => format!("#{name}"),
        _ => name.clone(),
    }
}

fn block_with_urls(block: &Block) -> Block {
    match block {
        Block::Paragraph(inlines) => Block::Paragraph(inlines_with_urls(inlines)),
        Block::Quote(inner) => Block::Quote(inner.iter().map(block_with_urls).collect()),
        Block::Code(text) => Block::Code(text.clone()),
        Block::List { ordered, items } => Block::List {
            ordered: *ordered,
            items: items
                .iter()
                .map(|item| item.iter().map(block_with_urls).collect())
                .collect(),
        },
    }
}

/// `label (url)` for links and images whose label is not the URL itself; mentions get the
/// label [`render_html`] shows.
fn inlines_with_urls(inlines: &[Inline]) -> Vec<Inline> {
    let mut out = Vec::with_capacity(inlines.len());
    for inline in inlines {
        match inline {
            Inline::Bold(c) => out.push(Inline::Bold(inlines_with_urls(c))),
            Inline::Italic(c) => out.push(Inline::Italic(inlines_with_urls(c))),
            Inline::Underline(c) => out.push(Inline::Underline(inlines_with_urls(c))),
            Inline::Strike(c) => out.push(Inline::Strike(inlines_with_urls(c))),
            Inline::Link { url, text } => {
                let label = inlines_plain(text);
                if text.is_empty() || label.trim() == url.trim() {
                    out.push(Inline::Text(url.trim().to_owned()));
                } else {
                    out.extend(inlines_with_urls(text));
                    if is_safe_url(url) {
                        out.push(Inline::Text(format!(" ({})", url.trim())));
                    }
                }
            }
            Inline::Image { url, alt } => {
                if alt.trim().is_empty() {
                    out.push(Inline::Text(url.trim().to_owned()));
                } else {
                    out.push(Inline::Text(format!("{alt} ({})", url.trim())));
                }
            }
            Inline::Mention(m) => out.push(Inline::Text(mention_label(m))),
            Inline::File { name, .. } => {
                let name = if name.trim().is_empty() { "file" } else { name };
                out.push(Inline::Text(format!("📎 {name}")));
            }
            other => out.push(other.clone()),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// A `formatted_body` as a document.
pub fn parse(html: &str) -> Doc {
    let tree = build_tree(html);
    let mut reader = Reader::default();
    reader.blocks(&tree, 0);
    Doc::new(reader.finish()).normalize()
}

/// A plain `body` as a document: blank lines separate paragraphs. A reply's quoted fallback
/// (`> <@user:server> …` lines and the blank line after them) is dropped.
pub fn parse_plain(body: &str) -> Doc {
    let body = body.replace("\r\n", "\n");
    let body = strip_plain_reply_fallback(&body);
    let blocks = body
        .split("\n\n")
        .map(|para| Block::Paragraph(trim_paragraph(text_with_breaks(para))))
        .collect();
    Doc::new(blocks).normalize()
}

fn strip_plain_reply_fallback(body: &str) -> &str {
    if !body.starts_with("> <") {
        return body;
    }
    let mut rest = body;
    while let Some(line_end) = rest.find('\n') {
        let line = &rest[..line_end];
        if line.starts_with('>') {
            rest = &rest[line_end + 1..];
        } else if line.is_empty() {
            return &rest[line_end + 1..];
        } else {
            break;
        }
    }
    // Not the fallback shape after all (no blank line after the quote): keep everything.
    body
}

/// A node of the bounded tree the reader walks.
#[derive(Debug)]
enum Node {
    Text(String),
    Element {
        name: String,
        attrs: Vec<(String, String)>,
        children: Vec<Node>,
    },
}

const VOID: &[&str] = &[
    "br", "hr", "img", "wbr", "input", "meta", "link", "col", "area", "base", "embed", "source",
    "track", "param",
];

/// Elements dropped with everything inside them.
const SKIPPED: &[&str] = &["mx-reply", "script", "style", "head", "title", "template"];

const BLOCKS: &[&str] = &[
    "p",
    "div",
    "blockquote",
    "pre",
    "ul",
    "ol",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "table",
    "thead",
    "tbody",
    "tfoot",
    "tr",
    "caption",
    "details",
    "summary",
    "section",
    "article",
    "header",
    "footer",
    "center",
    "dl",
    "dt",
    "dd",
];

/// Elements a new block start closes when still open (`<p>a<p>b`, `<li>a<li>b`).
fn closes_on_open(open: &str, new: &str) -> bool {
    match open {
        "p" => BLOCKS.contains(&new),
        "li" => new == "li",
        "dt" | "dd" => new == "dt" || new == "dd",
        "tr" => new == "tr",
        "td" | "th" => matches!(new, "td" | "th" | "tr"),
        _ => false,
    }
}

struct Open {
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Node>,
}

/// Read HTML into a tree of nodes, forgiving and bounded (nesting capped, scans linear).
// Long: one tokenizer loop whose states (text, tag, entity, comment) share the open-element
// stack; splitting it would pass that stack through every helper.
fn build_tree(html: &str) -> Vec<Node> {
    let mut stack: Vec<Open> = vec![Open {
        name: String::new(),
        attrs: Vec::new(),
        children: Vec::new(),
    }];
    // Tags ignored for being too deep, by name and count; their closing tags are ignored too.
    let mut ignored: HashMap<String, usize> = HashMap::new();
    let mut skipping: Option<(String, usize)> = None;
    let mut pos = 0;
    while pos < html.len() {
        let rest = &html[pos..];
        let Some((token, len)) = next_token(rest) else {
            break;
        };
        pos += len;
        if let Some((name, depth)) = &mut skipping {
            match &token {
                Token::Open { name: n, void, .. } if n == name && !void => *depth += 1,
                Token::Close(n) if n == name => {
                    *depth -= 1;
                    if *depth == 0 {
                        skipping = None;
                    }
                }
                _ => {}
            }
            continue;
        }
        match token {
            Token::Text(text) => push_node(&mut stack, Node::Text(decode_entities(text))),
            Token::Comment => {}
            Token::Open { name, attrs, void } => {
                if SKIPPED.contains(&name.as_str()) {
                    if !void {
                        skipping = Some((name, 1));
                    }
                    continue;
                }
                while stack.len() > 1 && closes_on_open(&stack[stack.len() - 1].name, &name) {
                    close_top(&mut stack);
                }
                if void || VOID.contains(&name.as_str()) {
                    push_node(
                        &mut stack,
                        Node::Element {
                            name,
                            attrs,
                            children: Vec::new(),
                        },
                    );
                } else if stack.len() > MAX_DEPTH {
                    *ignored.entry(name).or_default() += 1;
                } else {
                    stack.push(Open {
                        name,
                        attrs,
                        children: Vec::new(),
                    });
                }
            }
            Token::Close(name) => {
                if let Some(count) = ignored.get_mut(&name)
                    && *count > 0
                {
                    *count -= 1;
                    continue;
                }
                // Close up to the matching open element; a stray closing tag is ignored.
                if let Some(i) = stack.iter().rposition(|o| o.name == name)
                    && i > 0
                {
                    while stack.len() > i {
                        close_top(&mut stack);
                    }
                }
            }
        }
    }
    while stack.len() > 1 {
        close_top(&mut stack);
    }
    stack.pop().map(|root| root.children).unwrap_or_default()
}

fn push_node(stack: &mut [Open], node: Node) {
    if let Some(top) = stack.last_mut() {
        top.children.push(node);
    }
}

fn close_top(stack: &mut Vec<Open>) {
    if let Some(open) = stack.pop() {
        push_node(
            stack,
            Node::Element {
                name: open.name,
                attrs: open.attrs,
                children: open.children,
            },
        );
    }
}

#[derive(Debug)]
enum Token<'a> {
    Text(&'a str),
    Comment,
    Open {
        name: String,
        attrs: Vec<(String, String)>,
        void: bool,
    },
    Close(String),
}

/// The next token of `input` and the bytes it takes (never zero). A `<` that does not start a
/// well-formed tag is text.
fn next_token(input: &str) -> Option<(Token<'_>, usize)> {
    let first = input.chars().next()?;
    if first != '<' {
        let end = input.find('<').unwrap_or(input.len());
        return Some((Token::Text(&input[..end]), end));
    }
    if let Some(body) = input.strip_prefix("<!--") {
        let end = body.find("-->").map_or(input.len(), |i| 4 + i + 3);
        return Some((Token::Comment, end));
    }
    if let Some(tag) = read_tag(input) {
        return Some(tag);
    }
    // A lone `<`: text up to the next `<`.
    let end = input[1..].find('<').map_or(input.len(), |i| i + 1);
    Some((Token::Text(&input[..end]), end))
}

/// A tag at the start of `input`, if it is one, and its length.
fn read_tag(input: &str) -> Option<(Token<'_>, usize)> {
    let bytes = input.as_bytes();
    let closing = bytes.get(1) == Some(&b'/');
    let name_start = if closing { 2 } else { 1 };
    let name_len = input[name_start..]
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'-')
        .count();
    if name_len == 0 || !bytes[name_start].is_ascii_alphabetic() {
        return None;
    }
    let name = input[name_start..name_start + name_len].to_ascii_lowercase();
    let end = find_tag_end(input, name_start + name_len)?;
    if closing {
        return Some((Token::Close(name), end));
    }
    let inner = input[name_start + name_len..end - 1].trim_end();
    let void = inner.ends_with('/');
    let attrs = parse_attrs(inner.trim_end_matches('/'));
    Some((Token::Open { name, attrs, void }, end))
}

/// Longest tag the reader accepts; longer "tags" are text. Keeps `<a "` floods linear.
const MAX_TAG_LEN: usize = 8 * 1024;

/// Index just past the `>` ending a tag, skipping `>` inside quoted attribute values.
fn find_tag_end(input: &str, from: usize) -> Option<usize> {
    let mut quote: Option<u8> = None;
    for (i, b) in input.bytes().enumerate().take(MAX_TAG_LEN).skip(from) {
        match (quote, b) {
            (Some(q), b) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'>') => return Some(i + 1),
            (None, b'<') => return None,
            _ => {}
        }
    }
    None
}

fn parse_attrs(mut s: &str) -> Vec<(String, String)> {
    let mut attrs = Vec::new();
    loop {
        s = s.trim_start();
        if s.is_empty() {
            return attrs;
        }
        let name_len = s
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(s.len());
        if name_len == 0 {
            // A stray `=`; skip it.
            s = &s[1..];
            continue;
        }
        let name = s[..name_len].to_ascii_lowercase();
        s = s[name_len..].trim_start();
        let mut value = String::new();
        if let Some(after) = s.strip_prefix('=') {
            let after = after.trim_start();
            let (raw, rest) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let body = &after[1..];
                    let end = body.find(q).unwrap_or(body.len());
                    (&body[..end], body.get(end + 1..).unwrap_or(""))
                }
                _ => {
                    let end = after.find(char::is_whitespace).unwrap_or(after.len());
                    (&after[..end], &after[end..])
                }
            };
            value = decode_entities(raw);
            s = rest;
        }
        attrs.push((name, value));
    }
}

/// Decode character references; unknown ones stay as written.
fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        // Entity names are short: look for the `;` nearby only, so `&&&…` stays linear.
        let decoded = rest[1..]
            .bytes()
            .take(33)
            .position(|b| b == b';')
            .and_then(|semi| entity(&rest[1..1 + semi]).map(|c| (c, semi + 2)));
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn entity(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse().ok()?,
        };
        return match char::from_u32(code) {
            Some('\0') | None => Some('\u{FFFD}'),
            Some(c) => Some(c),
        };
    }
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => '\u{A0}',
        "ndash" => '–',
        "mdash" => '—',
        "hellip" => '…',
        "laquo" => '«',
        "raquo" => '»',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "bull" => '•',
        "middot" => '·',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "euro" => '€',
        "times" => '×',
        "shy" => '\u{AD}',
        _ => return None,
    })
}

/// Turns the tree into blocks, keeping the paragraph being filled.
#[derive(Default)]
struct Reader {
    blocks: Vec<Block>,
    paragraph: Vec<Inline>,
}

impl Reader {
    fn finish(mut self) -> Vec<Block> {
        self.flush();
        self.blocks
    }

    fn flush(&mut self) {
        let inlines = trim_paragraph(std::mem::take(&mut self.paragraph));
        if !inlines.is_empty() {
            self.blocks.push(Block::Paragraph(inlines));
        }
    }

    fn push_block(&mut self, block: Block) {
        self.flush();
        self.blocks.push(block);
    }

    fn blocks(&mut self, nodes: &[Node], depth: usize) {
        for node in nodes {
            let Node::Element {
                name,
                attrs,
                children,
            } = node
            else {
                let mut inline = Inlines::default();
                inline.node(node, depth);
                self.push_inlines(inline.out);
                continue;
            };
            match name.as_str() {
                "blockquote" => {
                    let mut inner = Reader::default();
                    inner.blocks(children, depth + 1);
                    self.push_block(Block::Quote(inner.finish()));
                }
                "pre" => {
                    let mut text = String::new();
                    text_content(children, &mut text);
                    let text = text.strip_suffix('\n').unwrap_or(&text);
                    let text = text.strip_prefix('\n').unwrap_or(text);
                    self.push_block(Block::Code(text.to_owned()));
                }
                "ul" | "ol" => {
                    let items = list_items(children, depth);
                    self.push_block(Block::List {
                        ordered: name == "ol",
                        items,
                    });
                }
                "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                    self.flush();
                    let mut inline = Inlines::default();
                    inline.nodes(children, depth + 1);
                    self.push_block(Block::Paragraph(vec![Inline::Bold(inline.out)]));
                }
                "tr" => {
                    self.flush();
                    let cells: Vec<Vec<Inline>> = children
                        .iter()
                        .filter_map(|cell| match cell {
                            Node::Element { children, .. } => {
                                let mut inline = Inlines::default();
                                inline.nodes(children, depth + 1);
                                Some(trim_paragraph(inline.out))
                            }
                            Node::Text(_) => None,
                        })
                        .collect();
                    let mut row = Vec::new();
                    for (i, cell) in cells.into_iter().enumerate() {
                        if i > 0 {
                            row.push(Inline::Text(" | ".to_owned()));
                        }
                        row.extend(cell);
                    }
                    self.push_block(Block::Paragraph(row));
                }
                "hr" => self.flush(),
                _ if BLOCKS.contains(&name.as_str()) => {
                    self.flush();
                    self.blocks(children, depth + 1);
                    self.flush();
                }
                _ => {
                    let mut inline = Inlines::default();
                    inline.element(name, attrs, children, depth);
                    self.push_inlines(inline.out);
                }
            }
        }
    }

    /// Inline content joins the open paragraph, keeping HTML's whitespace collapsing across
    /// the seam.
    fn push_inlines(&mut self, inlines: Vec<Inline>) {
        for inline in inlines {
            match (&inline, self.paragraph.last()) {
                (Inline::Text(t), None | Some(Inline::LineBreak)) if t.starts_with(' ') => {
                    let t = t.trim_start_matches(' ');
                    if !t.is_empty() {
                        self.paragraph.push(Inline::Text(t.to_owned()));
                    }
                }
                (Inline::Text(t), Some(Inline::Text(prev)))
                    if t.starts_with(' ') && prev.ends_with(' ') =>
                {
                    let t = t.trim_start_matches(' ');
                    if !t.is_empty() {
                        self.paragraph.push(Inline::Text(t.to_owned()));
                    }
                }
                _ => self.paragraph.push(inline),
            }
        }
    }
}

fn list_items(children: &[Node], depth: usize) -> Vec<Vec<Block>> {
    let mut items = Vec::new();
    let mut loose = Reader::default();
    for child in children {
        match child {
            Node::Element { name, children, .. } if name == "li" => {
                let pending = std::mem::take(&mut loose).finish();
                if !pending.is_empty() {
                    items.push(pending);
                }
                let mut item = Reader::default();
                item.blocks(children, depth + 1);
                items.push(item.finish());
            }
            // Content outside `<li>` (whitespace, usually) is kept as an item of its own.
            other => loose.blocks(std::slice::from_ref(other), depth + 1),
        }
    }
    let pending = loose.finish();
    if !pending.is_empty() {
        items.push(pending);
    }
    items
}

/// Collects inline content, collapsing whitespace runs to one space as HTML does.
#[derive(Default)]
struct Inlines {
    out: Vec<Inline>,
    /// The last character emitted was whitespace (or nothing was emitted yet).
    after_space: bool,
}

impl Inlines {
    fn nodes(&mut self, nodes: &[Node], depth: usize) {
        for node in nodes {
            self.node(node, depth);
        }
    }

    fn node(&mut self, node: &Node, depth: usize) {
        match node {
            Node::Text(text) => self.text(text),
            Node::Element {
                name,
                attrs,
                children,
            } => self.element(name, attrs, children, depth),
        }
    }

    fn text(&mut self, text: &str) {
        let mut collapsed = String::with_capacity(text.len());
        for c in text.chars() {
            if matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{C}') {
                if !self.after_space {
                    collapsed.push(' ');
                    self.after_space = true;
                }
            } else {
                collapsed.push(c);
                self.after_space = false;
            }
        }
        if !collapsed.is_empty() {
            self.out.push(Inline::Text(collapsed));
        }
    }

    fn styled(&mut self, children: &[Node], depth: usize, wrap: fn(Vec<Inline>) -> Inline) {
        let mut inner = Inlines {
            out: Vec::new(),
            after_space: self.after_space,
        };
        inner.nodes(children, depth + 1);
        self.after_space = inner.after_space;
        self.out.push(wrap(inner.out));
    }

    fn element(&mut self, name: &str, attrs: &[(String, String)], children: &[Node], depth: usize) {
        match name {
            "strong" | "b" => self.styled(children, depth, Inline::Bold),
            "em" | "i" => self.styled(children, depth, Inline::Italic),
            "u" | "ins" => self.styled(children, depth, Inline::Underline),
            "del" | "s" | "strike" => self.styled(children, depth, Inline::Strike),
            "code" | "kbd" | "samp" | "tt" => {
                let mut text = String::new();
                text_content(children, &mut text);
                self.out.push(Inline::Code(text));
                self.after_space = false;
            }
            "br" => {
                if let Some(Inline::Text(prev)) = self.out.last_mut() {
                    let trimmed = prev.trim_end_matches(' ').len();
                    prev.truncate(trimmed);
                }
                self.out.push(Inline::LineBreak);
                self.after_space = true;
            }
            "a" => self.link(attr(attrs, "href"), children, depth),
            "img" => {
                let url = attr(attrs, "src").unwrap_or_default().trim().to_owned();
                let alt = attr(attrs, "alt")
                    .or_else(|| attr(attrs, "title"))
                    .unwrap_or_default()
                    .to_owned();
                // `mxc://` media (custom emoji, inline images) needs the homeserver's
                // authenticated media API to load; the feed gets the alt text instead.
                if url.is_empty() || url.starts_with("mxc://") {
                    self.text(&alt);
                } else {
                    self.out.push(Inline::Image { url, alt });
                    self.after_space = false;
                }
            }
            _ if SKIPPED.contains(&name) => {}
            // A block inside inline content (`<b><p>x</p></b>`): keep its text on its own line.
            _ if BLOCKS.contains(&name) => {
                if !self.out.is_empty() {
                    self.element("br", &[], &[], depth);
                }
                self.nodes(children, depth + 1);
            }
            // span, font, sup, sub and anything unknown: the text matters, the tag does not.
            _ => self.nodes(children, depth + 1),
        }
    }

    fn link(&mut self, href: Option<&str>, children: &[Node], depth: usize) {
        let mut inner = Inlines {
            out: Vec::new(),
            after_space: self.after_space,
        };
        inner.nodes(children, depth + 1);
        let href = href.unwrap_or_default().trim();
        if let Some(mut mention) = matrix_mention(href) {
            let label = inlines_plain(&inner.out);
            mention.name = match label.trim() {
                "" => mention.id.clone(),
                label => label.to_owned(),
            };
            self.out.push(Inline::Mention(mention));
            self.after_space = false;
        } else if href.is_empty() || !is_safe_url(href) {
            self.after_space = inner.after_space;
            self.out.extend(inner.out);
        } else {
            let text = if inlines_plain(&inner.out).trim() == href {
                Vec::new()
            } else {
                inner.out
            };
            self.out.push(Inline::Link {
                url: href.to_owned(),
                text,
            });
            self.after_space = false;
        }
    }
}

fn attr<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Raw text of a subtree (for `<pre>` and `<code>`): no whitespace collapsing, `<br>` is a newline.
fn text_content(nodes: &[Node], out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Element { name, .. } if name == "br" => out.push('\n'),
            Node::Element { children, .. } => text_content(children, out),
        }
    }
}

/// A `matrix.to` permalink or `matrix:` URI naming a user or a room.
fn matrix_mention(href: &str) -> Option<Mention> {
    let (kind, id) = if let Some(rest) = href
        .strip_prefix("https://matrix.to/#/")
        .or_else(|| href.strip_prefix("http://matrix.to/#/"))
    {
        let id = percent_decode(rest.split(['?', '/']).next().unwrap_or_default());
        match id.chars().next() {
            Some('@') => (MentionKind::User, id),
            Some('#' | '!') => (MentionKind::Channel, id),
            _ => return None,
        }
    } else if let Some(rest) = href.strip_prefix("matrix:") {
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let mut parts = rest.splitn(2, '/');
        let (sigil_kind, id) = (parts.next()?, percent_decode(parts.next()?));
        match sigil_kind {
            "u" => (MentionKind::User, format!("@{id}")),
            "r" => (MentionKind::Channel, format!("#{id}")),
            "roomid" => (MentionKind::Channel, format!("!{id}")),
            _ => return None,
        }
    } else {
        return None;
    };
    (id.len() > 1 && id.contains(':')).then(|| Mention {
        kind,
        id,
        name: String::new(),
        target: None,
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: &str) -> Inline {
        Inline::Text(t.to_owned())
    }

    fn para(inlines: Vec<Inline>) -> Block {
        Block::Paragraph(inlines)
    }

    #[test]
    fn renders_the_spec_tags_and_escapes() {
        let doc = Doc::new(vec![
            para(vec![
                Inline::Bold(vec![text("a<b>")]),
                text(" & "),
                Inline::Italic(vec![text("i")]),
                Inline::LineBreak,
                Inline::Strike(vec![text("s")]),
                Inline::Underline(vec![text("u")]),
                Inline::Code("x<y".to_owned()),
            ]),
            Block::Quote(vec![para(vec![text("q")])]),
            Block::Code("fn main() {}\n<tag>".to_owned()),
            Block::List {
                ordered: true,
                items: vec![
                    vec![para(vec![text("one")])],
                    vec![para(vec![text("two")]), para(vec![text("more")])],
                ],
            },
        ]);
        assert_eq!(
            render_html(&doc),
            "<p><strong>a&lt;b&gt;</strong> &amp; <em>i</em><br><del>s</del><u>u</u><code>x&lt;y</code></p>\
             <blockquote><p>q</p></blockquote>\
             <pre><code>fn main() {}\n&lt;tag&gt;</code></pre>\
             <ol><li>one</li><li><p>two</p><p>more</p></li></ol>"
        );
    }

    #[test]
    fn links_images_files_and_unsafe_urls() {
        let doc = Doc::paragraph(vec![
            Inline::Link {
                url: "https://x.test/?a=1&b=\"2\"".into(),
                text: vec![text("label")],
            },
            text(" "),
            Inline::Link {
                url: "https://bare.test".into(),
                text: vec![],
            },
            text(" "),
            Inline::Link {
                url: "javascript:alert(1)".into(),
                text: vec![text("click")],
            },
            text(" "),
            Inline::Image {
                url: "https://x.test/p.png".into(),
                alt: "chart".into(),
            },
            text(" "),
            Inline::File {
                id: "7".into(),
                name: "plan.xlsx".into(),
            },
        ]);
        assert_eq!(
            render_html(&doc),
            "<p><a href=\"https://x.test/?a=1&amp;b=&quot;2&quot;\">label</a> \
             <a href=\"https://bare.test\">https://bare.test</a> click \
             <a href=\"https://x.test/p.png\">chart</a> 📎 plan.xlsx</p>"
        );
        assert_eq!(
            render_plain(&doc),
            "label (https://x.test/?a=1&b=\"2\") https://bare.test click chart (https://x.test/p.png) 📎 plan.xlsx"
        );
    }

    #[test]
    fn broadcasts_never_ping_the_room() {
        let doc = Doc::paragraph(vec![Inline::Mention(Mention {
            kind: MentionKind::Broadcast,
            id: "channel".into(),
            name: "room".into(),
            target: None,
        })]);
        assert!(!render_plain(&doc).contains("@room"));
        assert!(!render_html(&doc).contains("@room"));
    }

    #[test]
    fn parses_what_element_sends() {
        let html = "<mx-reply><blockquote><a href=\"https://matrix.to/#/!r:hs/$e\">In reply to</a> \
                    <a href=\"https://matrix.to/#/@bob:hs\">@bob:hs</a><br>old</blockquote></mx-reply>\
                    Hi <a href=\"https://matrix.to/#/%40alice%3Ahs\">Alice</a>,\n<strong>bold</strong> &amp; \
                    <em>it</em><br />next&nbsp;line";
        assert_eq!(
            parse(html),
            Doc::paragraph(vec![
                text("Hi "),
                Inline::Mention(Mention {
                    kind: MentionKind::User,
                    id: "@alice:hs".into(),
                    name: "Alice".into(),
                    target: None,
                }),
                text(", "),
                Inline::Bold(vec![text("bold")]),
                text(" & "),
                Inline::Italic(vec![text("it")]),
                Inline::LineBreak,
                text("next\u{A0}line"),
            ])
        );
    }

    #[test]
    fn parses_blocks_lists_code_and_tables() {
        let html = "<h2>Title</h2>\n<p>one\n  two</p><p>three<ul>\n<li>a</li>\n<li><p>b</p><ol><li>c</li></ol></li></ul>\
                    <pre><code class=\"language-rust\">let x = 1 &lt; 2;\n  y\n</code></pre>\
                    <blockquote>q<p>r</p></blockquote>\
                    <table><tr><th>k</th><th>v</th></tr><tr><td>a</td><td>1</td></tr></table>";
        assert_eq!(
            parse(html),
            Doc::new(vec![
                para(vec![Inline::Bold(vec![text("Title")])]),
                para(vec![text("one two")]),
                para(vec![text("three")]),
                Block::List {
                    ordered: false,
                    items: vec![
                        vec![para(vec![text("a")])],
                        vec![
                            para(vec![text("b")]),
                            Block::List {
                                ordered: true,
                                items: vec![vec![para(vec![text("c")])]],
                            },
                        ],
                    ],
                },
                Block::Code("let x = 1 < 2;\n  y".into()),
                Block::Quote(vec![para(vec![text("q")]), para(vec![text("r")])]),
                para(vec![text("k | v")]),
                para(vec![text("a | 1")]),
            ])
        );
    }

    #[test]
    fn malformed_html_keeps_its_text() {
        assert_eq!(
            parse("a < b && c > d <b>bold <i>both</b> after</i> </span>end <!-- hidden --><x-y z>"),
            Doc::paragraph(vec![
                text("a < b && c > d "),
                Inline::Bold(vec![text("bold "), Inline::Italic(vec![text("both")])]),
                text(" after end"),
            ])
        );
        assert_eq!(
            parse("&#x1F600; &#0; &bogus; &#99999999;"),
            Doc::plain("😀 \u{FFFD} &bogus; \u{FFFD}")
        );
        assert_eq!(parse("<a href=\"javascript:x()\">x</a>"), Doc::plain("x"));
        assert_eq!(parse("<script>alert(1)</script>ok"), Doc::plain("ok"));
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let html = format!("{}deep{}", "<b><i>".repeat(5000), "</i></b>".repeat(5000));
        let doc = parse(&html);
        assert_eq!(doc.plain_text(), "deep");
        let html = "<blockquote>".repeat(10_000);
        assert!(parse(&html).is_empty());
    }

    #[test]
    fn plain_bodies_drop_the_reply_fallback() {
        assert_eq!(
            parse_plain("> <@bob:hs> old\n> more\n\nnew line\nsecond\n\nthird"),
            Doc::new(vec![
                para(vec![text("new line"), Inline::LineBreak, text("second")]),
                para(vec![text("third")]),
            ])
        );
        assert_eq!(
            parse_plain("> quoted by hand"),
            Doc::plain("> quoted by hand")
        );
    }

    #[test]
    fn round_trip_keeps_structure() {
        let doc = Doc::new(vec![
            para(vec![
                Inline::Bold(vec![text("B "), Inline::Italic(vec![text("bi")])]),
                text(" plain & <tags>"),
                Inline::LineBreak,
                Inline::Link {
                    url: "https://x.test/a?b=1&c=2".into(),
                    text: vec![text("link")],
                },
            ]),
            Block::Quote(vec![para(vec![text("quoted")])]),
            Block::Code("  indented\ncode".into()),
            Block::List {
                ordered: false,
                items: vec![vec![para(vec![text("x")])], vec![para(vec![text("y")])]],
            },
        ]);
        assert_eq!(parse(&render_html(&doc)), doc);
    }
}
