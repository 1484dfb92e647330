//! Tamper evidence (issue 19): every event is leaf `seq` of one RFC 9162
//! Merkle tree. So far: the tree's arithmetic ([`merkle`]) and signed
//! checkpoints ([`note`]); the leaf commitments, the tiles on disk and the
//! `Integrity` service build on them.

pub mod merkle;
pub mod note;
