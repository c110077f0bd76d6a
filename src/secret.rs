//! A string that must never be printed: tokens, signing secrets, the Bitrix24 webhook URL.
//!
//! `Debug` and `Display` print a fixed placeholder, so a secret inside a config struct, an error
//! or a `tracing` field cannot leak by accident; the value is reachable only through
//! [`Secret::expose`], which is greppable.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Call only where it is sent to its own service.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Replace every occurrence of any of `secrets` in `text` with `***`. A last line of defence for
/// text that comes from elsewhere (upstream error bodies) before it is logged or stored.
pub fn scrub(text: &str, secrets: &[&Secret]) -> String {
    let mut out = text.to_string();
    for secret in secrets {
        let value = secret.expose();
        // Short values would redact innocent text; real secrets are long.
        if value.len() >= 8 {
            out = out.replace(value, "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints() {
        let s = Secret::new("xoxb-very-secret");
        assert_eq!(format!("{s:?} {s}"), "Secret(***) ***");
        assert_eq!(s.expose(), "xoxb-very-secret");
    }

    #[test]
    fn scrubs_long_values_only() {
        let long = Secret::new("k3yS3cr3t0000001");
        let short = Secret::new("ab");
        assert_eq!(
            scrub("url /rest/1/k3yS3cr3t0000001/x ab", &[&long, &short]),
            "url /rest/1/***/x ab"
        );
    }
}
