//! PHP-flavoured values: ordered arrays with PHP key semantics, PHP's loose casts,
//! and a `json_encode` writer that reproduces what Bitrix24 puts on the wire.
//!
//! Request parameters and response payloads both use [`Value`], because on the real
//! server both are PHP arrays: a JSON list and a PHP `parse_str` result are the same
//! thing, and the list-vs-object decision is only made when encoding.

use std::fmt::{self, Write as _};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A PHP value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Arr(Arr),
}

/// A PHP array: insertion-ordered, string-keyed (PHP's integer keys are stored as their
/// canonical decimal form, which is exactly how PHP compares them).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Arr {
    entries: Vec<(String, Value)>,
}

impl Arr {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// PHP `$a[$key] = $value`: replaces in place, otherwise appends.
    pub(crate) fn insert(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// PHP `$a[] = $value`.
    pub(crate) fn push(&mut self, value: Value) {
        let key = self.next_index().to_string();
        self.entries.push((key, value));
    }

    pub(crate) fn remove(&mut self, key: &str) -> Option<Value> {
        let pos = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(pos).1)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Value> {
        self.entries.iter().map(|(_, v)| v)
    }

    /// `json_encode` emits a JSON list only for keys exactly `0..n-1` in order.
    pub(crate) fn is_list(&self) -> bool {
        self.entries
            .iter()
            .enumerate()
            .all(|(i, (k, _))| canonical_int(k) == Some(i as i64))
    }

    /// PHP's next free integer key.
    fn next_index(&self) -> i64 {
        self.entries
            .iter()
            .filter_map(|(k, _)| canonical_int(k))
            .filter(|i| *i >= 0)
            .max()
            .map_or(0, |m| m.saturating_add(1))
    }

    /// The array under `key`, replacing any scalar there (PHP does the same when a
    /// request has both `a=1` and `a[b]=2`).
    pub(crate) fn child_arr(&mut self, key: &str) -> &mut Arr {
        let idx = match self.entries.iter().position(|(k, _)| k == key) {
            Some(i) => i,
            None => {
                self.entries.push((key.to_owned(), Value::Arr(Arr::new())));
                self.entries.len() - 1
            }
        };
        let slot = &mut self.entries[idx].1;
        if !matches!(slot, Value::Arr(_)) {
            *slot = Value::Arr(Arr::new());
        }
        match slot {
            Value::Arr(a) => a,
            _ => unreachable!("slot was just made an array"),
        }
    }

    /// Array-key-case normalisation used by several handlers.
    pub(crate) fn upper_keys(&self) -> Arr {
        let mut out = Arr::new();
        for (k, v) in &self.entries {
            out.insert(k.to_ascii_uppercase(), v.clone());
        }
        out
    }
}

impl FromIterator<(String, Value)> for Arr {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        let mut a = Arr::new();
        for (k, v) in iter {
            a.insert(k, v);
        }
        a
    }
}

/// `Some(n)` when `key` is how PHP would print integer `n` (so it is an integer key).
fn canonical_int(key: &str) -> Option<i64> {
    let n: i64 = key.parse().ok()?;
    (n.to_string() == key).then_some(n)
}

/// Builds an ordered map value from `(key, value)` pairs.
pub(crate) fn map<K: Into<String>>(entries: impl IntoIterator<Item = (K, Value)>) -> Value {
    Value::Arr(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

/// Builds a list value.
pub(crate) fn list(items: impl IntoIterator<Item = Value>) -> Value {
    let mut a = Arr::new();
    for v in items {
        a.push(v);
    }
    Value::Arr(a)
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        i64::try_from(n).map_or(Value::Float(n as f64), Value::Int)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl Value {
    /// A numeric string, the way list payloads carry ids (`"ID":"217"`).
    pub(crate) fn num_str(n: u64) -> Value {
        Value::Str(n.to_string())
    }

    pub(crate) fn as_arr(&self) -> Option<&Arr> {
        match self {
            Value::Arr(a) => Some(a),
            _ => None,
        }
    }

    /// PHP `(string)$v` (arrays become `"Array"`, as PHP 7 did).
    pub(crate) fn to_php_string(&self) -> String {
        match self {
            Value::Null | Value::Bool(false) => String::new(),
            Value::Bool(true) => "1".to_owned(),
            Value::Int(n) => n.to_string(),
            Value::Float(f) => php_float_string(*f),
            Value::Str(s) => s.clone(),
            Value::Arr(_) => "Array".to_owned(),
        }
    }

    /// PHP `(int)$v`.
    pub(crate) fn to_int(&self) -> i64 {
        match self {
            Value::Null | Value::Bool(false) => 0,
            Value::Bool(true) => 1,
            Value::Int(n) => *n,
            Value::Float(f) => float_to_int(*f),
            Value::Str(s) => str_to_int(s),
            Value::Arr(a) => i64::from(!a.is_empty()),
        }
    }

    /// PHP `(bool)$v`.
    pub(crate) fn truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Int(n) => *n != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !(s.is_empty() || s == "0"),
            Value::Arr(a) => !a.is_empty(),
        }
    }

    /// PHP `empty($v)`.
    pub(crate) fn is_php_empty(&self) -> bool {
        !self.truthy()
    }
}

fn float_to_int(f: f64) -> i64 {
    if f.is_finite() { f.trunc() as i64 } else { 0 }
}

/// PHP 8 numeric-prefix semantics: `"12abc"` → 12, `" 7"` → 7, `"1e3"` → 1000, `"x"` → 0.
fn str_to_int(s: &str) -> i64 {
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let b = t.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut has_digits = i > int_start;
    let mut is_float = false;
    if i < b.len() && b[i] == b'.' {
        let mut j = i + 1;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j > i + 1 || has_digits {
            has_digits = has_digits || j > i + 1;
            is_float = true;
            i = j;
        }
    }
    if !has_digits {
        return 0;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        let exp_start = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j > exp_start {
            is_float = true;
            i = j;
        }
    }
    let num = &t[..i];
    if is_float {
        num.parse::<f64>().map_or(0, float_to_int)
    } else {
        num.parse::<i64>().unwrap_or(if num.starts_with('-') {
            i64::MIN
        } else {
            i64::MAX
        })
    }
}

fn php_float_string(f: f64) -> String {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        format!("{f}")
    }
}

