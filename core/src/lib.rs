//! The CPU training core of autodidact.
