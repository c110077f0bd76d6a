//! Text helpers: Slack's three-character escaping, the "human client" converter that turns
//! typed text into the `text` + `rich_text` pair Slack stores, base64 for cursors, and
//! deterministic identifiers.

use serde_json::{Value, json};

/// Escapes exactly `&`, `<`, `>` — the only characters Slack encodes in `text` (contract §6).
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// What a typed word resolves to when a human client sends it.
pub(crate) enum Mention {
    User(String),
    Channel { id: String, name: String },
}

/// Converts text as a person types it in a Slack client into the stored `text` (escaped, with
/// `<…>` control sequences) and the `rich_text` block (raw text leaves). `lookup` resolves
/// `@name`/`@U…` and `#channel` words against the workspace.
pub(crate) fn human_format(
    typed: &str,
    block_id: &str,
    lookup: impl Fn(&str) -> Option<Mention>,
) -> (String, Value) {
    let mut text = String::new();
    let mut elements: Vec<Value> = Vec::new();
    let mut plain = String::new();

    for seg in split_labelled_links(typed) {
        match seg {
            Segment::Link { label, url } => {
                flush(&mut plain, &mut elements);
                text.push_str(&format!("<{url}|{}>", escape(label)));
                elements.push(json!({"type": "link", "url": url, "text": label}));
            }
            Segment::Plain(chunk) => {
                format_words(chunk, &lookup, &mut text, &mut plain, &mut elements);
            }
        }
    }
    flush(&mut plain, &mut elements);
    let block = json!({
        "type": "rich_text",
        "block_id": block_id,
        "elements": [{"type": "rich_text_section", "elements": elements}],
    });
    (text, block)
}

fn flush(plain: &mut String, elements: &mut Vec<Value>) {
    if !plain.is_empty() {
        elements.push(json!({"type": "text", "text": std::mem::take(plain)}));
    }
}

fn format_words(
    chunk: &str,
    lookup: &impl Fn(&str) -> Option<Mention>,
    text: &mut String,
    plain: &mut String,
    elements: &mut Vec<Value>,
) {
    for piece in split_keep_whitespace(chunk) {
        if piece.chars().all(char::is_whitespace) {
            text.push_str(piece);
            plain.push_str(piece);
            continue;
        }
        // Trailing sentence punctuation is not part of a link or mention.
        let core = if is_emoji_word(piece) {
            piece
        } else {
            piece.trim_end_matches(['.', ',', ';', '!', '?', ')', ':', '\'', '"'])
        };
        let tail = &piece[core.len()..];
        match classify(core, lookup) {
            Some((encoded, element)) => {
                flush(plain, elements);
                text.push_str(&encoded);
                elements.push(element);
                text.push_str(&escape(tail));
                plain.push_str(tail);
            }
            None => {
                text.push_str(&escape(piece));
                plain.push_str(piece);
            }
        }
    }
}

enum Segment<'a> {
    Plain(&'a str),
    Link { label: &'a str, url: &'a str },
}

/// Finds `[label](https://…)`, which Slack's composer turns into a labelled link.
fn split_labelled_links(s: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let parsed = after.find("](").and_then(|close| {
            let label = &after[..close];
            let tail = &after[close + 2..];
            let end = tail.find(')')?;
            let url = &tail[..end];
            let ok = !label.is_empty()
                && !label.contains(['[', ']', '\n'])
                && (url.starts_with("https://") || url.starts_with("http://"))
                && !url.contains(char::is_whitespace)
                && !url.contains(['<', '>', '|']);
            ok.then_some((label, url, open + 1 + close + 2 + end + 1))
        });
        match parsed {
            Some((label, url, consumed)) => {
                if open > 0 {
                    out.push(Segment::Plain(&rest[..open]));
                }
                out.push(Segment::Link { label, url });
                rest = &rest[consumed..];
            }
            None => {
                out.push(Segment::Plain(&rest[..open + 1]));
                rest = &rest[open + 1..];
            }
        }
    }
    if !rest.is_empty() {
        out.push(Segment::Plain(rest));
    }
    out
}

fn classify(word: &str, lookup: &impl Fn(&str) -> Option<Mention>) -> Option<(String, Value)> {
    if word.is_empty() {
        return None;
    }
    if (word.starts_with("https://") || word.starts_with("http://")) && word.len() > 8 {
        if word.contains(['<', '>', '|']) {
            return None;
        }
        return Some((format!("<{word}>"), json!({"type": "link", "url": word})));
    }
    if let Some(rest) = word.strip_prefix('@') {
        if let Some(range) = ["here", "channel", "everyone"].iter().find(|r| **r == rest) {
            return Some((
                format!("<!{range}>"),
                json!({"type": "broadcast", "range": range}),
            ));
        }
        if let Some(Mention::User(id)) = lookup(word) {
            return Some((format!("<@{id}>"), json!({"type": "user", "user_id": id})));
        }
        return None;
    }
    if word.starts_with('#') {
        if let Some(Mention::Channel { id, name }) = lookup(word) {
            return Some((
                format!("<#{id}|{name}>"),
                json!({"type": "channel", "channel_id": id}),
            ));
        }
        return None;
    }
    if is_emoji_word(word) {
        let name = &word[1..word.len() - 1];
        let mut el = json!({"type": "emoji", "name": name});
        if let Some(u) = emoji_unicode(name) {
            el["unicode"] = json!(u);
        }
        // Emoji stay as `:shortcode:` in `text`.
        return Some((word.to_owned(), el));
    }
    if is_email(word) {
        let esc = escape(word);
        return Some((
            format!("<mailto:{esc}|{esc}>"),
            json!({"type": "link", "url": format!("mailto:{word}"), "text": word}),
        ));
    }
    None
}

