//! The `arbat` binary's library: configuration and node assembly, so tests can run a node
//! in-process on port 0 as well as start the real binary.
//!
//! # Layout
//!
//! - [`config`]: flags, environment and config file, validated (exit code 64 when not).
//! - [`notify`]: the node's notifier (store, durable queue, workers, outcomes → feed).
//! - [`serve`]: builds a node (store, bus, actors, ABS, gateway) and runs it until shutdown.
//! - [`operations_cli`]: `arbat operations keygen | sign | check` (Operation Studio).
//! - [`abs_cli`]: `arbat abs post`, a back-office client of the reference ABS.

pub mod abs_cli;
pub mod config;
pub mod notify;
pub mod operations_cli;
pub mod serve;
