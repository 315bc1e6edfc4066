//! The CPU training core of autodidact.
//!
//! A small crate of buffers and kernels with layers on top, in the manner of candle: every
//! op's backward pass sits next to its forward pass, and tests compare both against an f64
//! reference. It does no IO beyond reading and writing checkpoints, and knows nothing of
//! SQLite, tokio, processes or the command line.
//!
//! - [`tensor`]: the row-major f32 [`Tensor`].
//! - [`kernels`]: GEMM (through the `gemm` crate), GEMV, GELU, fused AdamW.
//! - [`layers`]: Linear, LayerNorm, ReLU, GELU, softmax / log-softmax.
//! - [`moe`]: the Mixture-of-Experts feed-forward layer and its auxiliary losses.
//! - [`network`]: the config-driven network (normaliser → input → residual blocks → head).
//! - [`dist`]: the tanh-squashed Gaussian policy head of SAC and its backward pass.
//! - [`loss`], [`optim`]: losses (incl. SAC's entropy temperature), AdamW, clipping, the
//!   non-finite step guard.
//! - [`checkpoint`], [`precision`]: safetensors checkpoints; bf16/f16 snapshots for acting.
//! - [`plasticity`]: dormant units, effective feature rank and distance from initialisation,
//!   measured on demand by [`Network::measure_plasticity`].
//! - [`limits`]: the documented bounds on every size a config may ask for.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod dist;
pub mod error;
pub mod kernels;
pub mod layers;
pub mod limits;
pub mod loss;
pub mod moe;
pub mod network;
pub mod normalizer;
pub mod optim;
pub mod param;
pub mod plasticity;
pub mod precision;
pub mod reset;
pub mod tensor;

pub use checkpoint::{LoadedCheckpoint, load_checkpoint, save_checkpoint};
pub use dist::SquashedGaussian;
pub use error::{CoreError, Result};
pub use moe::{MoeConfig, MoeLayer, MoeStats};
pub use network::{BlockConfig, HeadConfig, Network, NetworkConfig};
pub use normalizer::ObsNormalizer;
pub use optim::{AdamW, AdamWConfig, LrSchedule, StepOutcome};
pub use param::{Module, Param};
pub use plasticity::{PlasticityConfig, PlasticityReport};
pub use precision::{ActingNet, Precision, Snapshot};
pub use tensor::Tensor;
