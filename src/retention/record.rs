//! The body of a `Retention` log record (`record.rs` kind 2): one change
//! to what is kept (retention, holds) or to what it holds (erasure). Each is applied by the indexer in log order, so replay
//! after a crash applies it again; applying one twice changes nothing.

/// One retention change, with the id the request got and when it was made.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RetentionRecord {
    /// A ULID: names the change in the state file, its answer and its
    /// trail event.
    #[prost(string, tag = "1")]
    pub id: String,
    /// When the change was asked for (µs since the epoch); a drop is
    /// judged at this instant, on replay too.
    #[prost(int64, tag = "2")]
    pub at_micros: i64,
    #[prost(oneof = "Change", tags = "3, 4, 5, 6, 7")]
    pub change: Option<Change>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Change {
    /// Drop the partition of `day` (days since the epoch) if every event
    /// in it is past its rule, no hold matches it and the floor allows.
    #[prost(int64, tag = "3")]
    Drop(i64),
    /// Raise the compliance floor to this many days.
    #[prost(uint32, tag = "4")]
    Lock(u32),
    #[prost(message, tag = "5")]
    Hold(HoldRequest),
    /// Release the hold with this id.
    #[prost(string, tag = "6")]
    Release(String),
    /// Erase or pseudonymise personal fields of the events it names. It
    /// names them by seq, never by the subject: the log keeps no erased
    /// value.
    #[prost(message, tag = "7")]
    Erase(EraseRequest),
}

/// The events of one erasure and what to take from them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EraseRequest {
    /// 0: erase; 1: pseudonymise.
    #[prost(uint32, tag = "1")]
    pub mode: u32,
    /// The parts taken (bit `k` for personal part `k`, `integrity::leaf`).
    #[prost(uint32, tag = "2")]
    pub fields: u32,
    /// The days (partitions) that hold them.
    #[prost(int64, repeated, tag = "3")]
    pub days: Vec<i64>,
    /// Their seqs as `[first, end)` runs, flattened: first, end, first, …
    #[prost(uint64, repeated, tag = "4")]
    pub seq_runs: Vec<u64>,
    /// Types that are never erased.
    #[prost(string, repeated, tag = "5")]
    pub keep_type_prefixes: Vec<String>,
    /// Other events that name the subject in their `query` (the read
    /// trail of searches and exports for it), as runs like `seq_runs`:
    /// their `query` part goes too.
    #[prost(uint64, repeated, tag = "6")]
    pub reference_runs: Vec<u64>,
    /// Released holds that named the subject: their subject goes.
    #[prost(string, repeated, tag = "7")]
    pub scrub_holds: Vec<String>,
}

/// A legal hold: every partition holding an event that matches is kept.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HoldRequest {
    /// Events of this subject (empty: any).
    #[prost(string, tag = "1")]
    pub subject: String,
    /// Events this query-string query matches (empty: any).
    #[prost(string, tag = "2")]
    pub query: String,
    #[prost(string, tag = "3")]
    pub reason: String,
    /// The token id that asked.
    #[prost(string, tag = "4")]
    pub by: String,
}
