//! The Tantivy schema and the one place an `AuditEvent` becomes a document.
//!
//! Only `body` is stored: the whole event, prost-encoded, in the zstd doc
//! store. Every other field is indexed (and some fast) but never stored, so
//! no value is kept twice.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

use prost::Message;
use tantivy::schema::{
    Field, IndexRecordOption, IpAddrOptions, JsonObjectOptions, NumericOptions, OwnedValue, Schema,
    TextFieldIndexing, TextOptions, FAST, STORED, STRING,
};
use tantivy::TantivyDocument;

use crate::proto::AuditEvent;

/// Field names, as `query` strings name them: the proto field names, with
/// `ip` and `source_name` for the source.
pub mod names {
    pub const ID: &str = "id";
    pub const TIME: &str = "time";
    pub const RECEIVED: &str = "received";
    pub const TYPE: &str = "type";
    pub const ACTION: &str = "action";
    pub const ACCESS_ID: &str = "access_id";
    pub const SUBJECT: &str = "subject";
    pub const SOURCE_NAME: &str = "source_name";
    pub const IP: &str = "ip";
    pub const FORWARDED_FOR: &str = "forwarded_for";
    pub const RESOURCE: &str = "resource";
    pub const QUERY: &str = "query";
    pub const STATUS: &str = "status";
    pub const ERROR_ID: &str = "error_id";
    pub const ERROR_MESSAGE: &str = "error_message";
    pub const BEFORE: &str = "before";
    pub const AFTER: &str = "after";
    pub const ATTRIBUTES: &str = "attributes";
    pub const TEXT: &str = "text";
    pub const SEQ: &str = "seq";
    pub const BATCH_ID: &str = "batch_id";
    pub const BODY: &str = "body";
}

/// The schema's fields, resolved once.
#[derive(Debug, Clone)]
pub struct AuditSchema {
    pub schema: Schema,
    pub id: Field,
    /// Event time, microseconds since the epoch (i64, not a Tantivy date: the
    /// inverted index truncates dates to seconds, and ranges must be exact).
    pub time: Field,
    pub received: Field,
    pub type_: Field,
    pub action: Field,
    pub access_id: Field,
    pub subject: Field,
    pub source_name: Field,
    /// IPv4 is indexed in its IPv4-mapped IPv6 form, so both spellings of
    /// an address are one term.
    pub ip: Field,
    pub forwarded_for: Field,
    pub resource: Field,
    pub query: Field,
    pub status: Field,
    pub error_id: Field,
    pub error_message: Field,
    pub before: Field,
    pub after: Field,
    pub attributes: Field,
    /// Every string field but the addresses, for free-text search.
    pub text: Field,
    /// Log-order sequence number (`messages::event_seq`): tie-break for
    /// equal times, and the snapshot that keeps paging stable.
    pub seq: Field,
    pub batch_id: Field,
    pub body: Field,
}

impl Default for AuditSchema {
    fn default() -> Self {
        Self::new()
    }
}

