//! The autodidact agent library: the glue where the training core, the environments and the
//! replay store meet, in the seams of DeepMind's Acme:
//!
//! - [`actor::Actor`] chooses actions from the acting weights and reports experience;
//! - [`adder::Adder`] turns that experience into replay writes;
//! - [`learner::Learner`] samples replay, takes gradient steps and produces acting weights;
//! - [`variable::VariableSource`] hands weights from the learner to actors atomically;
//! - [`rate::RateLimiter`] holds actors and learner to the configured replay ratio;
//! - [`policy::Policy`] turns acting weights into actions (exploring or greedy);
//! - [`learners`] is the registry of learner kinds (`[learner] kind`); [`dqn`] is the first;
//! - [`runtime`] is what `train` and the daemon share: the run directory and its checkpoints;
//! - [`train`] runs them together in a resumable run directory.
//!
//! [`daemon`] is how an agent lives: actors acting with the learner (the champion when the gate
//! distrusts it), a learner cutting
//! candidates, the evaluation [`gate`], [`drift`] detection and reflection passes, on one
//! tokio runtime with an HTTP status endpoint.
//!
//! [`rollout`] runs episodes with a simple policy (a plumbing check for new environments).

#![warn(missing_docs)]

pub mod actor;
pub mod adder;
pub mod bounds;
pub mod config;
pub mod daemon;
pub mod dqn;
pub mod drift;
pub mod error;
pub mod eval;
pub mod fault;
pub mod gate;
pub mod learner;
pub mod learners;
pub mod policy;
pub mod rate;
pub mod rollout;
pub mod runtime;
pub mod sac;
pub mod train;
pub mod variable;

pub use error::{AgentError, Result};
