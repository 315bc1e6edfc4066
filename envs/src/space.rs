//! Observation and action spaces, and actions.

use rand::Rng;
use serde_json::{Value, json};

use crate::error::{EnvError, ProtocolError};

/// Largest `n` of a `Discrete` space, and of each component of a `MultiDiscrete` space.
///
/// An agent sizes its network's output (or a table) by `n`; far beyond any action set a
/// value-based agent can learn, and small enough that `n` outputs never strain memory. A
/// peer declaring more is refused at the handshake.
pub const MAX_DISCRETE_N: u64 = 65_536;

/// Most elements a `Box` space may have (the product of its shape, and each dimension on its
/// own), and most components of a `MultiDiscrete` space: 1,048,576 (`2^20`), e.g. a
/// 1024×1024 image, 4 MiB of `f32`s per observation.
///
/// An agent allocates per element (network input, normaliser, replay rows), so a declared
/// size must be bounded before anyone allocates for it.
pub const MAX_SPACE_ELEMENTS: usize = 1 << 20;

/// Most dimensions of a `Box` shape (numpy's own limit is 64).
pub const MAX_SHAPE_DIMS: usize = 64;

/// Elements of a Box of this shape, if within [`MAX_SPACE_ELEMENTS`] and
/// [`MAX_SHAPE_DIMS`].
fn bounded_elements(shape: &[usize]) -> Option<usize> {
    if shape.len() > MAX_SHAPE_DIMS || shape.iter().any(|&d| d > MAX_SPACE_ELEMENTS) {
        return None;
    }
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_SPACE_ELEMENTS)
}

