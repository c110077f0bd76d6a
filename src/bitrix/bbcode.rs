//! Bitrix24 Live Feed BBCode ⇄ [`Doc`] (dialect: `docs/platforms/bitrix24.md` §7).
//!
//! Parsing mirrors what the portal shows. Bitrix converts only *matched* tag pairs, so an opener
//! without its closer (`[B]x`, `[QUOTE]…`), a closer without an opener and anything that is not a
//! known tag (`[1]`, `[sic]`, `[b`) stay literal text. Two deliberate deviations:
//! - Mismatched inline nesting (`[B][I]x[/B]y[/I]`) is repaired the way browsers repair HTML:
//!   the inner style ends with the outer one and is reopened after it, so nothing leaks as
//!   literal tags.
//! - Markup nested deeper than [`MAX_DEPTH`] is flattened: the surplus tags vanish, their
//!   text stays.
//!
//! The parser is one left-to-right pass over the input with a stack of at most `MAX_DEPTH` open
//! tags, and every look-ahead is bounded or cached, so hostile input costs linear time and the
//! later tree walks recurse no deeper than `MAX_DEPTH`.

use std::borrow::Cow;

use livefeed_core::richtext::{
    Block, Doc, Inline, MAX_DEPTH, Mention, MentionKind, normalize_inlines, trim_paragraph,
};

/// Written after a `[` that would otherwise start a tag; the parser drops it again. BBCode has no
/// escape syntax, and an invisible character keeps the text looking the same in the feed.
const ZWSP: char = '\u{200B}';

/// Longest tag text looked at (a `[URL=…]` with a long query string fits); bounds lexing work.
const MAX_TAG_LEN: usize = 4096;

/// Inline code has no BBCode of its own; a monospace font is the closest thing the feed shows.
const CODE_FONT: &str = "Courier New";

/// Parse Bitrix24 feed BBCode into a normalized document.
pub fn parse(input: &str) -> Doc {
    let src = normalize_newlines(input);
    let mut parser = Parser::new(&src);
    parser.run();
    Doc::new(blocks(parser.finish())).normalize()
}

/// Render a document as BBCode for comments the bridge writes (upper-case tags).
///
/// `parse(&render(doc)) == *doc` for normalized documents that use only what BBCode expresses:
/// bold/italic/underline/strike, links (not nested), images without alt text, quotes, code blocks
/// and lists, with paragraphs that have no edge whitespace, blank lines or bare URLs in their
/// text. Mentions and files become plain text (the feed would need Bitrix ids), inline code a
/// monospace font.
pub fn render(doc: &Doc) -> String {
    let mut out = String::new();
    render_blocks(&doc.blocks, &mut out);
    out
}

fn normalize_newlines(input: &str) -> Cow<'_, str> {
    if input.contains('\r') {
        Cow::Owned(input.replace("\r\n", "\n").replace('\r', "\n"))
    } else {
        Cow::Borrowed(input)
    }
}

// ---------------------------------------------------------------------------------------------
// Lexing

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tag {
    B,
    I,
    U,
    S,
    Url,
    Img,
    Video,
    Quote,
    Code,
    List,
    Item,
    User,
    Project,
    Department,
    Disk,
    Document,
    Table,
    Row,
    Cell,
    HeadCell,
    Size,
    Color,
    Font,
    Left,
    Right,
    Center,
    Justify,
    P,
    Spoiler,
    Cut,
}

const TAGS: [(&str, Tag); 30] = [
    ("b", Tag::B),
    ("i", Tag::I),
    ("u", Tag::U),
    ("s", Tag::S),
    ("url", Tag::Url),
    ("img", Tag::Img),
    ("video", Tag::Video),
    ("quote", Tag::Quote),
    ("code", Tag::Code),
    ("list", Tag::List),
    ("*", Tag::Item),
    ("user", Tag::User),
    ("project", Tag::Project),
    ("department", Tag::Department),
    ("disk", Tag::Disk),
    ("document", Tag::Document),
    ("table", Tag::Table),
    ("tr", Tag::Row),
    ("td", Tag::Cell),
    ("th", Tag::HeadCell),
    ("size", Tag::Size),
    ("color", Tag::Color),
    ("font", Tag::Font),
    ("left", Tag::Left),
    ("right", Tag::Right),
    ("center", Tag::Center),
    ("justify", Tag::Justify),
    ("p", Tag::P),
    ("spoiler", Tag::Spoiler),
    ("cut", Tag::Cut),
];

impl Tag {
    fn named(name: &str) -> Option<Tag> {
        TAGS.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, tag)| tag)
    }

    fn name(self) -> &'static str {
        TAGS[self as usize].0
    }
}

enum Lexed<'a> {
    Open {
        tag: Tag,
        /// The value after `=` directly behind the name (`[URL=…]`, `[LIST=1]`).
        main: Option<&'a str>,
        /// `key=value` attributes (`[DISK FILE ID=n5 width=100]`).
        attrs: Vec<(&'a str, &'a str)>,
    },
    Close(Tag),
}

impl Lexed<'_> {
    fn attr(&self, key: &str) -> Option<&str> {
        match self {
            Lexed::Open { attrs, .. } => attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|&(_, v)| v)
                .filter(|v| !v.is_empty()),
            Lexed::Close(_) => None,
        }
    }
}

