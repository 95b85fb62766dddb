//! Library side of the `kakuremichi` binary: pieces that tests and benchmarks use in-process.

pub mod hello;
