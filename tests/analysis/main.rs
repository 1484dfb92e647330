//! Analysis over the real server: Aggregate against a brute-force oracle,
//! Tail and Export. One test binary, one module per RPC.

#[path = "../common/mod.rs"]
mod common;

mod aggregate;
mod export;
mod tail;
