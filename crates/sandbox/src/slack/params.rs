//! Request decoding the way Slack's Web API does it (contract §1.2, §8.1–8.6): query string and
//! body merged, JSON or form bodies, booleans in every spelling, structured arguments as real
//! JSON or as JSON strings.

use serde_json::{Map, Value};

/// Arguments of one Web API call, `token` excluded.
#[derive(Debug, Default, Clone)]
pub(crate) struct Params {
    map: Map<String, Value>,
}

/// A structured argument that was present but could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadJson;

impl Params {
    #[cfg(test)]
    pub(crate) fn from_map(map: Map<String, Value>) -> Self {
        Params { map }
    }

    /// A scalar argument as a string; `null` counts as absent.
    pub(crate) fn str(&self, k: &str) -> Option<String> {
        match self.map.get(k)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// A scalar argument that is present and not empty.
    pub(crate) fn nonempty(&self, k: &str) -> Option<String> {
        self.str(k).filter(|s| !s.is_empty())
    }

    pub(crate) fn has(&self, k: &str) -> bool {
        !matches!(self.map.get(k), None | Some(Value::Null))
    }

    /// Slack accepts `true|false|1|0` as JSON values and as strings; anything else is false.
    pub(crate) fn bool(&self, k: &str) -> Option<bool> {
        Some(match self.map.get(k)? {
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
            Value::String(s) => matches!(s.trim().to_ascii_lowercase().as_str(), "true" | "1"),
            _ => false,
        })
    }

    pub(crate) fn flag(&self, k: &str) -> bool {
        self.bool(k).unwrap_or(false)
    }

    /// A structured argument (`blocks`, `attachments`, `metadata`, `files`): a JSON value, or a
    /// string holding JSON (form encoding). Empty strings and `null` count as absent.
    pub(crate) fn json(&self, k: &str) -> Option<Result<Value, BadJson>> {
        match self.map.get(k)? {
            Value::Null => None,
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => Some(serde_json::from_str(s).map_err(|_| BadJson)),
            v => Some(Ok(v.clone())),
        }
    }

    pub(crate) fn int(&self, k: &str) -> Option<Result<i64, BadJson>> {
        match self.map.get(k)? {
            Value::Null => None,
            Value::Number(n) => Some(n.as_i64().ok_or(BadJson)),
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => Some(s.trim().parse().map_err(|_| BadJson)),
            _ => Some(Err(BadJson)),
        }
    }
}

/// The decoded request, before authentication.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub params: Params,
    /// Everything the client sent (token removed), for the request log.
    pub received: Map<String, Value>,
    /// `token` from the query string or a form body (never from JSON).
    pub form_token: Option<String>,
    pub warnings: Vec<&'static str>,
    /// A transport-level error Slack reports before looking at the method.
    pub error: Option<&'static str>,
}

/// How a body is interpreted. `honour_json` is false for methods without JSON input support:
/// Slack then ignores a JSON body's arguments, which is how clients get bitten.
pub(crate) fn decode(
    query: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
    honour_json: bool,
    charset_warnings: bool,
) -> Decoded {
    let mut d = Decoded::default();
    let mut map = Map::new();
    if let Some(q) = query {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            if k == "token" {
                d.form_token = Some(v.into_owned());
            } else {
                map.insert(k.into_owned(), Value::String(v.into_owned()));
            }
        }
    }
    let mut received = map.clone();

    let (mime, charset) = split_content_type(content_type);
    let body_empty = body.iter().all(u8::is_ascii_whitespace);
    match mime.as_deref() {
        Some("application/json") => {
            if charset.is_none() && charset_warnings {
                d.warnings.push("missing_charset");
            }
            if !body_empty {
                match serde_json::from_slice::<Value>(body) {
                    Ok(Value::Object(obj)) => {
                        for (k, v) in obj {
                            // A token inside JSON is not authentication (contract §1.1).
                            if k == "token" {
                                continue;
                            }
                            received.insert(k.clone(), v.clone());
                            if honour_json {
                                map.insert(k, v);
                            }
                        }
                    }
                    Ok(_) => d.error = Some("json_not_object"),
                    Err(_) => d.error = Some("invalid_json"),
                }
            }
        }
        Some("application/x-www-form-urlencoded") => {
            if charset.is_some() && charset_warnings {
                d.warnings.push("superfluous_charset");
            }
            for (k, v) in form_urlencoded::parse(body) {
                if k == "token" {
                    d.form_token = Some(v.into_owned());
                } else {
                    let v = Value::String(v.into_owned());
                    received.insert(k.to_string(), v.clone());
                    map.insert(k.into_owned(), v);
                }
            }
        }
        // Only the deprecated files.upload uses multipart; its arguments are irrelevant.
        Some("multipart/form-data") => {}
        Some(_) if !body_empty => d.error = Some("invalid_post_type"),
        None if !body_empty => d.error = Some("missing_post_type"),
        _ => {}
    }
    d.params = Params { map };
    d.received = received;
    d
}

