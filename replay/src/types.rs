//! Plain data types shared by the store, the writer and the sampler.
//!
//! The replay crate deliberately has its own small types instead of the core tensor types, so
//! that the storage format never depends on how the training core lays out memory.

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::error::{ReplayError, Result};

/// Element type of stored observation blobs (always little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dtype {
    /// IEEE single precision, 4 bytes; lossless.
    F32,
    /// IEEE half precision, 2 bytes; for observations whose range and precision allow it.
    F16,
    /// bfloat16, 2 bytes; keeps the f32 range at 8 bits of mantissa.
    Bf16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }

    /// The name stored in the `obs_dtype` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }

    /// Parses an `obs_dtype` column value.
    pub fn parse(s: &str) -> Option<Dtype> {
        match s {
            "f32" => Some(Dtype::F32),
            "f16" => Some(Dtype::F16),
            "bf16" => Some(Dtype::Bf16),
            _ => None,
        }
    }

    /// Rounds values in place to what this dtype can represent.
    ///
    /// The writer rounds at push time so that the in-memory mirror holds exactly what a rebuild
    /// from the file would decode; otherwise sampling would change across a restart.
    pub fn quantize(self, values: &mut [f32]) {
        match self {
            Dtype::F32 => {}
            Dtype::F16 => values
                .iter_mut()
                .for_each(|v| *v = f16::from_f32(*v).to_f32()),
            Dtype::Bf16 => values
                .iter_mut()
                .for_each(|v| *v = bf16::from_f32(*v).to_f32()),
        }
    }

    /// Appends the little-endian encoding of `values` to `out`.
    pub fn encode_into(self, values: &[f32], out: &mut Vec<u8>) {
        out.reserve(values.len() * self.size());
        match self {
            Dtype::F32 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            Dtype::F16 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
            Dtype::Bf16 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        }
    }

    /// Decodes a blob into `out` (appending); `None` if its length is not a whole number of
    /// elements.
    pub fn decode_into(self, blob: &[u8], out: &mut Vec<f32>) -> Option<()> {
        if blob.len() % self.size() != 0 {
            return None;
        }
        match self {
            Dtype::F32 => out.extend(
                blob.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            Dtype::F16 => out.extend(
                blob.chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            Dtype::Bf16 => out.extend(
                blob.chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
        }
        Some(())
    }
}

/// The action space of a run, recorded so that readers can decode the action columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionSpace {
    /// `n` discrete actions `0..n`, stored in `transitions.action_int`.
    Discrete {
        /// Number of actions.
        n: i64,
    },
    /// A continuous vector of `dim` floats, stored as an f32 blob in `transitions.action_vec`.
    Continuous {
        /// Vector length.
        dim: usize,
    },
}

/// One action as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Index of a discrete action.
    Discrete(i64),
    /// A continuous action vector.
    Continuous(Vec<f32>),
}

impl Action {
    /// Borrowed view, as accepted by [`crate::EpisodeWriter::push`].
    pub fn as_ref(&self) -> ActionRef<'_> {
        match self {
            Action::Discrete(a) => ActionRef::Discrete(*a),
            Action::Continuous(v) => ActionRef::Continuous(v),
        }
    }
}

/// A borrowed action, so that pushing a step does not allocate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActionRef<'a> {
    /// Index of a discrete action.
    Discrete(i64),
    /// A continuous action vector.
    Continuous(&'a [f32]),
}

/// How an episode ended, in Gymnasium's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EpisodeEnd {
    /// The MDP reached a terminal state: the value after the last step is zero.
    Terminated,
    /// The episode was cut short (time limit, shutdown): the last state still has value, so
    /// n-step targets bootstrap from the final observation.
    Truncated,
}

/// Most values one observation may hold: 1,048,576 (4 MiB as f32), the product of
/// [`RunSpec::obs_dims`]. A run that declares more is refused when it is created and when a
/// file is read, so that a crafted file cannot make a reader size buffers or headers from
/// absurd dimensions.
pub const MAX_OBS_ELEMENTS: usize = 1 << 20;

/// Most dimensions an observation shape may have (8; images with frame stacks use 3 or 4).
pub const MAX_OBS_RANK: usize = 8;

