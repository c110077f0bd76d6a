//! Request parameter decoding the way PHP and `CRestServer` do it: query string first,
//! then the body (JSON when the content type says so, else `parse_str` semantics for
//! form and multipart bodies) overriding same-named top-level keys.

use super::value::{Arr, Value};

/// PHP's `max_input_nesting_level`: deeper variables are dropped.
const MAX_NESTING: usize = 64;

/// PHP `parse_str` / `$_GET` decoding of an `a=1&b[x][]=2` string.
pub(crate) fn parse_str(input: &str) -> Arr {
    let mut out = Arr::new();
    for (name, value) in form_urlencoded::parse(input.as_bytes()) {
        register(&mut out, &name, Value::Str(value.into_owned()));
    }
    out
}

/// `php_register_variable_ex`: splits `DEST[0]` / `FILTER[ID][]` into a base name and
/// bracket segments, mangling the base like PHP does (`a.b` and `a b` become `a_b`).
pub(crate) fn register(target: &mut Arr, raw_name: &str, value: Value) {
    let name = raw_name.trim_start_matches(' ');
    let (base_raw, rest) = match name.find('[') {
        Some(i) => (&name[..i], &name[i..]),
        None => (name, ""),
    };
    let mut base: String = base_raw
        .chars()
        .map(|c| if c == ' ' || c == '.' { '_' } else { c })
        .collect();
    let mut segments: Vec<Option<String>> = Vec::new();
    let mut rest = rest;
    let mut first = true;
    while let Some(after_open) = rest.strip_prefix('[') {
        let Some(close) = after_open.find(']') else {
            if first {
                // An unterminated first bracket is not an index: PHP keeps it in the
                // name, turning the `[` into `_`.
                base.push('_');
                base.push_str(after_open);
            }
            break;
        };
        let index = after_open[..close].trim_start_matches([' ', '\t', '\r', '\n']);
        segments.push((!index.is_empty()).then(|| index.to_owned()));
        rest = &after_open[close + 1..];
        first = false;
    }
    if base.is_empty() || segments.len() > MAX_NESTING {
        return;
    }
    assign(target, &base, &segments, value);
}

fn assign(target: &mut Arr, base: &str, segments: &[Option<String>], value: Value) {
    let Some((last, parents)) = segments.split_last() else {
        target.insert(base, value);
        return;
    };
    let mut cur = target.child_arr(base);
    for seg in parents {
        cur = match seg {
            Some(key) => cur.child_arr(key),
            None => {
                cur.push(Value::Arr(Arr::new()));
                let key = cur
                    .iter()
                    .last()
                    .map(|(k, _)| k.to_owned())
                    .unwrap_or_default();
                cur.child_arr(&key)
            }
        };
    }
    match last {
        Some(key) => cur.insert(key.as_str(), value),
        None => cur.push(value),
    }
}

/// Decodes a request body by content type. Anything PHP would not put into `$_POST`
/// (no or unknown content type) contributes nothing; invalid JSON decodes to nothing.
pub(crate) fn decode_body(content_type: Option<&str>, body: &[u8]) -> Arr {
    let Some(ct) = content_type else {
        return Arr::new();
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Arr(a)) => a,
            _ => Arr::new(),
        },
        "application/x-www-form-urlencoded" => parse_str(&String::from_utf8_lossy(body)),
        "multipart/form-data" => boundary(ct).map_or_else(Arr::new, |b| parse_multipart(&b, body)),
        _ => Arr::new(),
    }
}

/// Query string first, then the body overriding same-named top-level keys.
pub(crate) fn collect(query: Option<&str>, content_type: Option<&str>, body: &[u8]) -> Arr {
    let mut params = query.map(parse_str).unwrap_or_default();
    for (k, v) in decode_body(content_type, body).iter() {
        params.insert(k, v.clone());
    }
    params
}

fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|part| {
        let (k, v) = part.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// Minimal `multipart/form-data`: plain fields become parameters; file parts go to
/// PHP's `$_FILES`, which no REST method here reads, so they are skipped.
fn parse_multipart(boundary: &str, body: &[u8]) -> Arr {
    let mut out = Arr::new();
    let delimiter = format!("--{boundary}");
    let text = String::from_utf8_lossy(body);
    for part in text.split(delimiter.as_str()).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let part = part.strip_prefix("\r\n").unwrap_or(part);
        let Some((head, content)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let content = content.strip_suffix("\r\n").unwrap_or(content);
        let Some(disposition) = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
        else {
            continue;
        };
        if disposition_param(disposition, "filename").is_some() {
            continue;
        }
        if let Some(name) = disposition_param(disposition, "name") {
            register(&mut out, &name, Value::Str(content.to_owned()));
        }
    }
    out
}

fn disposition_param(header: &str, wanted: &str) -> Option<String> {
    header.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(wanted)
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitrix::value::{JsonStyle, to_php_json};

    fn json(a: Arr) -> String {
        to_php_json(
            &Value::Arr(a),
            JsonStyle {
                escape_unicode: false,
            },
        )
    }

    #[test]
    fn php_nested_keys() {
        let a = parse_str("DEST[0]=UA&DEST[1]=SG12&FILTER[ID][]=5&FILTER[ID][]=6&x.y=1&n[a=2");
        assert_eq!(
            json(a),
            r#"{"DEST":["UA","SG12"],"FILTER":{"ID":["5","6"]},"x_y":"1","n_a":"2"}"#
        );
        let a = parse_str("FILES[0][0]=a.png&FILES[0][1]=iVBO%2B&m=a+b%26c");
        assert_eq!(json(a), r#"{"FILES":[["a.png","iVBO+"]],"m":"a b\u0026c"}"#);
        let a = parse_str("a=1&a[b]=2&c[]=x&c[5]=y&c[]=z");
        assert_eq!(json(a), r#"{"a":{"b":"2"},"c":{"0":"x","5":"y","6":"z"}}"#);
    }

    #[test]
    fn body_overrides_query_and_bad_json_is_empty() {
        let p = collect(
            Some("POST_ID=1&start=50"),
            Some("application/json; charset=utf-8"),
            br#"{"POST_ID": 217}"#,
        );
        assert_eq!(json(p), r#"{"POST_ID":217,"start":"50"}"#);
        let p = collect(Some("a=1"), Some("application/json"), b"{not json");
        assert_eq!(json(p), r#"{"a":"1"}"#);
        let p = collect(None, None, b"a=1");
        assert!(p.is_empty());
    }

    #[test]
    fn multipart_fields() {
        let body = "--XX\r\nContent-Disposition: form-data; name=\"DEST[]\"\r\n\r\nUA\r\n--XX\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.txt\"\r\n\r\nzzz\r\n--XX--\r\n";
        let p = decode_body(Some("multipart/form-data; boundary=XX"), body.as_bytes());
        assert_eq!(json(p), r#"{"DEST":["UA"]}"#);
    }
}