/// The known tag starting at `s[at] == '['`, and the index just past its `]`.
///
/// A tag never spans a `[` or a newline, so a failed attempt scans only up to the next `[` and the
/// caller's scan stays linear.
fn lex_tag(s: &str, at: usize) -> Option<(Lexed<'_>, usize)> {
    let rest = &s[at + 1..];
    let len = rest
        .bytes()
        .take(MAX_TAG_LEN)
        .position(|b| matches!(b, b']' | b'[' | b'\n'))?;
    if rest.as_bytes()[len] != b']' {
        return None;
    }
    let inner = &rest[..len];
    let end = at + len + 2;

    if let Some(name) = inner.strip_prefix('/') {
        let tag = Tag::named(name.trim())?;
        // Self-closing tags have no closer.
        return (!matches!(tag, Tag::Disk | Tag::Document)).then_some((Lexed::Close(tag), end));
    }

    let name_len = inner
        .find(|c: char| !(c.is_ascii_alphabetic() || c == '*'))
        .unwrap_or(inner.len());
    let tag = Tag::named(&inner[..name_len])?;
    let mut after = &inner[name_len..];
    if tag == Tag::Disk {
        // `[DISK FILE ID=…]`: the name is two words.
        let words = after.trim_start();
        if !words
            .get(..4)
            .is_some_and(|w| w.eq_ignore_ascii_case("file"))
        {
            return None;
        }
        after = &words[4..];
    }
    let (main, attrs) = if let Some(value) = after.strip_prefix('=') {
        (Some(unquote(value)), Vec::new())
    } else if after.trim().is_empty() {
        (None, Vec::new())
    } else if after.starts_with(char::is_whitespace) {
        let attrs = after
            .split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k, unquote(v)))
            .collect();
        (None, attrs)
    } else {
        // `[bold]`, `[b1]`: another word that merely starts like a tag.
        return None;
    };
    let lexed = Lexed::Open { tag, main, attrs };
    let valid = match tag {
        Tag::B | Tag::I | Tag::U | Tag::S | Tag::Item => {
            matches!(&lexed, Lexed::Open { main: None, attrs, .. } if attrs.is_empty())
        }
        Tag::User | Tag::Project | Tag::Department => main.is_some_and(|v| !v.is_empty()),
        Tag::Disk | Tag::Document => lexed.attr("id").is_some(),
        _ => true,
    };
    valid.then_some((lexed, end))
}

fn unquote(value: &str) -> &str {
    let v = value.trim();
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner.trim();
        }
    }
    v
}

/// First `[/name]` (any case) at or after `from`.
fn find_closer(s: &str, from: usize, name: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = from;
    while let Some(off) = s[i..].find("[/") {
        let at = i + off;
        let name_at = at + 2;
        let name_end = name_at + name.len();
        if bytes.get(name_end) == Some(&b']')
            && bytes[name_at..name_end].eq_ignore_ascii_case(name.as_bytes())
        {
            return Some(at);
        }
        i = name_at;
    }
    None
}