/// Largest continuous action vector a run may declare: 65,536 values.
pub const MAX_ACTION_DIM: usize = 1 << 16;

/// Longest JSON text accepted in `runs.obs_dims` and `runs.action_space` when a file is read
/// (4,096 bytes); what this crate writes is a few dozen bytes.
pub const MAX_SHAPE_JSON_BYTES: usize = 4096;

/// What a run declares up front; every episode of the run is checked against it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Environment ID, e.g. `CartPole-v1`.
    pub env_id: String,
    /// Observation shape; the stored blob has `product(obs_dims)` elements. At most
    /// [`MAX_OBS_RANK`] dimensions, each at least 1, at most [`MAX_OBS_ELEMENTS`] in all.
    pub obs_dims: Vec<usize>,
    /// Element type of stored observations.
    pub obs_dtype: Dtype,
    /// Action space.
    pub action_space: ActionSpace,
    /// The run configuration, as JSON (free-form).
    pub config: serde_json::Value,
    /// Code version (e.g. git describe) that produced the run.
    pub code_version: String,
}

impl RunSpec {
    /// Number of floats in one observation. For a spec that [`RunSpec::validate`] accepts
    /// (every run the store creates or reads) this is at most [`MAX_OBS_ELEMENTS`]; for an
    /// invalid one it saturates at `usize::MAX` instead of overflowing.
    pub fn obs_len(&self) -> usize {
        self.obs_dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .unwrap_or(usize::MAX)
    }

    /// Checks the shapes against the documented limits: 1 to [`MAX_OBS_RANK`] observation
    /// dimensions, none zero, at most [`MAX_OBS_ELEMENTS`] values in all (checked
    /// arithmetic); a discrete space with `n >= 1`, a continuous one with
    /// `1 <= dim <= MAX_ACTION_DIM`. [`crate::ReplayStore::create_run`] refuses an invalid
    /// spec with [`ReplayError::InvalidArgument`]; reading one from a file gives
    /// [`ReplayError::Corrupt`].
    pub fn validate(&self) -> Result<()> {
        if let Some(problem) = obs_dims_problem(&self.obs_dims) {
            return Err(ReplayError::InvalidArgument(problem));
        }
        if let Some(problem) = self.action_space.problem() {
            return Err(ReplayError::InvalidArgument(problem));
        }
        Ok(())
    }
}

/// What is wrong with an observation shape, if anything.
pub(crate) fn obs_dims_problem(dims: &[usize]) -> Option<String> {
    if dims.is_empty() || dims.len() > MAX_OBS_RANK {
        return Some(format!(
            "observation shape has {} dimensions; 1 to {MAX_OBS_RANK} are allowed",
            dims.len()
        ));
    }
    if dims.contains(&0) {
        return Some(format!("observation shape {dims:?} has a zero dimension"));
    }
    let total = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_OBS_ELEMENTS);
    if total.is_none() {
        return Some(format!(
            "observation shape {dims:?} holds more than {MAX_OBS_ELEMENTS} values"
        ));
    }
    None
}

impl ActionSpace {
    /// What is wrong with the space, if anything.
    pub(crate) fn problem(&self) -> Option<String> {
        match *self {
            ActionSpace::Discrete { n } if n <= 0 => {
                Some(format!("discrete action space needs n > 0, got {n}"))
            }
            ActionSpace::Continuous { dim } if dim == 0 || dim > MAX_ACTION_DIM => Some(format!(
                "continuous action space needs 1 <= dim <= {MAX_ACTION_DIM}, got {dim}"
            )),
            _ => None,
        }
    }

    /// Values per stored action: 0 for discrete (an integer column), `dim` for continuous.
    pub(crate) fn act_len(&self) -> usize {
        match *self {
            ActionSpace::Discrete { .. } => 0,
            ActionSpace::Continuous { dim } => dim,
        }
    }
}

/// A run as recorded in the `runs` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Row id of the run.
    pub id: i64,
    /// What the run declared.
    pub spec: RunSpec,
    /// Start time, Unix seconds.
    pub started_at: f64,
}

/// Current time as Unix seconds; a clock before 1970 is treated as 0 rather than a failure.
pub(crate) fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
