//! The JSON-lines environment protocol (version [`PROTOCOL_VERSION`]); see `envs/PROTOCOL.md`.
//!
//! One JSON object per line, UTF-8, `\n`-terminated. The runtime sends requests (`op`), the
//! peer answers each with exactly one response (`type`). Decoding never panics on any input
//! (property-tested); everything unexpected becomes a [`ProtocolError`].

use std::io::{BufRead, Write};

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::env::{Env, Info, Observation, Step};
use crate::error::{EnvError, ProtocolError};
use crate::space::{Action, Space};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u64 = 1;

/// Default cap on one line, so a peer cannot make the runtime buffer without bound.
pub const DEFAULT_MAX_LINE: usize = 16 << 20;

/// A request from the runtime to a peer.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// Opens the session.
    Hello {
        /// The runtime's protocol version.
        protocol: u64,
    },
    /// Starts an episode.
    Reset {
        /// Seed for the episode, or continue the peer's random stream.
        seed: Option<u64>,
    },
    /// Applies an action.
    Step {
        /// The action, already validated against the action space.
        action: Action,
    },
    /// Ends the session; the peer answers `closed` and may exit.
    Close,
}

/// A response from a peer.
#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    /// Answer to `hello`.
    Hello {
        /// The peer's protocol version.
        protocol: u64,
        /// Observation space.
        observation_space: Space,
        /// Action space.
        action_space: Space,
        /// Free-form name of the world.
        name: Option<String>,
    },
    /// Answer to `reset`.
    Reset {
        /// First observation.
        obs: Observation,
        /// Side information.
        info: Info,
    },
    /// Answer to `step`.
    Step(Step),
    /// Answer to `close`.
    Closed,
    /// The peer could not serve the request; the session stays usable.
    Error {
        /// Human-readable reason.
        message: String,
    },
}

impl Response {
    /// The wire name of this response type.
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Hello { .. } => "hello",
            Response::Reset { .. } => "reset",
            Response::Step(_) => "step",
            Response::Closed => "closed",
            Response::Error { .. } => "error",
        }
    }
}

