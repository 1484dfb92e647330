//! Tamper evidence (issue 19): every event is leaf `seq` of one RFC 9162
//! Merkle tree. So far: what a leaf commits to ([`leaf`]: salted
//! per-part commitments, `docs/integrity.md`), the tree's arithmetic
//! ([`merkle`]), signed checkpoints ([`note`]) and the `tlog-tiles`
//! layout ([`tiles`]); the tile store on disk and the `Integrity` service
//! build on them. A cluster of several partitions keeps one tree a
//! partition and signs a combined checkpoint over them ([`combined`]).

pub mod audit;
pub mod checkpointer;
pub mod combined;
pub mod compact;
pub mod leaf;
pub mod merkle;
pub mod note;
pub mod opening;
pub mod publish;
pub mod receipt;
pub mod seeds;
pub mod store;
pub mod tiles;
