//! The Access Manager's pure core: challenges, rate-limit buckets, TOTP and policies.
//! No I/O here; the HTTP handlers in `manager.rs` and `staff.rs` are the thin shell.

pub mod challenge;
pub mod policy;
pub mod ratelimit;
pub mod totp;
