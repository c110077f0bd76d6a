//! Slack mrkdwn ⇄ [`Doc`] (rules: `docs/platforms/slack.md` §6).
//!
//! Slack only recognises a style marker at a word boundary: `*bold*` renders, `a*bold*b` does
//! not. When a marker would touch a letter, digit or another marker, the renderer puts a
//! zero-width space (U+200B) between them, the workaround used by slackify-markdown and others;
//! markers next to spaces or punctuation get none, so ordinary text carries no invisible
//! characters. The parser applies the same boundary rule and drops a zero-width space that sits
//! right outside a marker it matched, so the round trip is exact.
//!
//! Choices where Slack has no equivalent or no firm rule:
//! - Underline renders as plain text (italic would collide with nested italic).
//! - Markup characters in plain text (`*x*`, a `>` starting a line) are not neutralised: Slack
//!   has no escape, and text that already looks like mrkdwn was most likely meant as mrkdwn.
//! - On input, lines starting with `• `, `◦ `, `▪ `, `- `, `* `, `1. ` or `1) ` become lists,
//!   nested by indentation. That is what Slack's composer puts into `text` for its lists, and
//!   what the renderer writes.
//! - Slack has one quote level; nested quotes are flattened both ways, and `>>>` quotes the rest of
//!   the message.

use std::collections::HashSet;

use livefeed_core::richtext::{
    Block, Doc, Inline, MAX_DEPTH, Mention, MentionKind, inlines_plain, trim_paragraph,
};

const ZWSP: char = '\u{200B}';

/// Deepest list nesting kept when parsing: the rest of `MAX_DEPTH` is left for a quote around
/// the list and up to three styles and a link inside an item.
const MAX_LIST_NESTING: usize = MAX_DEPTH - 5;

/// Render a document as Slack mrkdwn for `chat.postMessage` `text`.
///
/// `parse(&render(doc), …) == *doc` for normalized documents Slack can express: one quote level,
/// no underline, no style inside itself, styles and links within a line, plain link labels, list
/// items of one paragraph plus an optional nested list, and text that does not itself look like
/// markup. Mentions, images and files become plain text.
pub fn render(doc: &Doc) -> String {
    render_blocks(&doc.blocks, false)
}

/// Parse a Slack message `text` (already entity-escaped by Slack) into a normalized document.
/// `user_name` resolves user ids of `<@U…>` mentions; see [`mentioned_users`].
pub fn parse(input: &str, user_name: &dyn Fn(&str) -> Option<String>) -> Doc {
    let text = input.replace("\r\n", "\n");
    Doc::new(Parser { user_name }.blocks(&text, true)).normalize()
}

