//! Hush test support: the simulated network used by the end-to-end and simulation tests, and the
//! protocol test-vector generator.

pub mod sim;
pub mod vectors;
