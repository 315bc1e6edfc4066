//! Observation and action spaces, and actions.

use rand::Rng;
use serde_json::{Value, json};

use crate::error::{EnvError, ProtocolError};

/// A Gymnasium space. Observations are always flat `f32` vectors of `flat_dim()` elements;
/// `shape` keeps the original layout for consumers that care (images, grids).
#[derive(Clone, Debug, PartialEq)]
pub enum Space {
    /// Integers `0..n`.
    Discrete {
        /// Number of choices.
        n: u64,
    },
    /// A box of reals, element-wise bounds (infinite bounds allowed), row-major `shape`.
    Box {
        /// Lower bounds, one per element.
        low: Vec<f32>,
        /// Upper bounds, one per element.
        high: Vec<f32>,
        /// The array shape; the product equals `low.len()`.
        shape: Vec<usize>,
    },
    /// Several independent discrete choices, choice `i` in `0..nvec[i]`.
    MultiDiscrete {
        /// Number of choices per component.
        nvec: Vec<u64>,
    },
}

/// An action, validated against an action space before it reaches an env.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// For `Space::Discrete`.
    Discrete(i64),
    /// For `Space::Box`, flat row-major.
    Continuous(Vec<f32>),
    /// For `Space::MultiDiscrete`.
    MultiDiscrete(Vec<i64>),
}

impl Space {
    /// A box with the same bounds for every element.
    pub fn uniform_box(low: f32, high: f32, shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Space::Box {
            low: vec![low; n],
            high: vec![high; n],
            shape,
        }
    }

    /// A box from per-element bounds of a flat vector; errors if lengths differ or low > high.
    pub fn flat_box(low: Vec<f32>, high: Vec<f32>) -> Result<Self, EnvError> {
        let shape = vec![low.len()];
        let s = Space::Box { low, high, shape };
        s.check().map_err(|e| EnvError::Config(e.to_string()))?;
        Ok(s)
    }

    /// Number of `f32`s an element of this space flattens to.
    pub fn flat_dim(&self) -> usize {
        match self {
            Space::Discrete { .. } => 1,
            Space::Box { shape, .. } => shape.iter().product(),
            Space::MultiDiscrete { nvec } => nvec.len(),
        }
    }

