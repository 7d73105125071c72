//! Local storage: an atomic, encrypted key-value layer and the typed stores built on it.

pub mod kv;
pub mod memory;