#[derive(Deserialize)]
struct RawResponse {
    #[serde(rename = "type")]
    kind: String,
    protocol: Option<u64>,
    observation_space: Option<Value>,
    action_space: Option<Value>,
    name: Option<String>,
    obs: Option<Vec<f64>>,
    reward: Option<f64>,
    terminated: Option<bool>,
    truncated: Option<bool>,
    info: Option<Map<String, Value>>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct RawRequest {
    op: String,
    protocol: Option<u64>,
    seed: Option<u64>,
    action: Option<Value>,
}

fn parse_json<'a, T: Deserialize<'a>>(line: &'a [u8]) -> Result<T, ProtocolError> {
    let text = std::str::from_utf8(line).map_err(|_| ProtocolError::NotUtf8)?;
    serde_json::from_str(text).map_err(|e| {
        // JSON has no NaN/Infinity, but Python writes them as bare words (`NaN` from json,
        // `nan`/`inf` from repr); name that case precisely since it is the usual way a broken
        // simulator leaks a NaN. Only used to label a line that already failed to parse.
        if ["NaN", "nan", "Infinity", "inf"]
            .iter()
            .any(|w| text.contains(w))
        {
            ProtocolError::NonFinite {
                field: "line".into(),
            }
        } else {
            ProtocolError::Malformed(e.to_string())
        }
    })
}

fn finite_obs(v: Vec<f64>, field: &str) -> Result<Observation, ProtocolError> {
    let out: Observation = v.into_iter().map(|x| x as f32).collect();
    if out.iter().any(|x| !x.is_finite()) {
        return Err(ProtocolError::NonFinite {
            field: field.into(),
        });
    }
    Ok(out)
}

fn need<T>(v: Option<T>, field: &str) -> Result<T, ProtocolError> {
    v.ok_or_else(|| ProtocolError::BadField(field.into()))
}

/// Decodes one response line (without or with its trailing newline).
pub fn decode_response(line: &[u8]) -> Result<Response, ProtocolError> {
    let raw: RawResponse = parse_json(line)?;
    Ok(match raw.kind.as_str() {
        "hello" => Response::Hello {
            protocol: need(raw.protocol, "protocol")?,
            observation_space: Space::from_json(&need(
                raw.observation_space,
                "observation_space",
            )?)?,
            action_space: Space::from_json(&need(raw.action_space, "action_space")?)?,
            name: raw.name,
        },
        "reset" => Response::Reset {
            obs: finite_obs(need(raw.obs, "obs")?, "obs")?,
            info: raw.info.unwrap_or_default(),
        },
        "step" => {
            let reward = need(raw.reward, "reward")?;
            if !reward.is_finite() {
                return Err(ProtocolError::NonFinite {
                    field: "reward".into(),
                });
            }
            Response::Step(Step {
                obs: finite_obs(need(raw.obs, "obs")?, "obs")?,
                reward,
                terminated: need(raw.terminated, "terminated")?,
                truncated: need(raw.truncated, "truncated")?,
                info: raw.info.unwrap_or_default(),
            })
        }
        "closed" => Response::Closed,
        "error" => Response::Error {
            message: raw.message.unwrap_or_else(|| "(no message)".into()),
        },
        other => return Err(ProtocolError::UnknownMessage(truncate(other))),
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn action_from_json(v: &Value, space: &Space) -> Result<Action, ProtocolError> {
    let bad = || ProtocolError::BadField("action".into());
    let ints = |v: &Value| -> Result<Vec<i64>, ProtocolError> {
        v.as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|x| x.as_i64().ok_or_else(bad))
            .collect()
    };
    Ok(match space {
        Space::Discrete { .. } => Action::Discrete(v.as_i64().ok_or_else(bad)?),
        Space::MultiDiscrete { .. } => Action::MultiDiscrete(ints(v)?),
        Space::Box { .. } => {
            let xs = match v {
                Value::Array(a) => a
                    .iter()
                    .map(|x| x.as_f64().ok_or_else(bad))
                    .collect::<Result<Vec<_>, _>>()?,
                Value::Number(n) => vec![n.as_f64().ok_or_else(bad)?],
                _ => return Err(bad()),
            };
            Action::Continuous(xs.into_iter().map(|x| x as f32).collect())
        }
    })
}

/// Decodes one request line; the action is read in the shape `action_space` calls for.
pub fn decode_request(line: &[u8], action_space: &Space) -> Result<Request, ProtocolError> {
    let raw: RawRequest = parse_json(line)?;
    Ok(match raw.op.as_str() {
        "hello" => Request::Hello {
            protocol: need(raw.protocol, "protocol")?,
        },
        "reset" => Request::Reset { seed: raw.seed },
        "step" => Request::Step {
            action: action_from_json(&need(raw.action, "action")?, action_space)?,
        },
        "close" => Request::Close,
        other => return Err(ProtocolError::UnknownMessage(truncate(other))),
    })
}

fn action_json(a: &Action) -> Value {
    match a {
        Action::Discrete(i) => json!(i),
        Action::Continuous(v) => json!(v),
        Action::MultiDiscrete(v) => json!(v),
    }
}

/// Appends the line for `req` (with its newline) to `out`.
pub fn encode_request(req: &Request, out: &mut Vec<u8>) {
    // Steps are the hot path: format the common discrete case by hand, no Value tree.
    if let Request::Step {
        action: Action::Discrete(a),
    } = req
    {
        let _ = writeln!(out, "{{\"op\":\"step\",\"action\":{a}}}");
        return;
    }
    let v = match req {
        Request::Hello { protocol } => json!({"op": "hello", "protocol": protocol}),
        Request::Reset { seed } => json!({"op": "reset", "seed": seed}),
        Request::Step { action } => json!({"op": "step", "action": action_json(action)}),
        Request::Close => json!({"op": "close"}),
    };
    // Writing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &v);
    out.push(b'\n');
}

fn obs_json(obs: &[f32]) -> Value {
    Value::Array(obs.iter().map(|&x| json!(x)).collect())
}

/// Appends the line for `resp` (with its newline) to `out`. Non-finite numbers are written as
/// `null`, which the decoder rejects: a NaN never passes silently.
pub fn encode_response(resp: &Response, out: &mut Vec<u8>) {
    let v = match resp {
        Response::Hello {
            protocol,
            observation_space,
            action_space,
            name,
        } => json!({"type": "hello", "protocol": protocol,
            "observation_space": observation_space.to_json(),
            "action_space": action_space.to_json(), "name": name}),
        Response::Reset { obs, info } => {
            json!({"type": "reset", "obs": obs_json(obs), "info": info})
        }
        Response::Step(s) => json!({"type": "step", "obs": obs_json(&s.obs), "reward": s.reward,
            "terminated": s.terminated, "truncated": s.truncated, "info": s.info}),
        Response::Closed => json!({"type": "closed"}),
        Response::Error { message } => json!({"type": "error", "message": message}),
    };
    let _ = serde_json::to_writer(&mut *out, &v);
    out.push(b'\n');
}

/// Serves `env` to one runtime over a reader/writer pair (a socket, or stdin/stdout), until
/// `close` or end of input. This is how a Rust world is offered to a remote runtime, and the
/// reference peer for tests. Requests that fail are answered with `error` and serving goes on;
/// only IO failures end it.
pub fn serve<E: Env + ?Sized, R: BufRead, W: Write>(
    env: &mut E,
    name: &str,
    mut input: R,
    mut output: W,
) -> Result<(), EnvError> {
    let mut line = Vec::new();
    let mut out = Vec::new();
    loop {
        line.clear();
        out.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(|e| EnvError::io("serve: read request", e))?;
        if n == 0 {
            return Ok(());
        }
        let resp = match decode_request(&line, env.action_space()) {
            Ok(Request::Hello { protocol }) if protocol != PROTOCOL_VERSION => Response::Error {
                message: format!(
                    "protocol {protocol} not supported, this peer speaks {PROTOCOL_VERSION}"
                ),
            },
            Ok(Request::Hello { .. }) => Response::Hello {
                protocol: PROTOCOL_VERSION,
                observation_space: env.observation_space().clone(),
                action_space: env.action_space().clone(),
                name: Some(name.to_string()),
            },
            Ok(Request::Reset { seed }) => match env.reset(seed) {
                Ok((obs, info)) => Response::Reset { obs, info },
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            },
            Ok(Request::Step { action }) => match env.step(&action) {
                Ok(s) => Response::Step(s),
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            },
            Ok(Request::Close) => {
                encode_response(&Response::Closed, &mut out);
                output
                    .write_all(&out)
                    .map_err(|e| EnvError::io("serve: write", e))?;
                output
                    .flush()
                    .map_err(|e| EnvError::io("serve: flush", e))?;
                return env.close();
            }
            Err(e) => Response::Error {
                message: e.to_string(),
            },
        };
        encode_response(&resp, &mut out);
        output
            .write_all(&out)
            .map_err(|e| EnvError::io("serve: write", e))?;
        output
            .flush()
            .map_err(|e| EnvError::io("serve: flush", e))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_response_round_trips() {
        let s = Step {
            obs: vec![0.1, -2.5, 3.0e-7],
            reward: 1.0,
            terminated: true,
            truncated: false,
            info: Info::new(),
        };
        let mut buf = Vec::new();
        encode_response(&Response::Step(s.clone()), &mut buf);
        assert_eq!(decode_response(&buf).unwrap(), Response::Step(s));
    }

    #[test]
    fn python_nan_is_named_non_finite() {
        let line =
            br#"{"type":"step","obs":[NaN,1.0],"reward":1.0,"terminated":false,"truncated":false}"#;
        assert!(matches!(
            decode_response(line),
            Err(ProtocolError::NonFinite { .. })
        ));
        let nan_encoded = {
            let mut b = Vec::new();
            encode_response(
                &Response::Reset {
                    obs: vec![f32::NAN],
                    info: Info::new(),
                },
                &mut b,
            );
            b
        };
        assert!(decode_response(&nan_encoded).is_err());
    }

    #[test]
    fn unknown_type_and_missing_fields_are_typed() {
        assert_eq!(
            decode_response(br#"{"type":"teleport"}"#),
            Err(ProtocolError::UnknownMessage("teleport".into()))
        );
        assert_eq!(
            decode_response(br#"{"type":"step","obs":[1.0]}"#),
            Err(ProtocolError::BadField("reward".into()))
        );
    }

    #[test]
    fn requests_round_trip() {
        let space = Space::uniform_box(-1.0, 1.0, vec![2]);
        for req in [
            Request::Hello { protocol: 1 },
            Request::Reset { seed: Some(7) },
            Request::Reset { seed: None },
            Request::Step {
                action: Action::Continuous(vec![0.5, -0.25]),
            },
            Request::Close,
        ] {
            let mut b = Vec::new();
            encode_request(&req, &mut b);
            assert_eq!(decode_request(&b, &space).unwrap(), req);
        }
        let mut b = Vec::new();
        encode_request(
            &Request::Step {
                action: Action::Discrete(3),
            },
            &mut b,
        );
        assert_eq!(
            decode_request(&b, &Space::Discrete { n: 4 }).unwrap(),
            Request::Step {
                action: Action::Discrete(3)
            }
        );
    }
}