fn is_safe_url(url: &str) -> bool {
    let u = url.trim_start();
    !u.is_empty()
        && !["javascript:", "vbscript:", "data:"].iter().any(|scheme| {
            u.get(..scheme.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
        })
}

// ---------------------------------------------------------------------------------------------
// Tree building

#[derive(Clone)]
enum Kind {
    Root,
    Style(fn(Vec<Inline>) -> Inline),
    /// A tag that only changes looks the chat cannot show (`[SIZE]`, `[CENTER]`, …).
    Wrapper,
    Link(String),
    Quote,
    List {
        ordered: bool,
    },
    Table,
    Row,
    Cell {
        header: bool,
    },
}

enum Node {
    Text(String),
    /// An opener that was never closed, shown as written (no auto-linking inside).
    Raw(String),
    Atom(Inline),
    Code(String),
    /// `[*]` inside a list.
    Item,
    Elem(Kind, Vec<Node>),
}

struct Frame {
    tag: Option<Tag>,
    kind: Kind,
    /// The opener as written, restored as text if the frame is never closed; `None` for styles
    /// reopened after a mismatched closer.
    opener: Option<String>,
    children: Vec<Node>,
}

impl Frame {
    fn inline_like(&self) -> bool {
        matches!(self.kind, Kind::Style(_) | Kind::Wrapper)
    }

    fn table_part(&self) -> bool {
        matches!(self.kind, Kind::Row | Kind::Cell { .. })
    }
}

/// What is known about the next `[/TAG]` of a raw-bodied tag, so repeated unclosed openers do
/// not rescan the rest of the input each time.
#[derive(Clone, Copy)]
enum Seen {
    Unknown,
    At(usize),
    NoneFrom(usize),
}

struct Parser<'a> {
    src: &'a str,
    /// `stack[0]` is the root; at most `MAX_DEPTH` frames above it.
    stack: Vec<Frame>,
    /// Openers dropped for depth, per tag; their closers are dropped too.
    dropped: [usize; TAGS.len()],
    closers: [Seen; TAGS.len()],
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Self {
        Parser {
            src,
            stack: vec![Frame {
                tag: None,
                kind: Kind::Root,
                opener: None,
                children: Vec::new(),
            }],
            dropped: [0; TAGS.len()],
            closers: [Seen::Unknown; TAGS.len()],
        }
    }

    fn run(&mut self) {
        let src = self.src;
        let (mut pos, mut text_from) = (0, 0);
        while let Some(off) = src[pos..].find('[') {
            let at = pos + off;
            let Some((lexed, end)) = lex_tag(src, at) else {
                pos = at + 1;
                continue;
            };
            self.text(&src[text_from..at]);
            pos = self.tag(&lexed, at, end);
            text_from = pos;
        }
        self.text(&src[text_from..]);
    }

    /// Unclosed frames at the end: openers go back to literal text.
    fn finish(mut self) -> Vec<Node> {
        while self.stack.len() > 1 {
            self.unwind_top();
        }
        self.stack.pop().map(|f| f.children).unwrap_or_default()
    }

    fn top(&mut self) -> &mut Vec<Node> {
        let last = self.stack.len() - 1;
        &mut self.stack[last].children
    }

    fn push(&mut self, node: Node) {
        let children = self.top();
        if let (Some(Node::Text(prev)), Node::Text(next)) = (children.last_mut(), &node) {
            prev.push_str(next);
        } else {
            children.push(node);
        }
    }

    fn text(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        // Undo the renderer's `[` + ZWSP escape.
        let text = if s.contains("[\u{200B}") {
            s.replace("[\u{200B}", "[")
        } else {
            s.to_owned()
        };
        self.push(Node::Text(text));
    }

    // Long: one match over the dialect's whole tag table, so a reader sees every tag the feed
    // can send in one place; split up, the table would scatter across helpers.
    /// Handle one tag; returns where scanning resumes.
    fn tag(&mut self, lexed: &Lexed<'_>, at: usize, end: usize) -> usize {
        let raw = &self.src[at..end];
        let (tag, main) = match *lexed {
            Lexed::Close(tag) => {
                self.close(tag, raw);
                return end;
            }
            Lexed::Open { tag, main, .. } => (tag, main.filter(|v| !v.is_empty())),
        };
        if let (Tag::Url, Some(url)) = (tag, main) {
            self.open(tag, Kind::Link(url.to_owned()), raw);
            return end;
        }
        let kind = match tag {
            Tag::B => Kind::Style(Inline::Bold),
            Tag::I => Kind::Style(Inline::Italic),
            Tag::U => Kind::Style(Inline::Underline),
            Tag::S => Kind::Style(Inline::Strike),
            Tag::Quote => Kind::Quote,
            Tag::List => Kind::List {
                ordered: main.is_some(),
            },
            Tag::Table => Kind::Table,
            Tag::Row => Kind::Row,
            Tag::Cell => Kind::Cell { header: false },
            Tag::HeadCell => Kind::Cell { header: true },
            Tag::Size
            | Tag::Color
            | Tag::Font
            | Tag::Left
            | Tag::Right
            | Tag::Center
            | Tag::Justify
            | Tag::P
            | Tag::Spoiler
            | Tag::Cut => Kind::Wrapper,
            Tag::Url | Tag::Video => {
                return self.raw_body(tag, raw, end, |body| {
                    let url = strip_tags(body).trim().to_owned();
                    (!url.is_empty()).then(|| {
                        if is_safe_url(&url) {
                            Node::Atom(Inline::Link {
                                url,
                                text: Vec::new(),
                            })
                        } else {
                            Node::Text(url)
                        }
                    })
                });
            }
            Tag::Img => {
                return self.raw_body(tag, raw, end, |body| {
                    let url = strip_tags(body).trim().to_owned();
                    (!url.is_empty()).then(|| {
                        if is_safe_url(&url) {
                            Node::Atom(Inline::Image {
                                url,
                                alt: String::new(),
                            })
                        } else {
                            Node::Text(url)
                        }
                    })
                });
            }
            Tag::Code => {
                return self.raw_body(tag, raw, end, |body| {
                    // The newlines that put the tags on their own lines are not content.
                    let body = body.strip_prefix('\n').unwrap_or(body);
                    let body = body.strip_suffix('\n').unwrap_or(body);
                    Some(Node::Code(body.to_owned()))
                });
            }
            Tag::User | Tag::Project | Tag::Department => {
                let kind = match tag {
                    Tag::User => MentionKind::User,
                    Tag::Project => MentionKind::Group,
                    _ => MentionKind::Department,
                };
                let id = main.unwrap_or_default().to_owned();
                return self.raw_body(tag, raw, end, |body| {
                    let name = strip_tags(body).trim().to_owned();
                    let name = if name.is_empty() { id.clone() } else { name };
                    Some(Node::Atom(Inline::Mention(Mention {
                        kind,
                        id,
                        name,
                        target: None,
                    })))
                });
            }
            Tag::Disk | Tag::Document => {
                let id = lexed.attr("id").unwrap_or_default().to_owned();
                self.push(Node::Atom(Inline::File {
                    id,
                    name: String::new(),
                }));
                return end;
            }
            Tag::Item => {
                self.item(raw);
                return end;
            }
        };
        self.open(tag, kind, raw);
        end
    }

    fn open(&mut self, tag: Tag, kind: Kind, raw: &str) {
        // A new cell or row ends the previous one, as in HTML.
        match kind {
            Kind::Cell { .. } => self.end_part(
                |k| matches!(k, Kind::Cell { .. }),
                |k| matches!(k, Kind::Row | Kind::Table),
            ),
            Kind::Row => self.end_part(|k| matches!(k, Kind::Row), |k| matches!(k, Kind::Table)),
            _ => {}
        }
        if self.stack.len() > MAX_DEPTH {
            self.dropped[tag as usize] += 1;
            return;
        }
        self.stack.push(Frame {
            tag: Some(tag),
            kind,
            opener: Some(raw.to_owned()),
            children: Vec::new(),
        });
    }

    fn close(&mut self, tag: Tag, raw: &str) {
        if tag == Tag::Item {
            // `[/*]` is optional noise inside lists.
            if !self
                .stack
                .iter()
                .any(|f| matches!(f.kind, Kind::List { .. }))
            {
                self.text(raw);
            }
            return;
        }
        let Some(idx) = self.stack.iter().rposition(|f| f.tag == Some(tag)) else {
            let dropped = &mut self.dropped[tag as usize];
            if *dropped > 0 {
                *dropped -= 1;
            } else {
                self.text(raw);
            }
            return;
        };
        // Styles left open inside an inline element end with it and resume after it; inside a
        // block they just end there. Table parts close implicitly like HTML cells; anything else
        // left open was never properly closed and goes back to text.
        let reopen_after = matches!(
            self.stack[idx].kind,
            Kind::Style(_) | Kind::Wrapper | Kind::Link(_)
        );
        let mut reopen = Vec::new();
        while self.stack.len() > idx + 1 {
            let top = &self.stack[self.stack.len() - 1];
            if top.inline_like() || top.table_part() {
                if reopen_after && top.inline_like() {
                    reopen.push((top.tag, top.kind.clone()));
                }
                self.finish_top();
            } else {
                self.unwind_top();
            }
        }
        self.finish_top();
        for (tag, kind) in reopen.into_iter().rev() {
            self.stack.push(Frame {
                tag,
                kind,
                opener: None,
                children: Vec::new(),
            });
        }
    }

    /// `[*]` starts an item of the innermost list, ending styles still open in the previous item.
    fn item(&mut self, raw: &str) {
        let list = self
            .stack
            .iter()
            .rposition(|f| matches!(f.kind, Kind::List { .. }));
        match list {
            Some(idx) if self.stack[idx + 1..].iter().all(Frame::inline_like) => {
                while self.stack.len() > idx + 1 {
                    self.finish_top();
                }
                self.push(Node::Item);
            }
            _ => self.text(raw),
        }
    }

    /// Close the innermost open `part` unless a `boundary` or a block comes first.
    fn end_part(&mut self, part: fn(&Kind) -> bool, boundary: fn(&Kind) -> bool) {
        let Some(idx) = self
            .stack
            .iter()
            .rposition(|f| part(&f.kind) || boundary(&f.kind))
        else {
            return;
        };
        if part(&self.stack[idx].kind)
            && self.stack[idx + 1..]
                .iter()
                .all(|f| f.inline_like() || f.table_part())
        {
            while self.stack.len() > idx {
                self.finish_top();
            }
        }
    }

    fn finish_top(&mut self) {
        if let Some(frame) = self.stack.pop() {
            self.push(Node::Elem(frame.kind, frame.children));
        }
    }

    fn unwind_top(&mut self) {
        if let Some(frame) = self.stack.pop() {
            if let Some(opener) = frame.opener {
                self.push(Node::Raw(opener));
            }
            for child in frame.children {
                self.push(child);
            }
        }
    }

    /// A tag whose body is taken verbatim up to its closer (`[CODE]`, `[IMG]`, `[USER=…]`, …);
    /// without a closer the opener is literal text.
    fn raw_body(
        &mut self,
        tag: Tag,
        raw: &str,
        end: usize,
        make: impl FnOnce(&str) -> Option<Node>,
    ) -> usize {
        let src = self.src;
        let found = match self.closers[tag as usize] {
            Seen::At(p) if p >= end => Some(p),
            Seen::NoneFrom(q) if end >= q => None,
            _ => {
                let found = find_closer(src, end, tag.name());
                self.closers[tag as usize] = found.map_or(Seen::NoneFrom(end), Seen::At);
                found
            }
        };
        match found {
            Some(close) => {
                if let Some(node) = make(&src[end..close]) {
                    self.push(node);
                }
                close + tag.name().len() + 3
            }
            None => {
                self.text(raw);
                end
            }
        }
    }
}

