//! The Access Manager's pure core: challenges, rate-limit buckets, TOTP, login risk rules,
//! sealing of secrets at rest, and policies. No I/O here; the HTTP handlers in `manager/`
//! and `staff/` are the thin shell.

pub mod challenge;
pub mod policy;
pub mod ratelimit;
pub mod risk;
pub mod seal;
pub mod totp;
