//! Backends: servers (address, weight, health, admin state, counters), the
//! pool that picks among them, and the health checks that judge them. A
//! pool publishes its availability; it knows nothing of frontends.

pub mod balance;
pub mod connections;
pub mod discovery;
pub mod health;
pub mod pool;
pub mod rebalance;