/// Text of a raw body with any known tags removed (`[URL][B]http://x[/B][/URL]`).
fn strip_tags(body: &str) -> Cow<'_, str> {
    if !body.contains('[') {
        return Cow::Borrowed(body);
    }
    let mut out = String::with_capacity(body.len());
    let mut pos = 0;
    while let Some(off) = body[pos..].find('[') {
        let at = pos + off;
        out.push_str(&body[pos..at]);
        match lex_tag(body, at) {
            Some((_, end)) => pos = end,
            None => {
                out.push('[');
                pos = at + 1;
            }
        }
    }
    out.push_str(&body[pos..]);
    Cow::Owned(out)
}

// ---------------------------------------------------------------------------------------------
// Tree to blocks

/// Content in document order before it is cut into paragraphs.
enum Flow {
    Inline(Inline),
    Newline,
    /// A blank line.
    ParaBreak,
    Block(Block),
}

fn blocks(nodes: Vec<Node>) -> Vec<Block> {
    let mut flow = Vec::new();
    push_flow(nodes, false, &mut flow);
    let mut out = Vec::new();
    let mut para = Vec::new();
    for item in collapse_blank_lines(flow) {
        match item {
            Flow::Inline(inline) => para.push(inline),
            Flow::Newline => para.push(Inline::LineBreak),
            Flow::ParaBreak => flush_paragraph(&mut para, &mut out),
            Flow::Block(block) => {
                flush_paragraph(&mut para, &mut out);
                out.push(block);
            }
        }
    }
    flush_paragraph(&mut para, &mut out);
    out
}

fn flush_paragraph(para: &mut Vec<Inline>, out: &mut Vec<Block>) {
    let inlines = trim_paragraph(std::mem::take(para));
    if !inlines.is_empty() {
        out.push(Block::Paragraph(inlines));
    }
}

fn push_flow(nodes: Vec<Node>, in_link: bool, out: &mut Vec<Flow>) {
    for node in nodes {
        match node {
            Node::Text(text) => push_text_flow(&text, in_link, out),
            Node::Raw(text) => out.push(Flow::Inline(Inline::Text(text))),
            // Links cannot nest: an inner link shows as its text.
            Node::Atom(Inline::Link { url, text }) if in_link => {
                if text.is_empty() {
                    out.push(Flow::Inline(Inline::Text(url)));
                } else {
                    out.extend(text.into_iter().map(Flow::Inline));
                }
            }
            Node::Atom(inline) => out.push(Flow::Inline(inline)),
            Node::Code(text) => out.push(Flow::Block(Block::Code(text))),
            Node::Item => out.push(Flow::Inline(Inline::Text("[*]".to_owned()))),
            Node::Elem(kind, children) => push_elem(kind, children, in_link, out),
        }
    }
}

fn push_elem(kind: Kind, children: Vec<Node>, in_link: bool, out: &mut Vec<Flow>) {
    match kind {
        // Table parts outside a table only carry their text.
        Kind::Root | Kind::Wrapper | Kind::Row | Kind::Cell { .. } => {
            push_flow(children, in_link, out)
        }
        Kind::Style(wrap) => {
            let mut inner = Vec::new();
            push_flow(children, in_link, &mut inner);
            wrap_runs(inner, out, wrap);
        }
        Kind::Link(url) if !in_link && is_safe_url(&url) => {
            let mut inner = Vec::new();
            push_flow(children, true, &mut inner);
            if inner.is_empty() {
                out.push(Flow::Inline(Inline::Link {
                    url,
                    text: Vec::new(),
                }));
            } else {
                wrap_runs(inner, out, |text| Inline::Link {
                    url: url.clone(),
                    text,
                });
            }
        }
        Kind::Link(_) => push_flow(children, in_link, out),
        Kind::Quote => out.push(Flow::Block(Block::Quote(blocks(children)))),
        Kind::List { ordered } => {
            let mut items: Vec<Vec<Node>> = vec![Vec::new()];
            for node in children {
                match node {
                    Node::Item => items.push(Vec::new()),
                    other => {
                        if let Some(item) = items.last_mut() {
                            item.push(other);
                        }
                    }
                }
            }
            // Text before the first `[*]` is normally blank; if not, it is kept as an item.
            let items = items
                .into_iter()
                .map(blocks)
                .filter(|b| !b.is_empty())
                .collect();
            out.push(Flow::Block(Block::List { ordered, items }));
        }
        Kind::Table => {
            let inlines = table(children);
            if !inlines.is_empty() {
                out.push(Flow::Block(Block::Paragraph(inlines)));
            }
        }
    }
}

