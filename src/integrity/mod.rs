//! Tamper evidence (issue 19): every event is leaf `seq` of one RFC 9162
//! Merkle tree. This first step holds the tree's arithmetic
//! ([`merkle`]); the commitments, the tiles on disk, the signed
//! checkpoints and the `Integrity` service build on it.

pub mod merkle;
