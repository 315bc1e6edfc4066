//! Typed errors of the envs crate.

use std::time::Duration;

/// A violation of the JSON-lines protocol by a peer (or by bytes that claim to be the protocol).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    /// A line exceeded the configured limit before its newline arrived.
    #[error("line longer than {limit} bytes")]
    TooLong {
        /// The configured maximum line length.
        limit: usize,
    },
    /// The line is not UTF-8.
    #[error("line is not valid UTF-8")]
    NotUtf8,
    /// The line is not a JSON object of the expected form.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A number was NaN or infinite (JSON has no such numbers; Python writes `NaN`/`Infinity`).
    #[error("non-finite number in `{field}`")]
    NonFinite {
        /// Which field carried it.
        field: String,
    },
    /// A `type` (or `op`) this protocol version does not know.
    #[error("unknown message type `{0}`")]
    UnknownMessage(String),
    /// A known message arrived where another one was expected.
    #[error("expected a `{expected}` message, got `{got}`")]
    Unexpected {
        /// The message type that was expected.
        expected: String,
        /// The message type that arrived.
        got: String,
    },
    /// A required field is absent or has the wrong JSON type.
    #[error("missing or mistyped field `{0}`")]
    BadField(String),
    /// An observation (or action) has the wrong number of elements.
    #[error("`{field}` has {got} elements, the space needs {expected}")]
    WrongShape {
        /// Which field.
        field: String,
        /// Elements the space requires.
        expected: usize,
        /// Elements received.
        got: usize,
    },
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: we speak {ours}, peer speaks {theirs}")]
    Version {
        /// Our version.
        ours: u64,
        /// The peer's version.
        theirs: u64,
    },
    /// A space description could not be understood.
    #[error("bad space description: {0}")]
    BadSpace(String),
}

/// Everything that can go wrong with an environment.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// No constructor is registered under this ID.
    #[error("unknown environment id `{id}`; known ids: {known}")]
    UnknownId {
        /// The ID asked for.
        id: String,
        /// Comma-separated known IDs and prefixes.
        known: String,
    },
    /// An ID is registered twice.
    #[error("environment id `{0}` is already registered")]
    DuplicateId(String),
    /// An action outside the action space.
    #[error("invalid action: {0}")]
    InvalidAction(String),
    /// `step` before the first `reset`, or after a fault ended the episode.
    #[error("step called without a running episode; call reset first")]
    NeedsReset,
    /// A constructor or wrapper got an unusable configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The peer answered with an `error` message.
    #[error("peer reported an error: {0}")]
    Peer(String),
    /// A call did not finish in time: writing a request and reading its answer (within
    /// `call_timeout`), or opening a session (resolving, connecting, `hello`, within
    /// `connect_timeout`).
    #[error("peer did not answer `{op}` within {timeout:?}")]
    Timeout {
        /// The request that went unanswered, or `resolve …` / `connect to …`.
        op: String,
        /// The configured limit.
        timeout: Duration,
    },
    /// The peer closed its end (exited, crashed, or dropped the socket).
    #[error("peer disconnected during `{op}`")]
    Disconnected {
        /// The request in flight.
        op: String,
    },
    /// Restarting a faulty peer failed too often in a row.
    #[error("peer could not be restarted after {attempts} attempts; last error: {last}")]
    RestartsExhausted {
        /// Attempts made.
        attempts: u32,
        /// The last failure, rendered.
        last: String,
    },
    /// A [`GoalRegions`](crate::GoalRegions) world, schedule or control was misconfigured.
    #[error("goal-regions configuration: {0}")]
    GoalRegions(#[from] crate::goal_regions::GoalRegionsError),
    /// An OS-level failure (spawn, connect, read, write, temp file).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl EnvError {
    /// A short, stable label for an error caused by the world (its peer process, socket or
    /// simulator), for counting faults by kind: `"protocol"`, `"peer_error"`, `"timeout"`,
    /// `"disconnected"`, `"restarts_exhausted"`, `"io"`. `None` for mistakes of the caller or
    /// its configuration (unknown id, invalid action, `step` without `reset`, bad config),
    /// which retrying with the same inputs cannot fix.
    ///
    /// After a fault from `step`, ending the episode and calling `reset` is always safe; see
    /// the fault table in `PROTOCOL.md`. The labels match `info["peer_fault"]` of a step that
    /// a fault truncated (`"timeout"`, `"disconnected"`).
    pub fn fault_kind(&self) -> Option<&'static str> {
        match self {
            EnvError::Protocol(_) => Some("protocol"),
            EnvError::Peer(_) => Some("peer_error"),
            EnvError::Timeout { .. } => Some("timeout"),
            EnvError::Disconnected { .. } => Some("disconnected"),
            EnvError::RestartsExhausted { .. } => Some("restarts_exhausted"),
            EnvError::Io { .. } => Some("io"),
            EnvError::UnknownId { .. }
            | EnvError::DuplicateId(_)
            | EnvError::InvalidAction(_)
            | EnvError::NeedsReset
            | EnvError::Config(_)
            | EnvError::GoalRegions(_) => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = EnvError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_of_the_world_are_told_apart_from_caller_mistakes() {
        let faults = [
            EnvError::Protocol(ProtocolError::NotUtf8),
            EnvError::Peer("x".into()),
            EnvError::Timeout {
                op: "step".into(),
                timeout: Duration::from_secs(1),
            },
            EnvError::Disconnected { op: "step".into() },
            EnvError::RestartsExhausted {
                attempts: 1,
                last: "x".into(),
            },
            EnvError::io("spawn", std::io::Error::other("x")),
        ];
        let kinds: Vec<_> = faults.iter().filter_map(EnvError::fault_kind).collect();
        assert_eq!(
            kinds,
            [
                "protocol",
                "peer_error",
                "timeout",
                "disconnected",
                "restarts_exhausted",
                "io"
            ]
        );
        for e in [
            EnvError::InvalidAction("x".into()),
            EnvError::NeedsReset,
            EnvError::Config("x".into()),
            EnvError::DuplicateId("x".into()),
            EnvError::GoalRegions(crate::goal_regions::GoalRegionsError::ZeroEvery),
        ] {
            assert_eq!(e.fault_kind(), None, "{e}");
        }
    }
}