/// Ids of users mentioned as `<@U…>` anywhere in `input`, first occurrence order, without
/// duplicates, so the caller can resolve names before [`parse`].
pub fn mentioned_users(input: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut rest = input;
    while let Some(at) = rest.find("<@") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(['<', '>', '\n']) else {
            break;
        };
        if after[end..].starts_with('>') {
            // The same id `parse` will ask `user_name` about.
            let id = after[..end].split('|').next().unwrap_or_default();
            if !id.is_empty() && seen.insert(id) {
                out.push(id.to_owned());
            }
        }
        rest = &after[end..];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Rendering

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

fn render_blocks(blocks: &[Block], in_quote: bool) -> String {
    blocks
        .iter()
        .map(|b| render_block(b, in_quote))
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn render_block(block: &Block, in_quote: bool) -> String {
    match block {
        Block::Paragraph(inlines) => render_inlines(inlines, 0).text,
        // A fence inside the content would end the block early.
        Block::Code(text) => format!("```\n{}\n```", escape(&text.replace("```", "``\u{200B}`"))),
        Block::Quote(inner) => {
            let body = render_blocks(inner, true);
            if in_quote {
                body
            } else {
                body.split('\n')
                    .map(|line| {
                        if line.is_empty() {
                            ">".to_owned()
                        } else {
                            format!("> {line}")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        Block::List { ordered, items } => render_list(*ordered, items, 0, in_quote),
    }
}

/// `• item` / `1. item` lines, four spaces of indentation per level; an item's further lines are
/// aligned with its text.
fn render_list(ordered: bool, items: &[Vec<Block>], level: usize, in_quote: bool) -> String {
    let indent = "    ".repeat(level);
    let mut lines = Vec::new();
    for (n, item) in items.iter().enumerate() {
        let marker = if ordered {
            format!("{}. ", n + 1)
        } else {
            "• ".to_owned()
        };
        let pad = " ".repeat(marker.chars().count());
        let mut first = true;
        for block in item {
            if let Block::List { ordered, items } = block {
                if first {
                    lines.push(format!("{indent}{}", marker.trim_end()));
                    first = false;
                }
                lines.push(render_list(*ordered, items, level + 1, in_quote));
                continue;
            }
            for line in render_block(block, in_quote).split('\n') {
                let lead = if first { &marker } else { &pad };
                lines.push(format!("{indent}{lead}{line}").trim_end().to_owned());
                first = false;
            }
        }
    }
    lines.join("\n")
}

/// Rendered inline content and whether it begins / ends with a style marker, which decides
/// where zero-width spaces go when pieces are joined.
#[derive(Default)]
struct Piece {
    text: String,
    opens: bool,
    closes: bool,
}

impl Piece {
    fn plain(text: String) -> Self {
        Piece {
            text,
            opens: false,
            closes: false,
        }
    }

    fn join(&mut self, next: Piece) {
        if next.text.is_empty() {
            return;
        }
        if self.text.is_empty() {
            *self = next;
            return;
        }
        let touches = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || is_marker(c));
        if (self.closes && touches(next.text.chars().next()))
            || (next.opens && touches(self.text.chars().next_back()))
        {
            self.text.push(ZWSP);
        }
        self.text.push_str(&next.text);
        self.closes = next.closes;
    }
}

fn is_marker(c: char) -> bool {
    matches!(c, '*' | '_' | '~' | '`')
}

const BOLD: u8 = 1;
const ITALIC: u8 = 2;
const STRIKE: u8 = 4;

/// `active` holds the styles already open around this content; Slack cannot nest a style in
/// itself, so an inner repeat is rendered without markers.
fn render_inlines(inlines: &[Inline], active: u8) -> Piece {
    let mut acc = Piece::default();
    for inline in inlines {
        acc.join(render_inline(inline, active));
    }
    acc
}

fn render_inline(inline: &Inline, active: u8) -> Piece {
    match inline {
        Inline::Text(text) => Piece::plain(escape(text)),
        Inline::Bold(c) => render_styled(c, '*', BOLD, active),
        Inline::Italic(c) => render_styled(c, '_', ITALIC, active),
        Inline::Strike(c) => render_styled(c, '~', STRIKE, active),
        Inline::Underline(c) => render_inlines(c, active),
        Inline::Code(text) => {
            // Inline code cannot hold a backtick or span lines.
            let body = text.replace('`', "\u{02CB}").replace('\n', " ");
            if body.is_empty() {
                Piece::default()
            } else {
                Piece {
                    text: format!("`{}`", escape(&body)),
                    opens: true,
                    closes: true,
                }
            }
        }
        Inline::Link { url, text } => {
            let label = one_line(&inlines_plain(text));
            Piece::plain(render_link(url, &label))
        }
        // A linked person is mentioned so that Slack notifies them.
        Inline::Mention(Mention {
            kind: MentionKind::User,
            target: Some(user),
            ..
        }) if is_slack_user_id(user) => Piece::plain(format!("<@{user}>")),
        Inline::Mention(m) => Piece::plain(escape(&mention_label(m))),
        Inline::Image { url, alt } => {
            let label = if alt.trim().is_empty() { "image" } else { alt };
            Piece::plain(render_link(url, &one_line(label)))
        }
        Inline::File { name, .. } => {
            let name = if name.trim().is_empty() { "file" } else { name };
            Piece::plain(format!("📎 {}", escape(&one_line(name))))
        }
        Inline::LineBreak => Piece::plain("\n".to_owned()),
    }
}

/// Markers go around each line's text: styles do not span lines in Slack, and whitespace just
/// inside a marker stops it from rendering, so edge whitespace moves outside.
fn render_styled(children: &[Inline], marker: char, bit: u8, active: u8) -> Piece {
    if active & bit != 0 {
        return render_inlines(children, active);
    }
    let inner = render_inlines(children, active | bit);
    let mut out = Piece::default();
    let lines: Vec<&str> = inner.text.split('\n').collect();
    let last = lines.len() - 1;
    for (k, line) in lines.iter().enumerate() {
        if k > 0 {
            out.text.push('\n');
        }
        let core = line.trim_matches(char::is_whitespace);
        if core.is_empty() {
            out.text.push_str(line);
            continue;
        }
        let lead = &line[..line.len() - line.trim_start_matches(char::is_whitespace).len()];
        let trail = &line[lead.len() + core.len()..];
        out.text.push_str(lead);
        out.text.push(marker);
        out.text.push_str(core);
        out.text.push(marker);
        out.text.push_str(trail);
        if k == 0 {
            out.opens = lead.is_empty();
        }
        if k == last {
            out.closes = trail.is_empty();
        }
    }
    out
}

fn render_link(url: &str, label: &str) -> String {
    let mut target = String::with_capacity(url.len());
    for c in escape(url.trim()).chars() {
        match c {
            '|' => target.push_str("%7C"),
            ' ' => target.push_str("%20"),
            c if c.is_control() => {}
            c => target.push(c),
        }
    }
    let label = label.trim();
    if target.is_empty() {
        return escape(label);
    }
    if label.is_empty() || label == url.trim() {
        format!("<{target}>")
    } else {
        // The first `|` ends the target; keep the label's own bars from looking like syntax.
        format!("<{target}|{}>", escape(&label.replace('|', "¦")))
    }
}

fn one_line(text: &str) -> String {
    text.replace('\n', " ")
}

/// `U…`/`W…` and letters and digits only: safe inside `<@…>`.
fn is_slack_user_id(id: &str) -> bool {
    id.len() > 1
        && (id.starts_with('U') || id.starts_with('W'))
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

fn mention_label(m: &Mention) -> String {
    let name = if m.name.is_empty() { &m.id } else { &m.name };
    match m.kind {
        MentionKind::Broadcast if !name.starts_with('@') => format!("@{name}"),
        MentionKind::Channel if !name.starts_with('#') => format!("#{name}"),
        _ => name.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

fn unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The rest of a quote line after its marker, if it is one; `triple` for `>>>`.
fn quote_line(line: &str) -> Option<(&str, bool)> {
    for (marker, triple) in [
        ("&gt;&gt;&gt;", true),
        (">>>", true),
        ("&gt;", false),
        (">", false),
    ] {
        if let Some(rest) = line.strip_prefix(marker) {
            return Some((rest.strip_prefix(' ').unwrap_or(rest), triple));
        }
    }
    None
}

/// `(ordered, item text)` if the line (without its indentation) starts a list item.
fn list_item(line: &str) -> Option<(bool, &str)> {
    for bullet in ["• ", "◦ ", "▪ ", "- ", "* "] {
        if let Some(rest) = line.strip_prefix(bullet) {
            return Some((false, rest.trim_start()));
        }
    }
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    if (1..=3).contains(&digits) {
        let rest = &line[digits..];
        if let Some(rest) = rest.strip_prefix(". ").or_else(|| rest.strip_prefix(") ")) {
            return Some((true, rest.trim_start()));
        }
    }
    None
}

fn indent_width(line: &str) -> usize {
    line.chars()
        .take_while(|c| c.is_whitespace())
        .map(|c| if c == '\t' { 4 } else { 1 })
        .sum()
}

struct ListLevel {
    indent: usize,
    ordered: bool,
    items: Vec<ItemBuilder>,
}

#[derive(Default)]
struct ItemBuilder {
    blocks: Vec<Block>,
    lines: Vec<String>,
}

struct Parser<'f> {
    user_name: &'f dyn Fn(&str) -> Option<String>,
}

impl Parser<'_> {
    fn blocks(&self, text: &str, allow_quote: bool) -> Vec<Block> {
        let lines: Vec<&str> = text.split('\n').collect();
        let mut out = Vec::new();
        // Line index from which no ``` occurs any more, once known.
        let mut no_fence_from = usize::MAX;
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            if line.trim().is_empty() {
                i += 1;
                continue;
            }
            if allow_quote && let Some((rest, triple)) = quote_line(line) {
                let mut inner = vec![rest];
                i += 1;
                if triple {
                    inner.extend(&lines[i..]);
                    i = lines.len();
                } else {
                    while let Some((rest, _)) = lines.get(i).and_then(|l| quote_line(l)) {
                        inner.push(rest);
                        i += 1;
                    }
                }
                out.push(Block::Quote(self.blocks(&inner.join("\n"), false)));
                continue;
            }
            if list_item(line.trim_start()).is_some() {
                i = self.list(&lines, i, allow_quote, &mut out);
                continue;
            }
            // A paragraph runs to a blank, quote or list line, except inside a ``` fence, which
            // may span any lines.
            let start = i;
            let mut in_fence = false;
            while i < lines.len() {
                let line = lines[i];
                if !in_fence
                    && i > start
                    && (line.trim().is_empty()
                        || (allow_quote && quote_line(line).is_some())
                        || list_item(line.trim_start()).is_some())
                {
                    break;
                }
                if line.matches("```").count() % 2 == 1 {
                    in_fence = !in_fence;
                    // An opener without a closer further down is just text.
                    if in_fence && !fence_below(&lines, i + 1, &mut no_fence_from) {
                        in_fence = false;
                    }
                }
                i += 1;
            }
            self.paragraphs(&lines[start..i].join("\n"), &mut out);
        }
        out
    }

    /// Split a paragraph chunk at ``` fences into paragraphs and code blocks.
    fn paragraphs(&self, chunk: &str, out: &mut Vec<Block>) {
        let mut rest = chunk;
        while let Some(open) = rest.find("```") {
            let Some(len) = rest[open + 3..].find("```") else {
                break;
            };
            self.paragraph(&rest[..open], out);
            let body = &rest[open + 3..open + 3 + len];
            let body = body.strip_prefix('\n').unwrap_or(body);
            let body = body.strip_suffix('\n').unwrap_or(body);
            out.push(Block::Code(self.literal(body)));
            rest = &rest[open + 6 + len..];
        }
        self.paragraph(rest, out);
    }

    fn paragraph(&self, text: &str, out: &mut Vec<Block>) {
        let inlines = trim_paragraph(self.inline_lines(text.split('\n')));
        if !inlines.is_empty() {
            out.push(Block::Paragraph(inlines));
        }
    }

    fn inline_lines<'a>(&self, lines: impl IntoIterator<Item = &'a str>) -> Vec<Inline> {
        let mut out = Vec::new();
        for (k, line) in lines.into_iter().enumerate() {
            if k > 0 {
                out.push(Inline::LineBreak);
            }
            self.line(line, &mut out);
        }
        out
    }

    /// Consume list lines from `lines[i]`; returns the index after them.
    fn list(&self, lines: &[&str], mut i: usize, allow_quote: bool, out: &mut Vec<Block>) -> usize {
        let mut stack: Vec<ListLevel> = Vec::new();
        while let Some(&line) = lines.get(i) {
            if line.trim().is_empty() || (allow_quote && quote_line(line).is_some()) {
                break;
            }
            let indent = indent_width(line);
            if let Some((ordered, text)) = list_item(line.trim_start()) {
                while stack.last().is_some_and(|l| l.indent > indent) {
                    self.close_level(&mut stack, out);
                }
                let sibling = match stack.last() {
                    Some(top) if top.indent == indent || stack.len() >= MAX_LIST_NESTING => {
                        if top.ordered == ordered {
                            true
                        } else {
                            // Bullets after numbers at one level: a new list beside the old.
                            self.close_level(&mut stack, out);
                            false
                        }
                    }
                    _ => false,
                };
                if !sibling {
                    stack.push(ListLevel {
                        indent,
                        ordered,
                        items: Vec::new(),
                    });
                }
                if let Some(top) = stack.last_mut() {
                    top.items.push(ItemBuilder {
                        blocks: Vec::new(),
                        lines: vec![text.to_owned()],
                    });
                }
            } else {
                // An indented line continues the deepest item it is indented under.
                while stack.last().is_some_and(|l| l.indent >= indent) {
                    self.close_level(&mut stack, out);
                }
                let Some(item) = stack.last_mut().and_then(|l| l.items.last_mut()) else {
                    break;
                };
                item.lines.push(line.trim().to_owned());
            }
            i += 1;
        }
        while !stack.is_empty() {
            self.close_level(&mut stack, out);
        }
        i
    }

    fn close_level(&self, stack: &mut Vec<ListLevel>, out: &mut Vec<Block>) {
        let Some(level) = stack.pop() else { return };
        let items = level
            .items
            .into_iter()
            .map(|mut item| {
                self.flush_item(&mut item);
                item.blocks
            })
            .collect();
        let list = Block::List {
            ordered: level.ordered,
            items,
        };
        match stack.last_mut().and_then(|l| l.items.last_mut()) {
            Some(parent) => {
                self.flush_item(parent);
                parent.blocks.push(list);
            }
            None => out.push(list),
        }
    }

    fn flush_item(&self, item: &mut ItemBuilder) {
        if item.lines.is_empty() {
            return;
        }
        let lines = std::mem::take(&mut item.lines);
        let inlines = trim_paragraph(self.inline_lines(lines.iter().map(String::as_str)));
        if !inlines.is_empty() {
            item.blocks.push(Block::Paragraph(inlines));
        }
    }

    /// One line of inline markup. Styles never span lines in Slack.
    ///
    /// Long: one pass over the line's markers keeps the open-style stack local, which is what
    /// keeps the scan linear.
    ///
    /// A marker opens when it follows a non-alphanumeric character (or the line start) and
    /// precedes a non-space; it closes when it follows a non-space and precedes a
    /// non-alphanumeric character (or the line end); doubled markers do neither. A closer
    /// matches the open marker of its kind and turns styles opened inside it back into literal
    /// text; a style does not open again inside itself. That keeps at most three styles open and
    /// the scan linear.
    fn line(&self, line: &str, out: &mut Vec<Inline>) {
        let mut frames: Vec<Open> = Vec::new();
        let mut root: Vec<Inline> = Vec::new();
        let mut buf = String::new();
        let mut prev: Option<char> = None;
        let mut i = 0;
        while let Some(c) = line[i..].chars().next() {
            let next_i = i + c.len_utf8();
            let next = line[next_i..].chars().next();
            match c {
                '<' => {
                    if let Some(len) = line[next_i..].find(['<', '>'])
                        && line[next_i + len..].starts_with('>')
                    {
                        flush(&mut buf, target(&mut frames, &mut root));
                        let token = self.token(&line[next_i..next_i + len]);
                        target(&mut frames, &mut root).push(token);
                        i = next_i + len + 1;
                        prev = Some('>');
                        continue;
                    }
                }
                '`' => {
                    let run = line[i..].bytes().take_while(|&b| b == b'`').count();
                    let fence = if run >= 3 { "```" } else { "`" };
                    let body_at = i + fence.len();
                    if run != 2
                        && let Some(len) = line[body_at..].find(fence)
                        && len > 0
                    {
                        if buf.ends_with(ZWSP) {
                            buf.pop();
                        }
                        flush(&mut buf, target(&mut frames, &mut root));
                        let code = self.literal(&line[body_at..body_at + len]);
                        target(&mut frames, &mut root).push(Inline::Code(code));
                        i = body_at + len + fence.len();
                        prev = Some('`');
                        if line[i..].starts_with(ZWSP) {
                            i += ZWSP.len_utf8();
                            prev = Some(ZWSP);
                        }
                        continue;
                    }
                    buf.push_str(&line[i..i + run]);
                    i += run;
                    prev = Some('`');
                    continue;
                }
                // A run of one marker (`__init__`, Markdown's `**x**`) is literal text.
                '*' | '_' | '~' if prev != Some(c) && next != Some(c) => {
                    let can_open = next.is_some_and(|n| !n.is_whitespace())
                        && prev.is_none_or(|p| !p.is_alphanumeric());
                    let can_close = prev.is_some_and(|p| !p.is_whitespace())
                        && next.is_none_or(|n| !n.is_alphanumeric());
                    let open_at = frames.iter().rposition(|f| f.marker == c);
                    if can_close
                        && let Some(k) = open_at
                        && (k + 1 < frames.len()
                            || !frames[k].children.is_empty()
                            || !buf.is_empty())
                    {
                        flush(&mut buf, target(&mut frames, &mut root));
                        while frames.len() > k + 1 {
                            unwind(&mut frames, &mut root);
                        }
                        if let Some(frame) = frames.pop() {
                            let styled = frame.style();
                            target(&mut frames, &mut root).push(styled);
                        }
                        i = next_i;
                        prev = Some(c);
                        if line[i..].starts_with(ZWSP) {
                            i += ZWSP.len_utf8();
                            prev = Some(ZWSP);
                        }
                        continue;
                    }
                    if can_open && open_at.is_none() {
                        let zwsp_before = buf.ends_with(ZWSP);
                        if zwsp_before {
                            buf.pop();
                        }
                        flush(&mut buf, target(&mut frames, &mut root));
                        frames.push(Open {
                            marker: c,
                            zwsp_before,
                            children: Vec::new(),
                        });
                        i = next_i;
                        prev = Some(c);
                        continue;
                    }
                }
                _ => {}
            }
            buf.push(c);
            prev = Some(c);
            i = next_i;
        }
        flush(&mut buf, target(&mut frames, &mut root));
        while !frames.is_empty() {
            unwind(&mut frames, &mut root);
        }
        out.extend(root);
    }

    /// A `<…>` token (without the brackets).
    fn token(&self, body: &str) -> Inline {
        let (head, label) = match body.split_once('|') {
            Some((head, label)) => (head, Some(unescape(label)).filter(|l| !l.is_empty())),
            None => (body, None),
        };
        let mention = |kind, id: &str, name: Option<String>| {
            Inline::Mention(Mention {
                kind,
                id: id.to_owned(),
                name: name.unwrap_or_else(|| id.to_owned()),
                target: None,
            })
        };
        if let Some(id) = head.strip_prefix('@') {
            return mention(MentionKind::User, id, (self.user_name)(id).or(label));
        }
        if let Some(id) = head.strip_prefix('#') {
            return mention(MentionKind::Channel, id, label);
        }
        if let Some(command) = head.strip_prefix('!') {
            return match command.split_once('^') {
                Some(("subteam", id)) => mention(MentionKind::Group, id, label),
                // `<!date^…|fallback>`: the fallback is what clients without the date show.
                Some((_, args)) => Inline::Text(label.unwrap_or_else(|| unescape(args))),
                None if matches!(command, "here" | "channel" | "everyone") => {
                    Inline::Mention(Mention {
                        kind: MentionKind::Broadcast,
                        id: command.to_owned(),
                        name: command.to_owned(),
                        target: None,
                    })
                }
                None => Inline::Text(label.unwrap_or_else(|| unescape(command))),
            };
        }
        if has_scheme(head) {
            let url = unescape(head);
            let text = match label {
                Some(label) if label != url => vec![Inline::Text(label)],
                _ => Vec::new(),
            };
            return Inline::Link { url, text };
        }
        Inline::Text(format!("<{}>", unescape(body)))
    }

    /// Code content: no markup, but tokens Slack inserted show as what the user typed.
    fn literal(&self, raw: &str) -> String {
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(at) = rest.find('<') {
            out.push_str(&unescape(&rest[..at]));
            let after = &rest[at + 1..];
            match after.find(['<', '>', '\n']) {
                Some(len) if after[len..].starts_with('>') => {
                    out.push_str(&match self.token(&after[..len]) {
                        Inline::Link { url, text } if text.is_empty() => url,
                        Inline::Mention(m) if m.kind == MentionKind::User => format!("@{}", m.name),
                        Inline::Mention(m) => mention_label(&m),
                        other => inlines_plain(&[other]),
                    });
                    rest = &after[len + 1..];
                }
                _ => {
                    out.push('<');
                    rest = after;
                }
            }
        }
        out.push_str(&unescape(rest));
        out
    }
}

/// Whether a ``` occurs in `lines[from..]`; remembers the first line known to have none after it.
fn fence_below(lines: &[&str], from: usize, no_fence_from: &mut usize) -> bool {
    if from >= *no_fence_from {
        return false;
    }
    let found = lines[from.min(lines.len())..]
        .iter()
        .any(|l| l.contains("```"));
    if !found {
        *no_fence_from = from;
    }
    found
}

fn has_scheme(s: &str) -> bool {
    s.split_once(':').is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

struct Open {
    marker: char,
    zwsp_before: bool,
    children: Vec<Inline>,
}

impl Open {
    fn style(self) -> Inline {
        match self.marker {
            '*' => Inline::Bold(self.children),
            '_' => Inline::Italic(self.children),
            _ => Inline::Strike(self.children),
        }
    }
}

fn target<'v>(frames: &'v mut [Open], root: &'v mut Vec<Inline>) -> &'v mut Vec<Inline> {
    match frames.last_mut() {
        Some(frame) => &mut frame.children,
        None => root,
    }
}

fn flush(buf: &mut String, into: &mut Vec<Inline>) {
    if !buf.is_empty() {
        into.push(Inline::Text(unescape(buf)));
        buf.clear();
    }
}

/// An unclosed marker is literal text again.
fn unwind(frames: &mut Vec<Open>, root: &mut Vec<Inline>) {
    if let Some(frame) = frames.pop() {
        let mut marker = String::new();
        if frame.zwsp_before {
            marker.push(ZWSP);
        }
        marker.push(frame.marker);
        let into = target(frames, root);
        into.push(Inline::Text(marker));
        into.extend(frame.children);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Inline {
        Inline::Text(s.to_owned())
    }

    fn para(inlines: Vec<Inline>) -> Block {
        Block::Paragraph(inlines)
    }

    fn names(id: &str) -> Option<String> {
        (id == "U0HUMAN02").then(|| "Anna Smirnova".to_owned())
    }

    fn p(input: &str) -> Doc {
        parse(input, &names)
    }

    fn one(input: &str) -> Vec<Inline> {
        match p(input).blocks.as_slice() {
            [Block::Paragraph(inlines)] => inlines.clone(),
            other => panic!("expected one paragraph for {input:?}, got {other:?}"),
        }
    }

    fn bold(s: &str) -> Inline {
        Inline::Bold(vec![text(s)])
    }

    #[test]
    fn render_escapes_exactly_three_characters() {
        let doc = Doc::plain("a < b && c > d \"'");
        assert_eq!(render(&doc), "a &lt; b &amp;&amp; c &gt; d \"'");
    }

    #[test]
    fn render_styles_and_boundaries() {
        let doc = Doc::paragraph(vec![
            text("x"),
            bold("b"),
            text("y "),
            Inline::Italic(vec![text(" i ")]),
            text(" "),
            Inline::Strike(vec![text("s")]),
            Inline::Italic(vec![text("j")]),
            text(" "),
            Inline::Underline(vec![text("u")]),
            text(" ("),
            Inline::Bold(vec![Inline::Italic(vec![text("bi")])]),
            text(") "),
            Inline::Bold(vec![text("a"), Inline::Bold(vec![text("b")])]),
        ]);
        assert_eq!(
            render(&doc),
            "x\u{200B}*b*\u{200B}y  _i_  ~s~\u{200B}_j_ u (*_bi_*) *ab*"
        );
    }

    #[test]
    fn render_styles_per_line() {
        let doc = Doc::paragraph(vec![Inline::Bold(vec![
            text("one"),
            Inline::LineBreak,
            text("two "),
        ])]);
        assert_eq!(render(&doc), "*one*\n*two* ");
    }

    #[test]
    fn render_links_media_mentions() {
        let doc = Doc::paragraph(vec![
            Inline::Link {
                url: "https://a.example/?a=1&b=<2>|3".into(),
                text: vec![text("A | B <c>")],
            },
            text(" "),
            Inline::Link {
                url: "https://b.example".into(),
                text: vec![],
            },
            text(" "),
            Inline::Image {
                url: "https://c.example/i.png".into(),
                alt: String::new(),
            },
            text(" "),
            Inline::File {
                id: "n1".into(),
                name: String::new(),
            },
            text(" "),
            Inline::File {
                id: "n2".into(),
                name: "plan.pdf".into(),
            },
            text(" "),
            Inline::Mention(Mention {
                kind: MentionKind::User,
                id: "1".into(),
                name: "Ivan".into(),
                target: None,
            }),
            text(" "),
            Inline::Mention(Mention {
                kind: MentionKind::Broadcast,
                id: "here".into(),
                name: "here".into(),
                target: None,
            }),
            text(" "),
            Inline::Code("a`b<".into()),
        ]);
        assert_eq!(
            render(&doc),
            "<https://a.example/?a=1&amp;b=&lt;2&gt;%7C3|A ¦ B &lt;c&gt;> <https://b.example> \
             <https://c.example/i.png|image> 📎 file 📎 plan.pdf Ivan @here `a\u{02CB}b&lt;`"
        );
    }

    #[test]
    fn render_blocks() {
        let item = |s: &str| vec![para(vec![text(s)])];
        let doc = Doc::new(vec![
            para(vec![text("intro")]),
            Block::Quote(vec![
                para(vec![text("q1"), Inline::LineBreak, text("q2")]),
                Block::Quote(vec![para(vec![text("nested")])]),
            ]),
            Block::Code("let a = b && c;\n```".into()),
            Block::List {
                ordered: false,
                items: vec![
                    item("a"),
                    vec![
                        para(vec![text("b"), Inline::LineBreak, text("more")]),
                        Block::List {
                            ordered: true,
                            items: vec![item("c"), item("d")],
                        },
                    ],
                ],
            },
        ]);
        assert_eq!(
            render(&doc),
            "intro\n\n> q1\n> q2\n>\n> nested\n\n```\nlet a = b &amp;&amp; c;\n``\u{200B}`\n```\n\n\
             • a\n• b\n  more\n    1. c\n    2. d"
        );
    }

    #[test]
    fn parse_tokens() {
        let mention = |kind, id: &str, name: &str| {
            Inline::Mention(Mention {
                kind,
                id: id.into(),
                name: name.into(),
                target: None,
            })
        };
        assert_eq!(
            one(
                "<@U0HUMAN02> <@U0OTHER|bob> <@U0NONE> <#C1|general> <#C2|> <!here> <!subteam^S1|@devs> <!date^1700000000^{date_short}|Nov 14> <!channel>"
            ),
            vec![
                mention(MentionKind::User, "U0HUMAN02", "Anna Smirnova"),
                text(" "),
                mention(MentionKind::User, "U0OTHER", "bob"),
                text(" "),
                mention(MentionKind::User, "U0NONE", "U0NONE"),
                text(" "),
                mention(MentionKind::Channel, "C1", "general"),
                text(" "),
                mention(MentionKind::Channel, "C2", "C2"),
                text(" "),
                mention(MentionKind::Broadcast, "here", "here"),
                text(" "),
                mention(MentionKind::Group, "S1", "@devs"),
                text(" Nov 14 "),
                mention(MentionKind::Broadcast, "channel", "channel"),
            ]
        );
        assert_eq!(
            one(
                "<https://a.example/?a=1&amp;b=2|A &amp; B> <https://b.example> <mailto:a@b.example|a@b.example> <https://c.example|https://c.example>"
            ),
            vec![
                Inline::Link {
                    url: "https://a.example/?a=1&b=2".into(),
                    text: vec![text("A & B")]
                },
                text(" "),
                Inline::Link {
                    url: "https://b.example".into(),
                    text: vec![]
                },
                text(" "),
                Inline::Link {
                    url: "mailto:a@b.example".into(),
                    text: vec![text("a@b.example")]
                },
                text(" "),
                Inline::Link {
                    url: "https://c.example".into(),
                    text: vec![]
                },
            ]
        );
        assert_eq!(
            one("a &lt;b&gt; &amp;lt; <x y"),
            vec![text("a <b> &lt; <x y")]
        );
    }

    #[test]
    fn parse_styles_at_word_boundaries() {
        assert_eq!(
            one("*b* _i_ ~s~ (*p*) snake_case_word 2 * 3 * 4 a*b*c * x * :tada:"),
            vec![
                bold("b"),
                text(" "),
                Inline::Italic(vec![text("i")]),
                text(" "),
                Inline::Strike(vec![text("s")]),
                text(" ("),
                bold("p"),
                text(") snake_case_word 2 * 3 * 4 a*b*c * x * :tada:"),
            ]
        );
        assert_eq!(
            one("*bold _both_ end* *a _b* c_"),
            vec![
                Inline::Bold(vec![
                    text("bold "),
                    Inline::Italic(vec![text("both")]),
                    text(" end"),
                ]),
                text(" "),
                bold("a _b"),
                text(" c_"),
            ]
        );
        assert_eq!(
            one("__init__ **not bold** _a_\u{200B}_b_"),
            vec![
                text("__init__ **not bold** "),
                Inline::Italic(vec![text("a")]),
                Inline::Italic(vec![text("b")]),
            ]
        );
        assert_eq!(
            one("x\u{200B}*b*\u{200B}y"),
            vec![text("x"), bold("b"), text("y")]
        );
        assert_eq!(
            one("*open\nclose*"),
            vec![text("*open"), Inline::LineBreak, text("close*")]
        );
    }

    #[test]
    fn parse_code() {
        assert_eq!(
            one("run `cargo *test*` and `<https://x.example>` ``"),
            vec![
                text("run "),
                Inline::Code("cargo *test*".into()),
                text(" and "),
                Inline::Code("https://x.example".into()),
                text(" ``"),
            ]
        );
        assert_eq!(
            p("before\n```\nfn main() {\n\n  a &amp;&amp; b; // *x*\n}\n```\nafter").blocks,
            vec![
                para(vec![text("before")]),
                Block::Code("fn main() {\n\n  a && b; // *x*\n}".into()),
                para(vec![text("after")]),
            ]
        );
        assert_eq!(
            p("```one``` and ```").blocks,
            vec![Block::Code("one".into()), para(vec![text("and ```")])]
        );
    }

    #[test]
    fn parse_quotes() {
        assert_eq!(
            p("&gt; a\n&gt;\n&gt; *b*\n>c\nafter\n&gt;&gt;&gt; rest\nall").blocks,
            vec![
                Block::Quote(vec![
                    para(vec![text("a")]),
                    para(vec![bold("b"), Inline::LineBreak, text("c")]),
                ]),
                para(vec![text("after")]),
                Block::Quote(vec![para(vec![
                    text("rest"),
                    Inline::LineBreak,
                    text("all")
                ])]),
            ]
        );
    }

    #[test]
    fn parse_lists() {
        let item = |s: &str| vec![para(vec![text(s)])];
        assert_eq!(
            p("Plan:\n• a\n    ◦ b\n      more\n    ◦ c\n• d\n1. one\n2) two\n\n- x").blocks,
            vec![
                para(vec![text("Plan:")]),
                Block::List {
                    ordered: false,
                    items: vec![
                        vec![
                            para(vec![text("a")]),
                            Block::List {
                                ordered: false,
                                items: vec![
                                    vec![para(vec![text("b"), Inline::LineBreak, text("more")])],
                                    item("c"),
                                ]
                            },
                        ],
                        item("d"),
                    ]
                },
                Block::List {
                    ordered: true,
                    items: vec![item("one"), item("two")]
                },
                Block::List {
                    ordered: false,
                    items: vec![item("x")]
                },
            ]
        );
    }

    #[test]
    fn mentioned_users_in_order_without_duplicates() {
        assert_eq!(
            mentioned_users("<@U2> hi <@U1|x> <@U2> <#C1> <@ <@U3>"),
            vec!["U2", "U1", "U3"]
        );
    }
}
