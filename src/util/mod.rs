//! Small building blocks with no knowledge of lbd: sharded counters,
//! lock-free histograms, RFC 3339 timestamps.

pub mod clock;
pub mod counter;
pub mod histogram;
