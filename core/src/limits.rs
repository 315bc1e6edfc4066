//! Documented bounds on every size a config (or a checkpoint's stored config) can ask for.
//!
//! Sizes reach the core from files and users, and a network is allocated from them. Without
//! bounds, `d_hidden = 2^40` aborts the process on allocation and a product of dimensions can
//! overflow `usize`. These limits are far beyond anything this CPU runtime trains (the
//! benchmarks use 8 experts of 512 × 2048), yet small enough that every product of them fits in
//! `usize` and every check below can be made with checked arithmetic before allocating.
//!
//! [`crate::MoeConfig::validate`] and [`crate::NetworkConfig::validate`] enforce them; a size
//! outside them is a [`crate::CoreError::TooLarge`] (or `Config` for a zero or `top_k > E`).

/// Largest width of any layer: `obs_dim`, `d_model`, `d_hidden`, a head's outputs
/// (2^20 = 1,048,576).
pub const MAX_DIM: usize = 1 << 20;

/// Most experts in one MoE layer (1,024).
pub const MAX_EXPERTS: usize = 1024;

/// Most experts per token (`top_k`), 64: the acting path keeps the chosen experts in a
/// fixed array of this size, so a larger `k` would act differently from how it trained.
pub const MAX_TOP_K: usize = 64;

/// Most residual blocks in one network (256).
pub const MAX_BLOCKS: usize = 256;

/// Most scalar parameters in one network or one MoE layer (2^31 = 2,147,483,648, i.e. 8 GiB
/// of f32 weights, before gradients and AdamW moments), counted with checked arithmetic.
pub const MAX_PARAMS: usize = 1 << 31;
