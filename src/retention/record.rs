//! The body of a `Retention` log record (`record.rs` kind 2): one change
//! to what is kept. Each is applied by the indexer in log order, so replay
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
    #[prost(oneof = "Change", tags = "3, 4, 5, 6")]
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