/// Apply an inline wrapper (style, link) to each run of inline content. Blocks and blank lines
/// inside it split the wrapper; line breaks at a run's edges move outside so that blank lines
/// across a tag boundary still separate paragraphs.
fn wrap_runs(inner: Vec<Flow>, out: &mut Vec<Flow>, wrap: impl Fn(Vec<Inline>) -> Inline) {
    let mut run = Vec::new();
    for item in collapse_blank_lines(inner) {
        match item {
            Flow::Inline(inline) => run.push(inline),
            Flow::Newline => run.push(Inline::LineBreak),
            other => {
                emit_run(&mut run, out, &wrap);
                out.push(other);
            }
        }
    }
    emit_run(&mut run, out, &wrap);
}

fn emit_run(run: &mut Vec<Inline>, out: &mut Vec<Flow>, wrap: &impl Fn(Vec<Inline>) -> Inline) {
    let is_break = |i: &Inline| matches!(i, Inline::LineBreak);
    let lead = run.iter().take_while(|i| is_break(i)).count();
    let trail = if lead == run.len() {
        0
    } else {
        run.iter().rev().take_while(|i| is_break(i)).count()
    };
    out.extend((0..lead).map(|_| Flow::Newline));
    let body: Vec<Inline> = run.drain(..).skip(lead).collect();
    let keep = body.len() - trail;
    if keep > 0 {
        out.push(Flow::Inline(wrap(body.into_iter().take(keep).collect())));
    }
    out.extend((0..trail).map(|_| Flow::Newline));
}

/// Turn newline, (blank text,) newline sequences into paragraph breaks.
fn collapse_blank_lines(items: Vec<Flow>) -> Vec<Flow> {
    let mut out = Vec::with_capacity(items.len());
    let mut it = items.into_iter().peekable();
    while let Some(item) = it.next() {
        if !matches!(item, Flow::Newline) {
            out.push(item);
            continue;
        }
        let mut blank = false;
        let mut indent = Vec::new();
        loop {
            match it.peek() {
                Some(Flow::Newline) => {
                    blank = true;
                    indent.clear();
                    it.next();
                }
                Some(Flow::Inline(Inline::Text(t))) if t.trim().is_empty() => {
                    indent.extend(it.next());
                }
                _ => break,
            }
        }
        if blank {
            // Indentation of the next paragraph's first line is not content.
            out.push(Flow::ParaBreak);
        } else {
            out.push(Flow::Newline);
            out.extend(indent);
        }
    }
    out
}

fn push_text_flow(text: &str, in_link: bool, out: &mut Vec<Flow>) {
    for (k, line) in text.split('\n').enumerate() {
        if k > 0 {
            out.push(Flow::Newline);
        }
        if line.is_empty() {
            continue;
        }
        if in_link {
            out.push(Flow::Inline(Inline::Text(line.to_owned())));
            continue;
        }
        let mut from = 0;
        while let Some((start, end)) = find_bare_url(line, from) {
            if start > from {
                out.push(Flow::Inline(Inline::Text(line[from..start].to_owned())));
            }
            out.push(Flow::Inline(Inline::Link {
                url: line[start..end].to_owned(),
                text: Vec::new(),
            }));
            from = end;
        }
        if from < line.len() {
            out.push(Flow::Inline(Inline::Text(line[from..].to_owned())));
        }
    }
}

/// The next bare `http(s)://` URL in `line` at or after `from`: it starts at a word boundary, runs
/// to whitespace or a bracket, and sheds trailing punctuation that belongs to the sentence.
fn find_bare_url(line: &str, from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while let Some(off) = line[i..].find(['h', 'H']) {
        let start = i + off;
        i = start + 1;
        let tail = &line[start..];
        let scheme = ["https://", "http://"].into_iter().find(|s| {
            tail.get(..s.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(s))
        });
        let Some(scheme) = scheme else { continue };
        let at_boundary = line[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric());
        let body = start + scheme.len();
        // The host must start with a letter or digit; checking it first keeps the scan linear.
        if !at_boundary || !line[body..].starts_with(char::is_alphanumeric) {
            continue;
        }
        let stop = line[body..]
            .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | '[' | ']'))
            .map_or(line.len(), |o| body + o);
        return Some((start, start + trim_url_end(&line[start..stop])));
    }
    None
}

fn trim_url_end(url: &str) -> usize {
    let opened = url.matches('(').count();
    let mut closed = url.matches(')').count();
    let mut end = url.len();
    while let Some(c) = url[..end].chars().next_back() {
        let trailing = match c {
            '.' | ',' | ';' | ':' | '!' | '?' | '\'' | '"' | '*' => true,
            // Keep the `)` of `…/Foo_(bar)`, drop the one closing a sentence's parenthesis.
            ')' if closed > opened => {
                closed -= 1;
                true
            }
            _ => false,
        };
        if !trailing {
            break;
        }
        end -= c.len_utf8();
    }
    end
}

/// A table becomes one paragraph line per row, cells joined with ` | `, header cells bold.
fn table(children: Vec<Node>) -> Vec<Inline> {
    let mut rows = Vec::new();
    let mut loose = Vec::new();
    for node in children {
        match node {
            Node::Elem(Kind::Row, cells) => {
                flush_loose(&mut loose, &mut rows, row);
                rows.push(row(cells));
            }
            node if is_blank(&node) => {}
            node => loose.push(node),
        }
    }
    flush_loose(&mut loose, &mut rows, row);

    let mut out = Vec::new();
    for cells in rows.into_iter().filter(|r| !r.is_empty()) {
        if !out.is_empty() {
            out.push(Inline::LineBreak);
        }
        out.extend(cells);
    }
    out
}

