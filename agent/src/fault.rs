//! Faults of an environment, and what acting does about them.
//!
//! An environment is outside input: a peer process may crash, hang, answer `error`, send a
//! malformed line, NaN, an observation of the wrong width, or a reward that overflows `f32`;
//! a Rust environment may return an error. None of that may end a daemon or lose what was
//! lived. Every such step is a [`Fault`]: the episode in progress is cut as truncated (the
//! steps before the fault are stored; the faulty one is not, its data being unusable), the
//! fault is counted and recorded, and the environment is reset after a [`Backoff`] wait
//! (a remote peer is restarted by its own reset, see `envs/PROTOCOL.md`).

use std::time::Duration;

use autodidact_envs::{EnvError, Step};
use serde::Serialize;

/// What went wrong, in the few kinds a dashboard counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The peer did not answer in time.
    Timeout,
    /// The peer exited, dropped its socket, or could not be (re)started.
    Disconnected,
    /// The peer broke the protocol (malformed line, unknown message, NaN, wrong shape).
    Protocol,
    /// The environment answered with an error of its own.
    EnvError,
    /// An observation of the wrong width or with a non-finite value.
    BadObservation,
    /// A reward that is not a finite `f32` (NaN, ±inf, or beyond ±3.4e38).
    BadReward,
}

impl FaultKind {
    /// Every kind, for zero-filled counters.
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Timeout,
        FaultKind::Disconnected,
        FaultKind::Protocol,
        FaultKind::EnvError,
        FaultKind::BadObservation,
        FaultKind::BadReward,
    ];

    /// The snake_case name used in `/status`, `/metrics` and reflections.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Timeout => "timeout",
            FaultKind::Disconnected => "disconnected",
            FaultKind::Protocol => "protocol",
            FaultKind::EnvError => "env_error",
            FaultKind::BadObservation => "bad_observation",
            FaultKind::BadReward => "bad_reward",
        }
    }
}

/// One faulty `reset` or `step`.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{} ({})", .message, .kind.name())]
pub struct Fault {
    /// Its kind.
    pub kind: FaultKind,
    /// What happened, for a person.
    pub message: String,
}

impl From<EnvError> for Fault {
    fn from(e: EnvError) -> Fault {
        let kind = match &e {
            EnvError::Timeout { .. } => FaultKind::Timeout,
            EnvError::Disconnected { .. }
            | EnvError::RestartsExhausted { .. }
            | EnvError::Io { .. } => FaultKind::Disconnected,
            EnvError::Protocol(_) => FaultKind::Protocol,
            _ => FaultKind::EnvError,
        };
        Fault {
            kind,
            message: e.to_string(),
        }
    }
}

/// Checks an observation before it reaches the network: the declared width, finite values.
pub fn check_observation(obs: &[f32], dim: usize) -> Result<(), Fault> {
    if obs.len() != dim {
        return Err(Fault {
            kind: FaultKind::BadObservation,
            message: format!(
                "the environment returned an observation of {} values; its space declares {dim}",
                obs.len()
            ),
        });
    }
    if let Some(i) = obs.iter().position(|x| !x.is_finite()) {
        return Err(Fault {
            kind: FaultKind::BadObservation,
            message: format!("the environment returned {} at observation[{i}]", obs[i]),
        });
    }
    Ok(())
}

/// Accepts a step only if every part of it can be learned from: no error, no fault reported
/// by a remote peer (`info.peer_fault`: its step carries a made-up observation and reward), a
/// well-formed observation and a reward that is a finite `f32`.
pub fn check_step(step: autodidact_envs::Result<Step>, obs_dim: usize) -> Result<Step, Fault> {
    let step = step.map_err(Fault::from)?;
    if let Some(kind) = step.info.get("peer_fault") {
        let detail = step
            .info
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("no detail");
        return Err(Fault {
            kind: if kind == "timeout" {
                FaultKind::Timeout
            } else {
                FaultKind::Disconnected
            },
            message: detail.to_string(),
        });
    }
    check_observation(&step.obs, obs_dim)?;
    // The store keeps rewards as f32: 1e300 is a finite f64 and an infinite f32.
    if !(step.reward as f32).is_finite() {
        return Err(Fault {
            kind: FaultKind::BadReward,
            message: format!(
                "the environment returned a reward of {}, which is not a finite 32-bit number",
                step.reward
            ),
        });
    }
    Ok(step)
}