    /// Internal consistency of a space description (used on spaces from peers).
    pub fn check(&self) -> Result<(), ProtocolError> {
        match self {
            Space::Discrete { n } if *n == 0 => Err(ProtocolError::BadSpace("Discrete n=0".into())),
            Space::Discrete { .. } => Ok(()),
            Space::Box { low, high, shape } => {
                let n: usize = shape.iter().product();
                if low.len() != n || high.len() != n {
                    return Err(ProtocolError::BadSpace(format!(
                        "Box shape {shape:?} needs {n} bounds, got low {} high {}",
                        low.len(),
                        high.len()
                    )));
                }
                if low
                    .iter()
                    .zip(high)
                    .any(|(l, h)| l.is_nan() || h.is_nan() || l > h)
                {
                    return Err(ProtocolError::BadSpace(
                        "Box bound NaN or low > high".into(),
                    ));
                }
                Ok(())
            }
            Space::MultiDiscrete { nvec } => {
                if nvec.contains(&0) {
                    Err(ProtocolError::BadSpace("MultiDiscrete with a zero".into()))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Checks that `action` belongs to this space.
    pub fn validate(&self, action: &Action) -> Result<(), EnvError> {
        let bad = |m: String| Err(EnvError::InvalidAction(m));
        match (self, action) {
            (Space::Discrete { n }, Action::Discrete(a)) => {
                if *a < 0 || (*a as u64) >= *n {
                    return bad(format!("{a} not in Discrete({n})"));
                }
                Ok(())
            }
            (Space::Box { low, high, .. }, Action::Continuous(v)) => {
                if v.len() != low.len() {
                    return bad(format!("{} elements, Box needs {}", v.len(), low.len()));
                }
                for (i, ((x, l), h)) in v.iter().zip(low).zip(high).enumerate() {
                    if !x.is_finite() || x < l || x > h {
                        return bad(format!("element {i} = {x} outside [{l}, {h}]"));
                    }
                }
                Ok(())
            }
            (Space::MultiDiscrete { nvec }, Action::MultiDiscrete(v)) => {
                if v.len() != nvec.len() {
                    return bad(format!(
                        "{} elements, MultiDiscrete needs {}",
                        v.len(),
                        nvec.len()
                    ));
                }
                for (i, (a, n)) in v.iter().zip(nvec).enumerate() {
                    if *a < 0 || (*a as u64) >= *n {
                        return bad(format!("element {i} = {a} not in 0..{n}"));
                    }
                }
                Ok(())
            }
            (space, action) => bad(format!("{action:?} is not an action of {space:?}")),
        }
    }

    /// Whether `obs` has the right length, is finite where the bounds are finite... only length
    /// and finiteness are checked: Gymnasium envs may legitimately leave their nominal bounds.
    pub fn check_observation(&self, obs: &[f32], field: &str) -> Result<(), ProtocolError> {
        if obs.len() != self.flat_dim() {
            return Err(ProtocolError::WrongShape {
                field: field.into(),
                expected: self.flat_dim(),
                got: obs.len(),
            });
        }
        if obs.iter().any(|x| !x.is_finite()) {
            return Err(ProtocolError::NonFinite {
                field: field.into(),
            });
        }
        Ok(())
    }

    /// A uniformly random action (infinite Box bounds are replaced by a unit normal-ish range).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Action {
        match self {
            Space::Discrete { n } => Action::Discrete(rng.random_range(0..*n) as i64),
            Space::Box { low, high, .. } => Action::Continuous(
                low.iter()
                    .zip(high)
                    .map(|(&l, &h)| {
                        let l = if l.is_finite() { l } else { -1.0 };
                        let h = if h.is_finite() { h } else { 1.0 };
                        if h > l { rng.random_range(l..=h) } else { l }
                    })
                    .collect(),
            ),
            Space::MultiDiscrete { nvec } => Action::MultiDiscrete(
                nvec.iter()
                    .map(|&n| rng.random_range(0..n) as i64)
                    .collect(),
            ),
        }
    }

    /// The protocol's JSON form. Infinite bounds become `null`, because JSON has no infinity.
    pub fn to_json(&self) -> Value {
        let bound = |v: &[f32]| -> Value {
            Value::Array(
                v.iter()
                    .map(|x| {
                        if x.is_finite() {
                            json!(*x as f64)
                        } else {
                            Value::Null
                        }
                    })
                    .collect(),
            )
        };
        match self {
            Space::Discrete { n } => json!({"type": "Discrete", "n": n}),
            Space::Box { low, high, shape } => {
                json!({"type": "Box", "low": bound(low), "high": bound(high), "shape": shape})
            }
            Space::MultiDiscrete { nvec } => json!({"type": "MultiDiscrete", "nvec": nvec}),
        }
    }

    /// Parses the protocol's JSON form (`null` bounds are infinite on their side).
    pub fn from_json(v: &Value) -> Result<Self, ProtocolError> {
        let bad = |m: &str| ProtocolError::BadSpace(m.to_string());
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no `type`"))?;
        let space = match kind {
            "Discrete" => Space::Discrete {
                n: v.get("n")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad("Discrete needs `n`"))?,
            },
            "Box" => {
                let shape: Vec<usize> = v
                    .get("shape")
                    .and_then(Value::as_array)
                    .ok_or_else(|| bad("Box needs `shape`"))?
                    .iter()
                    .map(|d| {
                        d.as_u64()
                            .map(|d| d as usize)
                            .ok_or_else(|| bad("shape entry"))
                    })
                    .collect::<Result<_, _>>()?;
                let n = shape
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .filter(|&n| n <= 1 << 24)
                    .ok_or_else(|| bad("Box too large"))?;
                let bounds = |key: &str, inf: f32| -> Result<Vec<f32>, ProtocolError> {
                    match v.get(key) {
                        Some(Value::Array(a)) => a
                            .iter()
                            .map(|x| match x {
                                Value::Null => Ok(inf),
                                Value::Number(num) => {
                                    num.as_f64().map(|f| f as f32).ok_or_else(|| bad(key))
                                }
                                _ => Err(bad(key)),
                            })
                            .collect(),
                        Some(Value::Number(num)) => {
                            Ok(vec![num.as_f64().ok_or_else(|| bad(key))? as f32; n])
                        }
                        Some(Value::Null) => Ok(vec![inf; n]),
                        _ => Err(bad(key)),
                    }
                };
                Space::Box {
                    low: bounds("low", f32::NEG_INFINITY)?,
                    high: bounds("high", f32::INFINITY)?,
                    shape,
                }
            }
            "MultiDiscrete" => Space::MultiDiscrete {
                nvec: v
                    .get("nvec")
                    .and_then(Value::as_array)
                    .ok_or_else(|| bad("MultiDiscrete needs `nvec`"))?
                    .iter()
                    .map(|d| d.as_u64().ok_or_else(|| bad("nvec entry")))
                    .collect::<Result<_, _>>()?,
            },
            other => return Err(bad(&format!("unsupported space type `{other}`"))),
        };
        space.check()?;
        Ok(space)
    }
}

impl Action {
    /// The action as a flat `f32` vector (discrete choices as numbers), for replay storage.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            Action::Discrete(a) => vec![*a as f32],
            Action::Continuous(v) => v.clone(),
            Action::MultiDiscrete(v) => v.iter().map(|&a| a as f32).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_infinite_bounds() {
        let s = Space::Box {
            low: vec![-1.0, f32::NEG_INFINITY],
            high: vec![1.0, f32::INFINITY],
            shape: vec![2],
        };
        assert_eq!(Space::from_json(&s.to_json()).unwrap(), s);
        let d = Space::MultiDiscrete { nvec: vec![2, 3] };
        assert_eq!(Space::from_json(&d.to_json()).unwrap(), d);
    }

    #[test]
    fn validation_rejects_out_of_space_actions() {
        let d = Space::Discrete { n: 2 };
        assert!(d.validate(&Action::Discrete(1)).is_ok());
        assert!(d.validate(&Action::Discrete(2)).is_err());
        assert!(d.validate(&Action::Discrete(-1)).is_err());
        assert!(d.validate(&Action::Continuous(vec![0.0])).is_err());
        let b = Space::uniform_box(-2.0, 2.0, vec![1]);
        assert!(b.validate(&Action::Continuous(vec![2.0])).is_ok());
        assert!(b.validate(&Action::Continuous(vec![2.5])).is_err());
        assert!(b.validate(&Action::Continuous(vec![f32::NAN])).is_err());
        assert!(b.validate(&Action::Continuous(vec![0.0, 0.0])).is_err());
    }
}
