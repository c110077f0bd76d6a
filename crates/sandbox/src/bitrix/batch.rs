//! `batch` (contract §3, `CRestProvider::methodsBatch`): sequential sub-calls with the
//! caller's auth, `$result[key][path]` references, and per-section result maps.

use std::time::Instant;

use super::config::SubCallRecord;
use super::methods::{self, ApiError, Ctx, Output};
use super::params::parse_str;
use super::server::time_object;
use super::state::Portal;
use super::time;
use super::value::{Arr, Value, map};

const MAX_COMMANDS: usize = 50;

/// The five maps a later command may reference, in the server's key order (which is
/// also the alternation order of its reference regex).
#[derive(Default)]
struct Sections {
    result: Arr,
    next: Arr,
    total: Arr,
    time: Arr,
    error: Arr,
}

const SECTION_NAMES: [&str; 5] = ["result", "next", "total", "time", "error"];

impl Sections {
    fn get(&self, name: &str) -> Option<&Arr> {
        match name {
            "result" => Some(&self.result),
            "next" => Some(&self.next),
            "total" => Some(&self.total),
            "time" => Some(&self.time),
            "error" => Some(&self.error),
            _ => None,
        }
    }
}

pub(crate) fn run(
    p: &mut Portal,
    ctx: &Ctx,
    params: &Arr,
    sub_calls: &mut Vec<SubCallRecord>,
) -> Output {
    let q = params.upper_keys();
    let halt = q.get("HALT").is_some_and(halt_flag);
    let mut s = Sections::default();
    if let Some(Value::Arr(cmds)) = q.get("CMD") {
        for (i, (key, call)) in cmds.iter().enumerate() {
            let call = match call {
                Value::Arr(_) => String::new(),
                other => other.to_php_string(),
            };
            let (method, outcome) = if i < MAX_COMMANDS {
                sub_call(p, ctx, &call, &s, sub_calls)
            } else {
                let e = ApiError::new(
                    400,
                    "ERROR_BATCH_LENGTH_EXCEEDED",
                    "Max batch length exceeded",
                );
                (split_call(&call).0.to_ascii_lowercase(), Err(e))
            };
            let failed = outcome.is_err();
            sub_calls.push(SubCallRecord {
                key: key.to_owned(),
                method,
                query: split_call(&call).1.to_owned(),
                error: outcome.as_ref().err().map(|e| e.code.clone()),
            });
            match outcome {
                Ok((out, t)) => {
                    s.result.insert(key, out.result);
                    if let Some(n) = out.next {
                        s.next.insert(key, Value::Int(n));
                    }
                    if let Some(t) = out.total {
                        s.total.insert(key, Value::Int(t));
                    }
                    s.time.insert(key, t);
                }
                Err(e) => {
                    let mut entry = Arr::new();
                    entry.insert("error", Value::Str(e.code));
                    entry.insert("error_description", Value::Str(e.description));
                    if let Some(argument) = e.argument {
                        entry.insert("argument", Value::Str(argument));
                    }
                    s.error.insert(key, Value::Arr(entry));
                }
            }
            if failed && halt {
                break;
            }
        }
    }
    Output {
        result: map([
            ("result", Value::Arr(s.result)),
            ("result_error", Value::Arr(s.error)),
            ("result_total", Value::Arr(s.total)),
            ("result_next", Value::Arr(s.next)),
            ("result_time", Value::Arr(s.time)),
        ]),
        total: None,
        next: None,
    }
}

/// `(bool)$halt`, except that the documented string `"false"` means false.
fn halt_flag(v: &Value) -> bool {
    match v {
        Value::Str(s) if s.eq_ignore_ascii_case("false") => false,
        other => other.truthy(),
    }
}

/// `parse_url()`: the path before `?` is the method, the query runs up to `#`.
fn split_call(call: &str) -> (&str, &str) {
    let (path, query) = call.split_once('?').unwrap_or((call, ""));
    (path, query.split('#').next().unwrap_or(""))
}

type SubOutcome = Result<(Output, Value), ApiError>;

fn sub_call(
    p: &mut Portal,
    ctx: &Ctx,
    call: &str,
    s: &Sections,
    sub_calls: &mut Vec<SubCallRecord>,
) -> (String, SubOutcome) {
    let (path, query) = split_call(call);
    let method = path.to_ascii_lowercase();
    if matches!(method.as_str(), "batch" | "download" | "upload") {
        let e = ApiError::new(
            405,
            "ERROR_BATCH_METHOD_NOT_ALLOWED",
            "Method is not allowed for batch usage",
        );
        return (method, Err(e));
    }
    let Some(spec) = methods::lookup(&method) else {
        return (method, Err(ApiError::method_not_found()));
    };
    if let Err(e) = methods::check_scope(p, ctx, spec, true) {
        return (method, Err(e));
    }
    let params = substitute_all(&parse_str(query), s);
    let started = time::wall_micros();
    let clock = Instant::now();
    let start_portal = p.now_micros();
    let outcome = methods::run(p, ctx, spec, params, sub_calls);
    let processing = clock.elapsed().as_secs_f64();
    let finish_portal = start_portal + (time::wall_micros() - started);
    let variant = sub_calls.len() as u64;
    let outcome = outcome.map(|out| {
        p.record_operating(spec.name, processing);
        let t = time_object(p, start_portal, finish_portal, processing, variant, None);
        (out, t)
    });
    (method, outcome)
}