fn row(children: Vec<Node>) -> Vec<Inline> {
    let mut cells = Vec::new();
    let mut loose = Vec::new();
    for node in children {
        match node {
            Node::Elem(Kind::Cell { header }, content) => {
                flush_loose(&mut loose, &mut cells, |n| cell(n, false));
                cells.push(cell(content, header));
            }
            node if is_blank(&node) => {}
            node => loose.push(node),
        }
    }
    flush_loose(&mut loose, &mut cells, |n| cell(n, false));

    let mut out = Vec::new();
    for (k, content) in cells.into_iter().enumerate() {
        if k > 0 {
            out.push(Inline::Text(" | ".to_owned()));
        }
        out.extend(content);
    }
    normalize_inlines(out)
}

fn flush_loose<T>(loose: &mut Vec<Node>, out: &mut Vec<T>, make: impl Fn(Vec<Node>) -> T) {
    if !loose.is_empty() {
        out.push(make(std::mem::take(loose)));
    }
}

/// A cell's content on one line: breaks become spaces, nested blocks their plain text.
fn cell(children: Vec<Node>, header: bool) -> Vec<Inline> {
    let mut flow = Vec::new();
    push_flow(children, false, &mut flow);
    let inlines = flow
        .into_iter()
        .map(|item| match item {
            Flow::Inline(inline) => inline,
            Flow::Newline | Flow::ParaBreak => Inline::Text(" ".to_owned()),
            Flow::Block(block) => {
                Inline::Text(Doc::new(vec![block]).plain_text().replace('\n', " "))
            }
        })
        .collect();
    let inlines = trim_paragraph(inlines);
    if header && !inlines.is_empty() {
        vec![Inline::Bold(inlines)]
    } else {
        inlines
    }
}

fn is_blank(node: &Node) -> bool {
    matches!(node, Node::Text(t) if t.trim().is_empty())
}

// ---------------------------------------------------------------------------------------------
// Rendering

fn render_blocks(blocks: &[Block], out: &mut String) {
    let mut prev_paragraph = false;
    for (k, block) in blocks.iter().enumerate() {
        let paragraph = matches!(block, Block::Paragraph(_));
        if k > 0 {
            // Block tags separate paragraphs by themselves; a blank line is only needed between
            // two paragraphs.
            out.push_str(if paragraph && prev_paragraph {
                "\n\n"
            } else {
                "\n"
            });
        }
        prev_paragraph = paragraph;
        match block {
            Block::Paragraph(inlines) => render_inlines(inlines, false, out),
            Block::Quote(inner) => {
                out.push_str("[QUOTE]");
                render_blocks(inner, out);
                out.push_str("[/QUOTE]");
            }
            Block::Code(text) => render_code(text, out),
            Block::List { ordered, items } => {
                out.push_str(if *ordered { "[LIST=1]" } else { "[LIST]" });
                for item in items {
                    out.push_str("\n[*]");
                    render_blocks(item, out);
                }
                out.push_str("\n[/LIST]");
            }
        }
    }
}

fn render_code(text: &str, out: &mut String) {
    out.push_str("[CODE]");
    // The parser drops one newline after `[CODE]` and one before `[/CODE]`.
    if text.starts_with('\n') {
        out.push('\n');
    }
    let mut rest = text;
    while let Some(at) = rest.find('[') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        if rest
            .get(..6)
            .is_some_and(|t| t.eq_ignore_ascii_case("/code]"))
        {
            out.push(ZWSP);
        }
    }
    out.push_str(rest);
    if text.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("[/CODE]");
}

fn render_inlines(inlines: &[Inline], in_link: bool, out: &mut String) {
    for inline in inlines {
        match inline {
            Inline::Text(text) => push_text(text, out),
            Inline::Bold(c) => render_wrapped("B", c, in_link, out),
            Inline::Italic(c) => render_wrapped("I", c, in_link, out),
            Inline::Underline(c) => render_wrapped("U", c, in_link, out),
            Inline::Strike(c) => render_wrapped("S", c, in_link, out),
            Inline::Code(text) if !text.is_empty() => {
                out.push_str("[FONT=");
                out.push_str(CODE_FONT);
                out.push(']');
                push_text(text, out);
                out.push_str("[/FONT]");
            }
            Inline::Code(_) => {}
            Inline::Link { url, text } => {
                if in_link || !is_safe_url(url) {
                    if text.is_empty() {
                        push_text(url, out);
                    } else {
                        render_inlines(text, in_link, out);
                    }
                } else if text.is_empty() {
                    out.push_str("[URL]");
                    push_url(url, out);
                    out.push_str("[/URL]");
                } else {
                    out.push_str("[URL=");
                    push_url(url, out);
                    out.push(']');
                    render_inlines(text, true, out);
                    out.push_str("[/URL]");
                }
            }
            // A linked person: a feed mention, which notifies them.
            Inline::Mention(Mention {
                kind: MentionKind::User,
                target: Some(user),
                name,
                ..
            }) if !user.is_empty() && user.bytes().all(|b| b.is_ascii_digit()) => {
                out.push_str(&format!("[USER={user}]"));
                push_text(name, out);
                out.push_str("[/USER]");
            }
            Inline::Mention(m) => push_text(&mention_label(m), out),
            Inline::Image { url, alt } => {
                if is_safe_url(url) {
                    out.push_str("[IMG]");
                    push_url(url, out);
                    out.push_str("[/IMG]");
                } else {
                    push_text(alt, out);
                }
            }
            Inline::File { name, .. } => {
                if name.is_empty() {
                    out.push_str("[file]");
                } else {
                    push_text(name, out);
                }
            }
            Inline::LineBreak => out.push('\n'),
        }
    }
}

fn render_wrapped(tag: &str, children: &[Inline], in_link: bool, out: &mut String) {
    out.push('[');
    out.push_str(tag);
    out.push(']');
    render_inlines(children, in_link, out);
    out.push_str("[/");
    out.push_str(tag);
    out.push(']');
}