fn split_content_type(ct: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(ct) = ct else {
        return (None, None);
    };
    let mut parts = ct.split(';');
    let mime = parts
        .next()
        .map(|m| m.trim().to_ascii_lowercase())
        .filter(|m| !m.is_empty());
    let charset = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("charset")).then(|| v.trim().to_owned())
    });
    (mime, charset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_query_and_form_and_extracts_token() {
        let d = decode(
            Some("channel=C1&token=xoxb-q"),
            Some("application/x-www-form-urlencoded"),
            b"text=hi&token=xoxb-f&unfurl=1",
            true,
            true,
        );
        assert_eq!(d.form_token.as_deref(), Some("xoxb-f"));
        assert_eq!(d.params.str("channel").as_deref(), Some("C1"));
        assert_eq!(d.params.bool("unfurl"), Some(true));
        assert!(d.warnings.is_empty());
        assert!(!d.received.contains_key("token"));
    }

    #[test]
    fn json_token_is_ignored_and_charset_warned() {
        let d = decode(
            None,
            Some("application/json"),
            br#"{"token":"xoxb-x","channel":"C1","metadata":{"a":1}}"#,
            true,
            true,
        );
        assert_eq!(d.form_token, None);
        assert_eq!(d.warnings, vec!["missing_charset"]);
        assert_eq!(d.params.json("metadata"), Some(Ok(json!({"a": 1}))));
    }

    #[test]
    fn booleans_in_every_spelling() {
        let p = Params::from_map(
            json!({"a": true, "b": "true", "c": "1", "d": 1, "e": "0", "f": false, "g": "false"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        for k in ["a", "b", "c", "d"] {
            assert_eq!(p.bool(k), Some(true), "{k}");
        }
        for k in ["e", "f", "g"] {
            assert_eq!(p.bool(k), Some(false), "{k}");
        }
    }

    #[test]
    fn body_errors() {
        let d = decode(
            None,
            Some("application/json; charset=utf-8"),
            b"[1]",
            true,
            true,
        );
        assert_eq!(d.error, Some("json_not_object"));
        let d = decode(None, Some("application/json"), b"{", true, true);
        assert_eq!(d.error, Some("invalid_json"));
        let d = decode(
            None,
            Some("application/json;charset=utf-8"),
            b"",
            true,
            true,
        );
        assert_eq!(d.error, None);
        assert!(d.warnings.is_empty());
        let d = decode(None, None, b"x=1", true, true);
        assert_eq!(d.error, Some("missing_post_type"));
    }

    #[test]
    fn json_args_ignored_for_form_only_methods() {
        let d = decode(
            None,
            Some("application/json"),
            br#"{"channel":"C1"}"#,
            false,
            false,
        );
        assert_eq!(d.params.str("channel"), None);
        assert_eq!(d.received.get("channel"), Some(&json!("C1")));
    }
}