/// Options of the PHP encoder.
#[derive(Clone, Copy, Debug)]
pub(crate) struct JsonStyle {
    /// PHP's default: every non-ASCII character as `\uXXXX`.
    pub escape_unicode: bool,
}

/// `Bitrix\Main\Web\Json::encode`: PHP `json_encode` with `JSON_HEX_TAG | JSON_HEX_AMP |
/// JSON_HEX_APOS | JSON_HEX_QUOT`, escaped slashes, and `[]` for every empty array.
pub(crate) fn to_php_json(v: &Value, style: JsonStyle) -> String {
    let mut out = String::with_capacity(256);
    write_value(&mut out, v, style);
    out
}

fn write_value(out: &mut String, v: &Value, style: JsonStyle) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Float(f) => {
            if f.is_finite() {
                let s = format!("{f}");
                out.push_str(&s);
                if !s.contains(['.', 'e', 'E']) {
                    out.push_str(".0");
                }
            } else {
                out.push('0');
            }
        }
        Value::Str(s) => write_str(out, s, style),
        Value::Arr(a) if a.is_empty() => out.push_str("[]"),
        Value::Arr(a) if a.is_list() => {
            out.push('[');
            for (i, item) in a.values().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item, style);
            }
            out.push(']');
        }
        Value::Arr(a) => {
            out.push('{');
            for (i, (k, item)) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(out, k, style);
                out.push(':');
                write_value(out, item, style);
            }
            out.push('}');
        }
    }
}

fn write_str(out: &mut String, s: &str, style: JsonStyle) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\u0022"),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' => out.push_str("\\u003C"),
            '>' => out.push_str("\\u003E"),
            '&' => out.push_str("\\u0026"),
            '\'' => out.push_str("\\u0027"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if style.escape_unicode && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

/// Keeps JSON object order (serde_json's own `Value` would sort keys, and `batch`
/// executes commands in document order).
struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut a = Arr::new();
        while let Some(v) = seq.next_element::<Value>()? {
            a.push(v);
        }
        Ok(Value::Arr(a))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Value, A::Error> {
        let mut a = Arr::new();
        while let Some((k, v)) = m.next_entry::<String, Value>()? {
            a.insert(k, v);
        }
        Ok(Value::Arr(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHP: JsonStyle = JsonStyle {
        escape_unicode: true,
    };

    #[test]
    fn php_casts() {
        assert_eq!(Value::from("12abc").to_int(), 12);
        assert_eq!(Value::from("  7").to_int(), 7);
        assert_eq!(Value::from("1e3").to_int(), 1000);
        assert_eq!(Value::from("-3.9").to_int(), -3);
        assert_eq!(Value::from("abc").to_int(), 0);
        assert_eq!(Value::from(".5").to_int(), 0);
        assert!(!Value::from("0").truthy());
        assert!(Value::from("false").truthy());
        assert_eq!(Value::Float(2.0).to_php_string(), "2");
    }

    #[test]
    fn encoder_quirks() {
        let v = map([
            ("url", Value::from("https://x/y")),
            ("empty", Value::Arr(Arr::new())),
            ("ru", Value::from("Да & <b>'\"")),
            ("f", Value::Float(3.0)),
        ]);
        assert_eq!(
            to_php_json(&v, PHP),
            r#"{"url":"https:\/\/x\/y","empty":[],"ru":"\u0414\u0430 \u0026 \u003Cb\u003E\u0027\u0022","f":3.0}"#
        );
        let sparse: Arr = [
            ("0".to_owned(), Value::Int(1)),
            ("2".to_owned(), Value::Int(3)),
        ]
        .into_iter()
        .collect();
        assert_eq!(to_php_json(&Value::Arr(sparse), PHP), r#"{"0":1,"2":3}"#);
        assert_eq!(to_php_json(&Value::from("😀"), PHP), r#""\ud83d\ude00""#);
    }

    #[test]
    fn json_object_order_survives() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":[true,null,"x"]}"#).unwrap();
        let a = v.as_arr().unwrap();
        let keys: Vec<_> = a.iter().map(|(k, _)| k.to_owned()).collect();
        assert_eq!(keys, ["b", "a"]);
    }
}