/// Text as written, except that a `[` starting something the feed would take for a tag gets a
/// zero-width space after it.
fn push_text(text: &str, out: &mut String) {
    let mut rest = 0;
    for (at, _) in text.match_indices('[') {
        out.push_str(&text[rest..=at]);
        rest = at + 1;
        if lex_tag(text, at).is_some() || text[rest..].starts_with(ZWSP) {
            out.push(ZWSP);
        }
    }
    out.push_str(&text[rest..]);
}

/// Characters that would end the tag or its attribute are percent-encoded.
fn push_url(url: &str, out: &mut String) {
    for c in url.trim().chars() {
        match c {
            '[' => out.push_str("%5B"),
            ']' => out.push_str("%5D"),
            ' ' => out.push_str("%20"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
}

fn mention_label(m: &Mention) -> String {
    let name = if m.name.is_empty() { &m.id } else { &m.name };
    match m.kind {
        MentionKind::User | MentionKind::Broadcast if !name.starts_with('@') => {
            format!("@{name}")
        }
        MentionKind::Channel if !name.starts_with('#') => format!("#{name}"),
        _ => name.clone(),
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

    fn link(url: &str) -> Inline {
        Inline::Link {
            url: url.to_owned(),
            text: Vec::new(),
        }
    }

    fn one(input: &str) -> Vec<Inline> {
        match parse(input).blocks.as_slice() {
            [Block::Paragraph(inlines)] => inlines.clone(),
            other => panic!("expected one paragraph for {input:?}, got {other:?}"),
        }
    }

    #[test]
    fn tag_table_matches_the_enum() {
        for (k, (name, tag)) in TAGS.iter().enumerate() {
            assert_eq!((*tag as usize, tag.name()), (k, *name));
        }
    }

    #[test]
    fn styles_any_case() {
        assert_eq!(
            one("[b]bold[/B] [I]it[/i] [U]u[/U] [s]s[/S]"),
            vec![
                Inline::Bold(vec![text("bold")]),
                text(" "),
                Inline::Italic(vec![text("it")]),
                text(" "),
                Inline::Underline(vec![text("u")]),
                text(" "),
                Inline::Strike(vec![text("s")]),
            ]
        );
    }

    #[test]
    fn links() {
        assert_eq!(
            one("[URL=https://a.example/?x=1&y=2]A & B[/URL]"),
            vec![Inline::Link {
                url: "https://a.example/?x=1&y=2".into(),
                text: vec![text("A & B")]
            }]
        );
        assert_eq!(
            one(r#"[url="https://a.example"]q[/url]"#),
            vec![Inline::Link {
                url: "https://a.example".into(),
                text: vec![text("q")]
            }]
        );
        assert_eq!(
            one("[URL]https://a.example/p[/URL]"),
            vec![link("https://a.example/p")]
        );
        assert_eq!(
            one("[URL=javascript:alert(1)]x[/URL]"),
            vec![text("x")],
            "scripts never become links"
        );
    }

    #[test]
    fn bare_urls_are_linked_without_trailing_punctuation() {
        assert_eq!(
            one("See https://a.example/x?q=1, then (http://b.example/wiki/Foo_(bar)). Done"),
            vec![
                text("See "),
                link("https://a.example/x?q=1"),
                text(", then ("),
                link("http://b.example/wiki/Foo_(bar)"),
                text("). Done"),
            ]
        );
        assert_eq!(one("xhttp://a.example"), vec![text("xhttp://a.example")]);
        assert_eq!(one("http:// nothing"), vec![text("http:// nothing")]);
    }

    #[test]
    fn media_mentions_and_files() {
        assert_eq!(
            one(
                "[IMG width=100 height=50]https://a.example/i.png[/IMG][VIDEO TYPE=YOUTUBE]https://v.example/1[/VIDEO]"
            ),
            vec![
                Inline::Image {
                    url: "https://a.example/i.png".into(),
                    alt: String::new()
                },
                link("https://v.example/1"),
            ]
        );
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
                "[USER=123]Ivan Petrov[/USER], [PROJECT=12]Sales[/PROJECT] [DEPARTMENT=5]IT[/DEPARTMENT]"
            ),
            vec![
                mention(MentionKind::User, "123", "Ivan Petrov"),
                text(", "),
                mention(MentionKind::Group, "12", "Sales"),
                text(" "),
                mention(MentionKind::Department, "5", "IT"),
            ]
        );
        let file = |id: &str| Inline::File {
            id: id.into(),
            name: String::new(),
        };
        assert_eq!(
            one("[DISK FILE ID=n505][disk file id=506 width=10 height=20] [DOCUMENT ID=7]"),
            vec![file("n505"), file("506"), text(" "), file("7")]
        );
    }

    #[test]
    fn blocks_split_paragraphs() {
        let doc = parse("before[QUOTE=Ivan]q[/QUOTE]after\n[CODE]\n[B]x[/B]\n  y\n[/CODE]\nend");
        assert_eq!(
            doc.blocks,
            vec![
                para(vec![text("before")]),
                Block::Quote(vec![para(vec![text("q")])]),
                para(vec![text("after")]),
                Block::Code("[B]x[/B]\n  y".into()),
                para(vec![text("end")]),
            ]
        );
    }

    #[test]
    fn lists_nest() {
        let doc = parse("[LIST]\n[*]a\n[*]b[LIST=1][*]c[*]d[/LIST]\n[/LIST][list=a][*]e[/list]");
        let item = |s: &str| vec![para(vec![text(s)])];
        assert_eq!(
            doc.blocks,
            vec![
                Block::List {
                    ordered: false,
                    items: vec![
                        item("a"),
                        vec![
                            para(vec![text("b")]),
                            Block::List {
                                ordered: true,
                                items: vec![item("c"), item("d")]
                            }
                        ],
                    ]
                },
                Block::List {
                    ordered: true,
                    items: vec![item("e")]
                },
            ]
        );
    }

    #[test]
    fn newlines_and_paragraphs() {
        let doc = parse("a  \r\nb\r\n \r\n\n  c [B]d\n\ne[/B]");
        assert_eq!(
            doc.blocks,
            vec![
                para(vec![text("a  "), Inline::LineBreak, text("b")]),
                para(vec![text("c "), Inline::Bold(vec![text("d")])]),
                para(vec![Inline::Bold(vec![text("e")])]),
            ]
        );
    }

    #[test]
    fn wrappers_drop_and_tables_flatten() {
        assert_eq!(
            one(
                "[SIZE=14]big[/SIZE] [COLOR=#ff0000]red[/COLOR] [FONT=Times New Roman]f[/FONT] [CENTER][P]c[/P][/CENTER] #tag"
            ),
            vec![text("big red f c #tag")]
        );
        let doc = parse(
            "[TABLE]\n[TR][TH]Name[/TH][TH]Qty[/TH][/TR]\n[TR][TD]Apples[/TD][TD]3[/TD][/TR]\n[TR][TD]Pears[TD]5[/TR][/TABLE]",
        );
        assert_eq!(
            doc.blocks,
            vec![para(vec![
                Inline::Bold(vec![text("Name")]),
                text(" | "),
                Inline::Bold(vec![text("Qty")]),
                Inline::LineBreak,
                text("Apples | 3"),
                Inline::LineBreak,
                text("Pears | 5"),
            ])]
        );
    }

    #[test]
    fn malformed_markup_stays_literal() {
        assert_eq!(
            one("[1] [sic] [b [/I] [bold]x"),
            vec![text("[1] [sic] [b [/I] [bold]x")]
        );
        assert_eq!(one("[B]never closed"), vec![text("[B]never closed")]);
        assert_eq!(
            one("[URL=https://a.example]x [B]y"),
            vec![text("[URL=https://a.example]x [B]y")]
        );
        assert_eq!(one("[CODE]x"), vec![text("[CODE]x")]);
        assert_eq!(
            one("[USER]x[/USER] [*] [/*]"),
            vec![text("[USER]x[/USER] [*] [/*]")]
        );
        assert_eq!(
            parse("[QUOTE][B]x[/QUOTE]").blocks,
            vec![Block::Quote(vec![para(vec![Inline::Bold(vec![text(
                "x"
            )])])])]
        );
        assert_eq!(
            parse("[QUOTE][LIST][*]x[/QUOTE]").blocks,
            vec![Block::Quote(vec![para(vec![text("[LIST][*]x")])])]
        );
    }

    #[test]
    fn mismatched_nesting_is_repaired() {
        assert_eq!(
            one("[B][I]x[/B][/I]"),
            vec![Inline::Bold(vec![Inline::Italic(vec![text("x")])])]
        );
        assert_eq!(
            one("[B]a[I]b[/B]c[/I]"),
            vec![
                Inline::Bold(vec![text("a"), Inline::Italic(vec![text("b")])]),
                Inline::Italic(vec![text("c")]),
            ]
        );
    }

    #[test]
    fn deep_nesting_is_flattened() {
        let n = 40;
        let input = format!("{}x{}", "[B]".repeat(n), "[/B]".repeat(n));
        let mut inlines = one(&input);
        let mut depth = 0;
        while let [Inline::Bold(inner)] = inlines.as_slice() {
            depth += 1;
            inlines = inner.clone();
        }
        assert_eq!((depth, inlines), (MAX_DEPTH, vec![text("x")]));
    }

    #[test]
    fn render_uses_upper_case_tags() {
        let doc = Doc::new(vec![
            para(vec![
                Inline::Bold(vec![text("b")]),
                Inline::Italic(vec![text("i")]),
                Inline::Underline(vec![text("u")]),
                Inline::Strike(vec![text("s")]),
                Inline::LineBreak,
                Inline::Link {
                    url: "https://a.example/[x]".into(),
                    text: vec![text("t")],
                },
                link("https://b.example"),
                Inline::Image {
                    url: "https://c.example/i.png".into(),
                    alt: "alt".into(),
                },
                Inline::Code("x[B]".into()),
            ]),
            para(vec![
                Inline::Mention(Mention {
                    kind: MentionKind::User,
                    id: "U1".into(),
                    name: "Anna".into(),
                    target: None,
                }),
                text(" "),
                Inline::Mention(Mention {
                    kind: MentionKind::Channel,
                    id: "C1".into(),
                    name: "general".into(),
                    target: None,
                }),
                text(" "),
                Inline::File {
                    id: "F1".into(),
                    name: String::new(),
                },
                text(" "),
                Inline::File {
                    id: "F2".into(),
                    name: "a.pdf".into(),
                },
            ]),
            Block::Quote(vec![para(vec![text("q")])]),
            Block::Code("a[/code]b".into()),
            Block::List {
                ordered: true,
                items: vec![vec![para(vec![text("one")])]],
            },
        ]);
        assert_eq!(
            render(&doc),
            "[B]b[/B][I]i[/I][U]u[/U][S]s[/S]\n[URL=https://a.example/%5Bx%5D]t[/URL]\
             [URL]https://b.example[/URL][IMG]https://c.example/i.png[/IMG]\
             [FONT=Courier New]x[\u{200B}B][/FONT]\n\n@Anna #general [file] a.pdf\n\
             [QUOTE]q[/QUOTE]\n[CODE]a[\u{200B}/code]b[/CODE]\n[LIST=1]\n[*]one\n[/LIST]"
        );
    }

    #[test]
    fn literal_tags_in_text_survive_a_round_trip() {
        let doc = Doc::paragraph(vec![text("use [b]bold[/b], [1] and [\u{200B}x")]);
        let bbcode = render(&doc);
        assert_eq!(
            bbcode,
            "use [\u{200B}b]bold[\u{200B}/b], [1] and [\u{200B}\u{200B}x"
        );
        assert_eq!(parse(&bbcode), doc);
    }

    #[test]
    fn code_edges_round_trip() {
        for code in ["", "\n", "\nx\n", "x\n\n", "  indented"] {
            let doc = Doc::new(vec![Block::Code(code.into())]);
            assert_eq!(parse(&render(&doc)), doc, "{code:?}");
        }
    }
}
