//! Tamper evidence (issue 19): every event is leaf `seq` of one RFC 9162
//! Merkle tree. So far: the tree's arithmetic ([`merkle`]), signed
//! checkpoints ([`note`]) and the `tlog-tiles` layout ([`tiles`]); the
//! leaf commitments, the tile store on disk and the `Integrity` service
//! build on them.

pub mod merkle;
pub mod note;
pub mod tiles;