impl AuditSchema {
    pub fn new() -> Self {
        use names::*;
        let mut b = Schema::builder();
        let exact_i64 = NumericOptions::default().set_indexed().set_fast();
        // Words only: no frequencies or positions, since results are ordered
        // by time, never by score.
        let words = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("default")
                .set_index_option(IndexRecordOption::Basic),
        );
        // Positions kept on the long text fields so `query` can use phrases.
        let phrases = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("default")
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        );
        let map = JsonObjectOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("raw")
                .set_index_option(IndexRecordOption::Basic),
        );
        let id = b.add_text_field(ID, STRING);
        let time = b.add_i64_field(TIME, exact_i64.clone());
        let received = b.add_i64_field(RECEIVED, exact_i64.clone());
        let type_ = b.add_text_field(TYPE, STRING);
        let action = b.add_text_field(ACTION, STRING);
        let access_id = b.add_text_field(ACCESS_ID, STRING);
        let subject = b.add_text_field(SUBJECT, STRING);
        let source_name = b.add_text_field(SOURCE_NAME, STRING);
        let ip = b.add_ip_addr_field(IP, IpAddrOptions::default().set_indexed().set_fast());
        let forwarded_for = b.add_text_field(FORWARDED_FOR, STRING);
        let resource = b.add_text_field(RESOURCE, STRING);
        let query = b.add_json_field(QUERY, map.clone());
        let status = b.add_i64_field(STATUS, exact_i64);
        let error_id = b.add_text_field(ERROR_ID, STRING);
        let error_message = b.add_text_field(ERROR_MESSAGE, phrases.clone());
        let before = b.add_text_field(BEFORE, phrases.clone());
        let after = b.add_text_field(AFTER, phrases);
        let attributes = b.add_json_field(ATTRIBUTES, map);
        let text = b.add_text_field(TEXT, words);
        let seq = b.add_u64_field(SEQ, FAST);
        let batch_id = b.add_text_field(BATCH_ID, STRING);
        let body = b.add_bytes_field(BODY, STORED);
        AuditSchema {
            schema: b.build(),
            id,
            time,
            received,
            type_,
            action,
            access_id,
            subject,
            source_name,
            ip,
            forwarded_for,
            resource,
            query,
            status,
            error_id,
            error_message,
            before,
            after,
            attributes,
            text,
            seq,
            batch_id,
            body,
        }
    }

    /// The document for `event`, which must be validated and complete (id,
    /// time and received set). `body` is reused between calls to save an
    /// allocation per event.
    pub fn document(
        &self,
        event: &AuditEvent,
        seq: u64,
        batch_id: &str,
        body: &mut Vec<u8>,
    ) -> TantivyDocument {
        let mut doc = TantivyDocument::new();
        doc.add_text(self.id, &event.id);
        doc.add_i64(self.time, timestamp_micros(event.time.as_ref()));
        doc.add_i64(self.received, timestamp_micros(event.received.as_ref()));
        doc.add_i64(self.status, i64::from(event.status));
        doc.add_u64(self.seq, seq);
        if !batch_id.is_empty() {
            doc.add_text(self.batch_id, batch_id);
        }
        let keyword_fields = [
            (self.type_, &event.r#type),
            (self.action, &event.action),
            (self.access_id, &event.access_id),
            (self.subject, &event.subject),
            (self.resource, &event.resource),
            (self.error_id, &event.error_id),
            (self.forwarded_for, &event.forwarded_for),
        ];
        for (field, value) in keyword_fields {
            if !value.is_empty() {
                doc.add_text(field, value);
            }
        }
        for (field, value) in [
            (self.error_message, &event.error_message),
            (self.before, &event.before),
            (self.after, &event.after),
        ] {
            if !value.is_empty() {
                doc.add_text(field, value);
            }
        }
        if let Some(source) = &event.source {
            if !source.name.is_empty() {
                doc.add_text(self.source_name, &source.name);
            }
            if let Ok(ip) = source.ip.parse::<IpAddr>() {
                doc.add_ip_addr(self.ip, to_v6(ip));
            }
        }
        if !event.query.is_empty() {
            doc.add_object(self.query, to_object(&event.query));
        }
        if !event.attributes.is_empty() {
            doc.add_object(self.attributes, to_object(&event.attributes));
        }
        for word_source in text_values(event) {
            doc.add_text(self.text, word_source);
        }
        body.clear();
        event.encode(body).expect("a Vec grows as needed");
        doc.add_bytes(self.body, body.as_slice());
        doc
    }
}

/// The string values free text searches: all but the addresses.
fn text_values(event: &AuditEvent) -> impl Iterator<Item = &str> {
    let singles = [
        &event.id,
        &event.r#type,
        &event.action,
        &event.access_id,
        &event.subject,
        &event.resource,
        &event.error_id,
        &event.error_message,
        &event.before,
        &event.after,
    ];
    let source_name = event.source.as_ref().map(|s| s.name.as_str());
    singles
        .into_iter()
        .map(String::as_str)
        .chain(source_name)
        .chain(event.query.values().map(String::as_str))
        .chain(event.attributes.values().map(String::as_str))
        .filter(|s| !s.is_empty())
}

fn to_object(map: &std::collections::HashMap<String, String>) -> BTreeMap<String, OwnedValue> {
    map.iter()
        .map(|(k, v)| (k.clone(), OwnedValue::Str(v.clone())))
        .collect()
}

/// IPv4 addresses become IPv4-mapped IPv6, the form Tantivy indexes.
pub fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Microseconds since the epoch; 0 for a missing timestamp. Saturates at
/// the ends of i64: callers validate ranges, this must never overflow on a
/// hostile value.
pub fn timestamp_micros(ts: Option<&prost_types::Timestamp>) -> i64 {
    ts.map_or(0, |ts| {
        ts.seconds
            .saturating_mul(1_000_000)
            .saturating_add(i64::from(ts.nanos) / 1000)
    })
}

pub fn micros_to_timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}
