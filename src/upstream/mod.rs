//! What every platform's API client shares: how a failed call is classified, whether a call
//! may be sent again, how its retries back off, the client-side rate limits, and the
//! `outcome` label of the `api_calls` metric. Written once here so the Bitrix24, Slack and
//! Matrix clients say the same thing in the same words.

pub mod download;
pub mod ratelimit;

use std::time::Duration;

use livefeed_core::model::{Failure, FailureKind};

/// How a failed platform call should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The platform refused before acting (rate limits, refused connections): safe to repeat.
    Rejected,
    /// Network trouble or a server error: the call may or may not have acted.
    Transient,
    /// Credentials, scopes, plan: nothing on this side works until an operator acts.
    Auth,
    /// This call can never succeed as made.
    Permanent,
}

/// The `outcome` label of a call that worked.
pub const OUTCOME_OK: &str = "ok";
/// The `outcome` label of a call that never got an answer (connection refused, reset, timeout).
pub const OUTCOME_NETWORK_ERROR: &str = "network_error";

impl ErrorClass {
    /// Whether a call that failed like this may be sent again, given how repeatable it is.
    pub fn repeatable(self, repeat: Repeat) -> bool {
        match repeat {
            Repeat::Safe => matches!(self, ErrorClass::Rejected | ErrorClass::Transient),
            Repeat::OnlyIfRejected => self == ErrorClass::Rejected,
        }
    }

    /// The `outcome` label of the `api_calls` metric for a call that failed like this.
    pub fn outcome(self) -> &'static str {
        match self {
            ErrorClass::Rejected => "rate_limited",
            ErrorClass::Transient => "server_error",
            ErrorClass::Auth => "auth_error",
            ErrorClass::Permanent => "error",
        }
    }

    /// The failure the engine sees: `reason` must already be safe to log.
    pub fn failure(self, reason: String, retry_after: Option<Duration>) -> Failure {
        match self {
            ErrorClass::Rejected | ErrorClass::Transient => match retry_after {
                Some(after) => Failure::retry_after(reason, after),
                None => Failure::transient(reason),
            },
            ErrorClass::Auth => Failure::auth(reason),
            ErrorClass::Permanent => Failure::permanent(reason),
        }
    }

    /// The class of a failure made elsewhere (the Matrix SDK's errors become failures first).
    pub fn of(failure: &Failure) -> ErrorClass {
        match failure.kind {
            FailureKind::Transient {
                retry_after: Some(_),
            } => ErrorClass::Rejected,
            FailureKind::Transient { retry_after: None } => ErrorClass::Transient,
            FailureKind::Auth => ErrorClass::Auth,
            FailureKind::Permanent | FailureKind::Gone => ErrorClass::Permanent,
        }
    }
}

/// The `outcome` label of a call's result.
pub fn outcome<T>(result: &Result<T, ErrorClass>) -> &'static str {
    match result {
        Ok(_) => OUTCOME_OK,
        Err(class) => class.outcome(),
    }
}

/// Whether repeating a call is harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// Reads, deletes, updates to a given state: repeat on any transient failure.
    Safe,
    /// Creates: repeat only when the platform certainly did not act; anything else goes back to
    /// the engine, which reconciles before sending again.
    OnlyIfRejected,
}

/// How a client retries a failed call before it gives the failure back to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay; each retry doubles it (with jitter).
    pub first: Duration,
    /// The longest delay.
    pub max: Duration,
    /// Retries after the first attempt.
    pub retries: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rejections_repeat_creates() {
        for class in [
            ErrorClass::Rejected,
            ErrorClass::Transient,
            ErrorClass::Auth,
            ErrorClass::Permanent,
        ] {
            assert_eq!(
                class.repeatable(Repeat::OnlyIfRejected),
                class == ErrorClass::Rejected
            );
            assert_eq!(
                class.repeatable(Repeat::Safe),
                matches!(class, ErrorClass::Rejected | ErrorClass::Transient)
            );
            let failure = class.failure("x".into(), None);
            let back = ErrorClass::of(&failure);
            // A rejection without a time to wait is indistinguishable from a transient error.
            let expected = if class == ErrorClass::Rejected {
                ErrorClass::Transient
            } else {
                class
            };
            assert_eq!(back, expected);
        }
        let limited = ErrorClass::Rejected.failure("429".into(), Some(Duration::from_secs(2)));
        assert_eq!(ErrorClass::of(&limited), ErrorClass::Rejected);
        assert_eq!(outcome::<()>(&Err(ErrorClass::Rejected)), "rate_limited");
        assert_eq!(outcome(&Ok(())), "ok");
    }
}