fn is_emoji_word(w: &str) -> bool {
    w.len() > 2
        && w.starts_with(':')
        && w.ends_with(':')
        && w[1..w.len() - 1]
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_+-".contains(c))
}

fn is_email(w: &str) -> bool {
    let Some((local, domain)) = w.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._%+-@".contains(c))
}

fn emoji_unicode(name: &str) -> Option<&'static str> {
    Some(match name {
        "smile" => "1f604",
        "+1" | "thumbsup" => "1f44d",
        "heart" => "2764-fe0f",
        "tada" => "1f389",
        "white_check_mark" => "2705",
        "eyes" => "1f440",
        "joy" => "1f602",
        _ => return None,
    })
}

fn split_keep_whitespace(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_ws: Option<bool> = None;
    for (i, c) in s.char_indices() {
        let ws = c.is_whitespace();
        if let Some(prev) = in_ws
            && prev != ws
        {
            out.push(&s[start..i]);
            start = i;
        }
        in_ws = Some(ws);
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub(crate) fn b64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub(crate) fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// Seeded source of Slack-shaped identifiers, so a run with the same seed and call order
/// produces the same ids.
pub(crate) struct Ids {
    rng: fastrand::Rng,
}

impl Ids {
    pub(crate) fn new(seed: u64) -> Self {
        Ids {
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    pub(crate) fn uuid(&mut self) -> String {
        let hi = self.rng.u64(..);
        let lo = self.rng.u64(..);
        // RFC 4122 version 4, variant 1 bits, like the UUIDs Slack uses for envelope ids.
        let hi = (hi & 0xffff_ffff_ffff_0fff) | 0x4000;
        let lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            hi >> 32,
            (hi >> 16) & 0xffff,
            hi & 0xffff,
            lo >> 48,
            lo & 0xffff_ffff_ffff
        )
    }

    fn alnum(&mut self, len: usize) -> String {
        const A: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
        (0..len)
            .map(|_| char::from(A[self.rng.usize(..A.len())]))
            .collect()
    }

    pub(crate) fn event_id(&mut self) -> String {
        format!("Ev{}", self.alnum(10))
    }

    pub(crate) fn block_id(&mut self) -> String {
        const A: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        (0..4)
            .map(|_| char::from(A[self.rng.usize(..A.len())]))
            .collect()
    }

    pub(crate) fn token(&mut self, len: usize) -> String {
        self.alnum(len).to_lowercase()
    }

    pub(crate) fn f64(&mut self) -> f64 {
        self.rng.f64()
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.rng.usize(..n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for s in ["", "a", "ab", "abc", "next_ts:1700000000000100"] {
            let e = b64_encode(s.as_bytes());
            assert_eq!(b64_decode(&e).as_deref(), Some(s.as_bytes()));
        }
        assert_eq!(
            b64_encode(b"next_ts:1512085861000543"),
            "bmV4dF90czoxNTEyMDg1ODYxMDAwNTQz"
        );
        assert!(b64_decode("!!").is_none());
    }

    #[test]
    fn human_text_is_escaped_and_linked() {
        let (text, block) = human_format("a < b & c https://x.y.", "b1", |_| None);
        assert_eq!(text, "a &lt; b &amp; c <https://x.y>.");
        assert_eq!(
            block["elements"][0]["elements"],
            json!([
                {"type": "text", "text": "a < b & c "},
                {"type": "link", "url": "https://x.y"},
                {"type": "text", "text": "."}
            ])
        );
    }

    #[test]
    fn human_mentions_emoji_and_mail() {
        let lookup = |w: &str| match w {
            "@anna" => Some(Mention::User("U1".into())),
            "#feed" => Some(Mention::Channel {
                id: "C1".into(),
                name: "feed".into(),
            }),
            _ => None,
        };
        let (text, _) = human_format("hi @anna in #feed :smile: @here mail a@b.co", "b", lookup);
        assert_eq!(
            text,
            "hi <@U1> in <#C1|feed> :smile: <!here> mail <mailto:a@b.co|a@b.co>"
        );
    }

    #[test]
    fn labelled_links() {
        let (text, block) =
            human_format("see [the <post>](https://b.io/p?a=1&b=2) now", "b", |_| {
                None
            });
        assert_eq!(text, "see <https://b.io/p?a=1&b=2|the &lt;post&gt;> now");
        assert_eq!(
            block["elements"][0]["elements"][1],
            json!({"type": "link", "url": "https://b.io/p?a=1&b=2", "text": "the <post>"})
        );
        let (text, _) = human_format("[not a link] (x)", "b", |_| None);
        assert_eq!(text, "[not a link] (x)");
    }

    #[test]
    fn uuids_are_v4_shaped() {
        let mut ids = Ids::new(7);
        let u = ids.uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(ids.event_id().starts_with("Ev"));
    }
}