/// Checks an environment's declared spaces against the documented limits of `envs`
/// (`MAX_DISCRETE_N`, `MAX_SPACE_ELEMENTS`, finite ordered bounds) before anything is sized
/// from them: a remote peer's spaces are checked at its handshake, a Rust environment's are
/// checked here.
pub fn check_spaces(env: &dyn autodidact_envs::Env) -> Result<(), Fault> {
    for (which, space) in [
        ("observation", env.observation_space()),
        ("action", env.action_space()),
    ] {
        space.check().map_err(|e| Fault {
            kind: FaultKind::Protocol,
            message: format!("the environment's {which} space is unusable: {e}"),
        })?;
    }
    Ok(())
}

/// Makes an environment from its ID and checks its spaces (see [`check_spaces`]).
pub fn make_env(id: &str) -> crate::error::Result<Box<dyn autodidact_envs::Env>> {
    let env = autodidact_envs::make(id)?;
    check_spaces(env.as_ref())?;
    Ok(env)
}

/// Exponential backoff between retries of a failing environment: 50 ms, doubling per fault in
/// a row, up to a cap; a good step starts it again from the bottom.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    in_row: u32,
}

impl Backoff {
    /// A backoff from 50 ms up to `max`.
    pub fn new(max: Duration) -> Backoff {
        let initial = Duration::from_millis(50).min(max);
        Backoff {
            initial,
            max,
            in_row: 0,
        }
    }

    /// Counts a fault and returns how long to wait before the next attempt.
    pub fn fault(&mut self) -> Duration {
        let wait = self
            .initial
            .saturating_mul(1u32 << self.in_row.min(20))
            .min(self.max);
        self.in_row = self.in_row.saturating_add(1);
        wait
    }

    /// Faults in a row so far.
    pub fn in_row(&self) -> u32 {
        self.in_row
    }

    /// A good step: the next fault waits the shortest time again.
    pub fn succeed(&mut self) {
        self.in_row = 0;
    }
}

/// Sleeps `total`, in slices, returning early (false) as soon as `stopping()` is true, so a
/// long backoff never delays a shutdown.
pub fn sleep_unless(total: Duration, stopping: impl Fn() -> bool) -> bool {
    let slice = Duration::from_millis(20);
    let deadline = std::time::Instant::now() + total;
    loop {
        if stopping() {
            return false;
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep(slice.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use autodidact_envs::{Info, ProtocolError};

    fn step(obs: Vec<f32>, reward: f64) -> Step {
        Step {
            obs,
            reward,
            terminated: false,
            truncated: false,
            info: Info::new(),
        }
    }

    #[test]
    fn every_unusable_step_is_a_fault_of_its_kind() {
        assert!(check_step(Ok(step(vec![0.0, 1.0], 1.0)), 2).is_ok());
        let kind = |r, dim| check_step(r, dim).unwrap_err().kind;
        assert_eq!(kind(Ok(step(vec![0.0], 1.0)), 2), FaultKind::BadObservation);
        assert_eq!(
            kind(Ok(step(vec![f32::NAN, 0.0], 1.0)), 2),
            FaultKind::BadObservation
        );
        assert_eq!(
            kind(Ok(step(vec![0.0, 0.0], 1e300)), 2),
            FaultKind::BadReward
        );
        assert_eq!(
            kind(Ok(step(vec![0.0, 0.0], f64::NAN)), 2),
            FaultKind::BadReward
        );
        let mut s = step(vec![0.0, 0.0], 0.0);
        s.truncated = true;
        s.info.insert("peer_fault".into(), "timeout".into());
        assert_eq!(kind(Ok(s), 2), FaultKind::Timeout);
        assert_eq!(
            kind(Err(EnvError::Peer("boom".into())), 2),
            FaultKind::EnvError
        );
        assert_eq!(
            kind(Err(ProtocolError::TooLong { limit: 1 }.into()), 2),
            FaultKind::Protocol
        );
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_restarts_after_success() {
        let mut b = Backoff::new(Duration::from_millis(300));
        let waits: Vec<u128> = (0..5).map(|_| b.fault().as_millis()).collect();
        assert_eq!(waits, vec![50, 100, 200, 300, 300]);
        assert_eq!(b.in_row(), 5);
        b.succeed();
        assert_eq!(b.fault().as_millis(), 50);
        for _ in 0..100 {
            b.fault();
        }
        assert_eq!(
            b.fault(),
            Duration::from_millis(300),
            "no overflow after many faults"
        );
    }
}
