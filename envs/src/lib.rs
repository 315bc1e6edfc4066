//! Environments for autodidact.