/// `processBatchStructure`: references are resolved in every (nested) value.
fn substitute_all(params: &Arr, s: &Sections) -> Arr {
    params
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::Arr(a) => Value::Arr(substitute_all(a, s)),
                Value::Str(text) => substitute(text, s),
                other => other.clone(),
            };
            (k.to_owned(), v)
        })
        .collect()
}

/// One reference found by `/\$(result|next|total|time|error)([^\s]*)/i`.
struct Reference {
    text: String,
    section: String,
    path: Vec<String>,
}

fn find_references(value: &str) -> Vec<Reference> {
    let mut refs = Vec::new();
    let mut i = 0;
    while let Some(off) = value[i..].find('$') {
        let at = i + off;
        let after = &value[at + 1..];
        let Some(name) = SECTION_NAMES.iter().find(|n| {
            after
                .get(..n.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(n))
        }) else {
            i = at + 1;
            continue;
        };
        let written = &after[..name.len()];
        let tail = &after[name.len()..];
        let path_len = tail.find(char::is_whitespace).unwrap_or(tail.len());
        let path = &tail[..path_len];
        refs.push(Reference {
            text: format!("${written}{path}"),
            // The lookup is case-sensitive even though the match is not.
            section: written.to_owned(),
            path: bracket_segments(path),
        });
        i = at + 1 + name.len() + path_len;
    }
    refs
}

/// All `\[([^\]]+)\]` matches of a path.
fn bracket_segments(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = path[i..].find('[') {
        let open = i + off;
        let inner = &path[open + 1..];
        match inner.find(']') {
            Some(0) => i = open + 1,
            Some(close) => {
                out.push(inner[..close].to_owned());
                i = open + 1 + close + 1;
            }
            None => break,
        }
    }
    out
}

/// Walks a path as far as it exists (`isset` stops at missing or null nodes).
fn resolve(s: &Sections, r: &Reference) -> Value {
    let Some(root) = s.get(&r.section) else {
        return Value::Null;
    };
    let mut cur = root;
    let mut leaf: Option<&Value> = None;
    for seg in &r.path {
        match cur.get(seg) {
            Some(Value::Null) | None => break,
            Some(Value::Arr(a)) => {
                cur = a;
                leaf = None;
            }
            Some(v) => {
                leaf = Some(v);
                break;
            }
        }
    }
    leaf.cloned().unwrap_or_else(|| Value::Arr(cur.clone()))
}

/// `processBatchElement`: a value that is exactly one reference becomes the referenced
/// value (arrays included); otherwise references are interpolated as strings.
fn substitute(value: &str, s: &Sections) -> Value {
    let mut current = Value::Str(value.to_owned());
    for r in find_references(value) {
        if r.path.is_empty() {
            continue;
        }
        let resolved = resolve(s, &r);
        current = match current {
            Value::Str(text) if text == r.text => resolved,
            Value::Str(text) => Value::Str(text.replace(&r.text, &resolved.to_php_string())),
            other => other,
        };
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitrix::value::list;

    fn sections() -> Sections {
        let mut s = Sections::default();
        s.result.insert(
            "post",
            list([map([
                ("ID", Value::from("217")),
                ("AUTHOR_ID", Value::from("7")),
            ])]),
        );
        s.total.insert("post", Value::Int(1));
        s
    }

    #[test]
    fn whole_value_and_interpolation() {
        let s = sections();
        assert_eq!(
            substitute("$result[post][0][AUTHOR_ID]", &s),
            Value::from("7")
        );
        assert_eq!(
            substitute("id=$result[post][0][ID] total $total[post]", &s),
            Value::from("id=217 total 1")
        );
        // Missing paths resolve to the deepest existing node.
        assert_eq!(
            substitute("$result[post][0][NOPE]", &s),
            map([("ID", Value::from("217")), ("AUTHOR_ID", Value::from("7"))])
        );
        assert_eq!(
            substitute("x $result[post][9] y", &s),
            Value::from("x Array y")
        );
        assert_eq!(substitute("$result", &s), Value::from("$result"));
        assert_eq!(substitute("$RESULT[post]", &s), Value::Null);
    }
}