/// A Gymnasium space. Observations are always flat `f32` vectors of `flat_dim()` elements;
/// `shape` keeps the original layout for consumers that care (images, grids).
///
/// The fields are public, so a value can describe a space this crate refuses: [`Space::check`]
/// tells (sizes against [`MAX_DISCRETE_N`], [`MAX_SPACE_ELEMENTS`] and [`MAX_SHAPE_DIMS`];
/// bounds). Spaces declared by a peer are always checked; no method panics on an unchecked
/// space.
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
    /// A box with the same bounds for every element, for shapes known to be small (the
    /// native envs). A shape over the limits gives a box without bounds, which
    /// [`Space::check`] rejects, instead of a huge allocation; [`Space::try_uniform_box`]
    /// reports that as an error.
    pub fn uniform_box(low: f32, high: f32, shape: Vec<usize>) -> Self {
        let n = bounded_elements(&shape).unwrap_or(0);
        Space::Box {
            low: vec![low; n],
            high: vec![high; n],
            shape,
        }
    }

    /// [`Space::uniform_box`] for shapes and bounds from outside: errors if the shape is over
    /// the limits or the bounds are unusable (NaN, `low > high`, empty).
    pub fn try_uniform_box(low: f32, high: f32, shape: Vec<usize>) -> Result<Self, EnvError> {
        if bounded_elements(&shape).is_none() {
            return Err(EnvError::Config(format!(
                "Box of shape {shape:?} exceeds {MAX_SPACE_ELEMENTS} elements or \
                 {MAX_SHAPE_DIMS} dimensions"
            )));
        }
        let s = Self::uniform_box(low, high, shape);
        s.check().map_err(|e| EnvError::Config(e.to_string()))?;
        Ok(s)
    }

    /// A box from per-element bounds of a flat vector; errors if lengths differ or low > high.
    pub fn flat_box(low: Vec<f32>, high: Vec<f32>) -> Result<Self, EnvError> {
        let shape = vec![low.len()];
        let s = Space::Box { low, high, shape };
        s.check().map_err(|e| EnvError::Config(e.to_string()))?;
        Ok(s)
    }

    /// Number of `f32`s an element of this space flattens to (saturating at `usize::MAX` for
    /// an unchecked shape whose product overflows).
    pub fn flat_dim(&self) -> usize {
        match self {
            Space::Discrete { .. } => 1,
            Space::Box { shape, .. } => shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .unwrap_or(usize::MAX),
            Space::MultiDiscrete { nvec } => nvec.len(),
        }
    }

    /// Whether this space is one this crate accepts: sizes within [`MAX_DISCRETE_N`],
    /// [`MAX_SPACE_ELEMENTS`] and [`MAX_SHAPE_DIMS`], no empty choice, and Box bounds with one
    /// bound per element, no NaN, `low <= high`, `low < +inf` and `high > -inf` (so the box
    /// is not empty). Applied to every space a peer declares.
    pub fn check(&self) -> Result<(), ProtocolError> {
        let bad = |m: String| Err(ProtocolError::BadSpace(m));
        match self {
            Space::Discrete { n } if *n == 0 => bad("Discrete n=0".into()),
            Space::Discrete { n } if *n > MAX_DISCRETE_N => bad(format!(
                "Discrete n={n} exceeds the limit of {MAX_DISCRETE_N} actions"
            )),
            Space::Discrete { .. } => Ok(()),
            Space::Box { low, high, shape } => {
                let Some(n) = bounded_elements(shape) else {
                    return bad(format!(
                        "Box of shape {:?} exceeds the limit of {MAX_SPACE_ELEMENTS} elements \
                         or {MAX_SHAPE_DIMS} dimensions",
                        &shape[..shape.len().min(8)]
                    ));
                };
                if low.len() != n || high.len() != n {
                    return bad(format!(
                        "Box shape {shape:?} needs {n} bounds, got low {} high {}",
                        low.len(),
                        high.len()
                    ));
                }
                if let Some(i) = low.iter().zip(high).position(|(l, h)| {
                    l.is_nan()
                        || h.is_nan()
                        || l > h
                        || *l == f32::INFINITY
                        || *h == f32::NEG_INFINITY
                }) {
                    return bad(format!(
                        "Box element {i}: bounds [{}, {}] are NaN or empty",
                        low[i], high[i]
                    ));
                }
                Ok(())
            }
            Space::MultiDiscrete { nvec } => {
                if nvec.len() > MAX_SPACE_ELEMENTS {
                    bad(format!(
                        "MultiDiscrete of {} components exceeds the limit of {MAX_SPACE_ELEMENTS}",
                        nvec.len()
                    ))
                } else if nvec.contains(&0) {
                    bad("MultiDiscrete with a zero".into())
                } else if let Some(n) = nvec.iter().find(|&&n| n > MAX_DISCRETE_N) {
                    bad(format!(
                        "MultiDiscrete component {n} exceeds the limit of {MAX_DISCRETE_N}"
                    ))
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

    /// A uniformly random action. For a space that passes [`Space::check`] the action
    /// validates against it; a Box side with an infinite bound is drawn from a unit-width range
    /// next to the finite bound (or from `[-1, 1]` if both are infinite). Never panics, even
    /// on an unchecked space (whose sample may then be invalid).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Action {
        // `random_range` panics on an empty range: n = 0 only occurs in unchecked spaces.
        let choice = |rng: &mut R, n: u64| rng.random_range(0..n.clamp(1, i64::MAX as u64)) as i64;
        match self {
            Space::Discrete { n } => Action::Discrete(choice(rng, *n)),
            Space::Box { low, high, .. } => Action::Continuous(
                low.iter()
                    .zip(high)
                    .map(|(&l, &h)| sample_between(rng, l, h))
                    .collect(),
            ),
            Space::MultiDiscrete { nvec } => {
                Action::MultiDiscrete(nvec.iter().map(|&n| choice(rng, n)).collect())
            }
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
                            .and_then(|d| usize::try_from(d).ok())
                            .ok_or_else(|| bad("shape entry"))
                    })
                    .collect::<Result<_, _>>()?;
                // Checked before any bound is expanded to one per element.
                let n = bounded_elements(&shape).ok_or_else(|| {
                    bad(&format!(
                        "Box shape exceeds the limit of {MAX_SPACE_ELEMENTS} elements or \
                         {MAX_SHAPE_DIMS} dimensions"
                    ))
                })?;
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

/// A uniform draw from `[l, h]`, computed in `f64` so that `h - l` cannot overflow even for
/// bounds near `±f32::MAX`, and clamped so that rounding back to `f32` stays inside.
fn sample_between<R: Rng + ?Sized>(rng: &mut R, l: f32, h: f32) -> f32 {
    let (lo, hi) = match (l.is_finite(), h.is_finite()) {
        (true, true) => (f64::from(l), f64::from(h)),
        (true, false) => (f64::from(l), f64::from(l).max(0.0) + 1.0),
        (false, true) => (f64::from(h).min(0.0) - 1.0, f64::from(h)),
        (false, false) => (-1.0, 1.0),
    };
    let x = if hi > lo {
        lo + (hi - lo) * rng.random::<f64>()
    } else {
        lo
    };
    // max/min rather than clamp: clamp panics on inverted (unchecked) bounds.
    let y = x.max(lo).min(hi) as f32;
    // A finite x a little beyond f32::MAX rounds to f32::MAX; the bounds are exact f32s, so
    // this clip only undoes rounding.
    if y < l {
        l
    } else if y > h {
        h
    } else {
        y
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
