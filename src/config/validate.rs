//! The validation toolkit every section of `bridge.yaml` uses: `${VAR}` expansion that keeps
//! the source position, durations, rates, URL schemes, and errors with `file:line:column` and a
//! hint. Platform sections (`src/<platform>/config.rs`) validate themselves with it.

use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::ConfigError;
use crate::upstream::ratelimit::RateLimit;

/// A string of the file with its position.
pub(crate) type Str = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRate {
    pub(crate) per_second: Spanned<f64>,
    #[serde(default)]
    pub(crate) burst: Option<u32>,
}

pub(crate) struct Validator<'a> {
    pub(crate) file: &'a str,
    pub(crate) env: &'a dyn Fn(&str) -> Option<String>,
}

/// What an optional `${VAR}` field turned into.
pub(crate) enum Optional {
    Set(String),
    /// Absent, empty, or a reference to an unset variable without default.
    Unset {
        unset_var: Option<String>,
    },
}

impl Validator<'_> {
    pub(crate) fn err(
        &self,
        at: &Str,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: at.referenced.line(),
            column: at.referenced.column(),
            message: message.into(),
            hint,
        }
    }

    pub(crate) fn top_err(&self, message: impl Into<String>, hint: Option<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: 0,
            column: 0,
            message: message.into(),
            hint,
        }
    }

    /// Expand `${VAR}` / `${VAR:-default}` / `$$`. Unset variables without default are errors.
    pub(crate) fn expand(&self, field: &str, s: &Str) -> Result<String, ConfigError> {
        match expand_env(&s.value, self.env) {
            Ok(v) => Ok(v),
            Err(Expansion::Unset(var)) => Err(self.err(
                s,
                format!("{field}: environment variable {var} is not set"),
                Some(format!(
                    "export {var}=… before starting the bridge, or write ${{{var}:-default}}"
                )),
            )),
            Err(Expansion::Malformed) => Err(self.err(
                s,
                format!("{field}: malformed ${{…}} reference"),
                Some("write ${NAME} or ${NAME:-default}; write $$ for a literal $".into()),
            )),
        }
    }

    /// Like `expand`, but an unset variable (or an empty result) means "not configured".
    pub(crate) fn expand_optional(
        &self,
        field: &str,
        s: Option<&Str>,
    ) -> Result<Optional, ConfigError> {
        let Some(s) = s else {
            return Ok(Optional::Unset { unset_var: None });
        };
        match expand_env(&s.value, self.env) {
            Ok(v) if v.trim().is_empty() => Ok(Optional::Unset { unset_var: None }),
            Ok(v) => Ok(Optional::Set(v)),
            Err(Expansion::Unset(var)) => Ok(Optional::Unset {
                unset_var: Some(var),
            }),
            Err(Expansion::Malformed) => self.expand(field, s).map(Optional::Set),
        }
    }

    pub(crate) fn duration(
        &self,
        field: &str,
        s: Option<&Str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(s) = s else { return Ok(default) };
        let text = self.expand(field, s)?;
        parse_duration(&text).ok_or_else(|| {
            self.err(
                s,
                format!("{field}: `{text}` is not a duration"),
                Some("write a number with a unit: 500ms, 5s, 5m, 2h or 7d".into()),
            )
        })
    }

    pub(crate) fn rate(
        &self,
        field: &str,
        raw: Option<&RawRate>,
        default: RateLimit,
    ) -> Option<RateLimit> {
        let _ = field;
        match raw {
            None => Some(default),
            Some(r) if r.per_second.value <= 0.0 => None,
            Some(r) => Some(RateLimit {
                per_second: r.per_second.value,
                burst: r.burst.unwrap_or(default.burst).max(1),
            }),
        }
    }
}

/// Credentials travel in these URLs, so they need TLS unless the server is on this machine
/// or is a container on the same compose network (a single-label name such as `synapse`,
/// which no public DNS resolves).
pub(crate) fn check_scheme(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_local_host(url) => Ok(()),
        "http" => Err(
            "plain http is only allowed for loopback hosts and single-label container names".into(),
        ),
        other => Err(format!("unsupported scheme `{other}`")),
    }
}

fn is_local_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost" || !d.contains('.'),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// `500ms`, `5s`, `5m`, `2h`, `7d`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => n,
        "s" => n.checked_mul(1_000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// `64MB`, `1GiB`, `512KB`, `1048576`: a size in bytes. `KB`/`MB`/`GB` are powers of 1024,
/// as memory sizes are usually meant; `KiB`/`MiB`/`GiB` say so explicitly.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "kib" | "k" => 1 << 10,
        "mb" | "mib" | "m" => 1 << 20,
        "gb" | "gib" | "g" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(factor)
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Expansion {
    Unset(String),
    Malformed,
}

/// Expand `${VAR}`, `${VAR:-default}` and `$$` (a literal `$`). A `$` not followed by `{` or
/// `$` stays as it is.
pub(crate) fn expand_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Expansion> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').ok_or(Expansion::Malformed)?;
            let body = &inner[..end];
            let (name, default) = match body.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (body, None),
            };
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(Expansion::Malformed);
            }
            match (env(name), default) {
                (Some(v), _) if !(v.is_empty() && default.is_some()) => out.push_str(&v),
                (_, Some(d)) => out.push_str(d),
                (None, None) => return Err(Expansion::Unset(name.to_string())),
                (Some(v), None) => out.push_str(&v),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}
