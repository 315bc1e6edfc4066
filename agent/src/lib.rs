//! The autodidact agent library: the glue where the training core, the environments and the
//! replay store meet, and the commands the binary exposes.
//!
//! Today it holds [`rollout`], which runs episodes of any registered environment with a random
//! policy or a network acting through a core snapshot. The actor, adder and learner seams
//! arrive with the agent issue.

#![warn(missing_docs)]

pub mod rollout;
