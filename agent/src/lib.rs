//! The autodidact agent library: the seams (actor, adder, learner, variable source) and the
//! commands the binary exposes.
