//! The Tantivy schema and the one place an `AuditEvent` becomes a document.
//!
//! Only `body` and `salt` are stored: the event, prost-encoded, in the
//! events store (`docstore`; Tantivy's doc store in partitions created
//! before data format 5), less its `time` and `received`, which the fast fields
//! hold already (`encode_body`, `restore_times`), and the event's salt
//! (`integrity::leaf`). Every other field is indexed (and some fast) but
//! never stored, so no value is kept twice.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

use prost::Message;

use sha2::{Digest, Sha256};
use tantivy::schema::{
    BytesOptions, Field, IndexRecordOption, IpAddrOptions, JsonObjectOptions, NumericOptions,
    OwnedValue, Schema, TextFieldIndexing, TextOptions, FAST, STORED,
};
use tantivy::tokenizer::{Token, TokenStream, Tokenizer};
use tantivy::{Index, TantivyDocument};

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
    pub const SALT: &str = "salt";
}

/// The schema's fields, resolved once.
#[derive(Debug, Clone)]
pub struct AuditSchema {
    pub schema: Schema,
    /// Indexed as `id_key(id)` (the `ID_TOKENIZER`), not as the id itself.
    pub id: Field,
    /// Event time, microseconds since the epoch: an i64 fast field (not a
    /// Tantivy date, whose precision is a setting to get wrong; ranges must
    /// be exact to the microsecond).
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
    /// Every string field but the id and the addresses, for free-text
    /// search.
    pub text: Field,
    /// The event's dense seq (its place in the log's order, from 0): the
    /// tie-break for equal times, the snapshot that keeps paging stable,
    /// and `AuditEvent.seq` on the way out.
    pub seq: Field,
    pub batch_id: Field,
    pub body: Field,
    /// The event's salt, for its leaf in the Merkle tree. The last field,
    /// so that the fields before it keep their numbers in an index of
    /// data format 2, which `auditd migrate` reads with this schema.
    pub salt: Field,
}

impl Default for AuditSchema {
    fn default() -> Self {
        Self::new()
    }
}

impl AuditSchema {
    /// The schema of a partition that keeps its events in the events
    /// store (`docstore`, every partition created since data format 5):
    /// the same fields, `body` and `salt` not stored by Tantivy.
    pub fn events_store_schema(&self) -> Schema {
        let mut b = Schema::builder();
        for (field, entry) in self.schema.fields() {
            if field == self.body || field == self.salt {
                b.add_bytes_field(entry.name(), BytesOptions::default());
            } else {
                b.add_field(entry.clone());
            }
        }
        b.build()
    }

    pub fn new() -> Self {
        use names::*;
        let mut b = Schema::builder();
        let exact_i64 = NumericOptions::default().set_indexed().set_fast();
        // Times are fast fields only: a range query reads the fast field
        // whenever there is one, so an inverted index of (nearly unique)
        // times would cost disk and indexing time for no query.
        let time_micros = NumericOptions::default().set_fast();
        // No field keeps field norms (a byte per document and field): they
        // only serve scoring, and results are ordered by time, never by
        // score. For the same reason the words keep no frequencies.
        let indexing = |tokenizer, record| {
            TextFieldIndexing::default()
                .set_tokenizer(tokenizer)
                .set_index_option(record)
                .set_fieldnorms(false)
        };
        let keyword =
            TextOptions::default().set_indexing_options(indexing("raw", IndexRecordOption::Basic));
        let words = TextOptions::default()
            .set_indexing_options(indexing("default", IndexRecordOption::Basic));
        // Positions kept on the long text fields so `query` can use phrases.
        let phrases = TextOptions::default().set_indexing_options(indexing(
            "default",
            IndexRecordOption::WithFreqsAndPositions,
        ));
        let map = JsonObjectOptions::default()
            .set_indexing_options(indexing("raw", IndexRecordOption::Basic));
        let id = b.add_text_field(
            ID,
            TextOptions::default()
                .set_indexing_options(indexing(ID_TOKENIZER, IndexRecordOption::Basic)),
        );
        let time = b.add_i64_field(TIME, time_micros.clone());
        let received = b.add_i64_field(RECEIVED, time_micros);
        let type_ = b.add_text_field(TYPE, keyword.clone());
        let action = b.add_text_field(ACTION, keyword.clone());
        let access_id = b.add_text_field(ACCESS_ID, keyword.clone());
        let subject = b.add_text_field(SUBJECT, keyword.clone());
        let source_name = b.add_text_field(SOURCE_NAME, keyword.clone());
        // Indexed only: exact addresses and CIDR ranges both read the term
        // dictionary, so a fast column of addresses would serve no query.
        let ip = b.add_ip_addr_field(IP, IpAddrOptions::default().set_indexed());
        let forwarded_for = b.add_text_field(FORWARDED_FOR, keyword.clone());
        let resource = b.add_text_field(RESOURCE, keyword.clone());
        let query = b.add_json_field(QUERY, map.clone());
        let status = b.add_i64_field(STATUS, exact_i64);
        let error_id = b.add_text_field(ERROR_ID, keyword.clone());
        let error_message = b.add_text_field(ERROR_MESSAGE, phrases.clone());
        let before = b.add_text_field(BEFORE, phrases.clone());
        let after = b.add_text_field(AFTER, phrases);
        let attributes = b.add_json_field(ATTRIBUTES, map);
        let text = b.add_text_field(TEXT, words);
        let seq = b.add_u64_field(SEQ, FAST);
        let batch_id = b.add_text_field(BATCH_ID, keyword);
        let body = b.add_bytes_field(BODY, STORED);
        let salt = b.add_bytes_field(SALT, STORED);
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
            salt,
        }
    }

    /// The document for `event`, which must be validated and complete (id,
    /// time and received set). `body` is reused between calls to save an
    /// allocation per event. `event` is lent mutably only for `encode_body`
    /// and comes back unchanged.
    pub fn document(
        &self,
        event: &mut AuditEvent,
        seq: u64,
        batch_id: &str,
        opening: Option<&[u8]>,
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
        encode_body(event, body);
        doc.add_bytes(self.body, body.as_slice());
        if let Some(opening) = opening {
            doc.add_bytes(self.salt, opening);
        }
        doc
    }
}

/// Encodes `event` into `body` as stored: its `time` and `received` keep
/// only their nanoseconds below the microsecond, and only when there are
/// any, since the fast fields hold the microseconds. That is about 6 bytes
/// an event after compression (the times are the least compressible part
/// of the body after the id). `event` is the same again on return: the
/// times are swapped out and back rather than the event cloned.
pub fn encode_body(event: &mut AuditEvent, body: &mut Vec<u8>) {
    let residue = |ts: &Option<prost_types::Timestamp>| {
        ts.as_ref()
            .map(|t| t.nanos % 1000)
            .filter(|nanos| *nanos != 0)
            .map(|nanos| prost_types::Timestamp { seconds: 0, nanos })
    };
    let time_residue = residue(&event.time);
    let received_residue = residue(&event.received);
    let time = std::mem::replace(&mut event.time, time_residue);
    let received = std::mem::replace(&mut event.received, received_residue);
    body.clear();
    event.encode(body).expect("a Vec grows as needed");
    event.time = time;
    event.received = received;
}

/// Puts back into a decoded body the times `encode_body` left out, from
/// the `time` and `received` fast fields (microseconds).
pub fn restore_times(event: &mut AuditEvent, time_micros: i64, received_micros: i64) {
    let restore = |residue: Option<prost_types::Timestamp>, micros: i64| {
        let mut ts = micros_to_timestamp(micros);
        // Below 1,000 nanoseconds, so the sum stays below a second. The
        // `% 1000` also reads bodies written before times were left out,
        // whose full nanoseconds end in the same residue.
        ts.nanos += residue.map_or(0, |r| r.nanos % 1000);
        Some(ts)
    };
    event.time = restore(event.time.take(), time_micros);
    event.received = restore(event.received.take(), received_micros);
}

/// The event a document stores: its body decoded, the times put back
/// from the fast fields' microseconds, and its seq.
pub fn decode_stored(
    body: &[u8],
    time_micros: i64,
    received_micros: i64,
    seq: u64,
) -> Result<AuditEvent, prost::DecodeError> {
    let mut event = AuditEvent::decode(body)?;
    restore_times(&mut event, time_micros, received_micros);
    event.seq = seq;
    Ok(event)
}

/// The tokenizer of the `id` field.
pub const ID_TOKENIZER: &str = "auditd_id";

/// Registers auditd's own tokenizers with `index`: every index with this
/// schema (a partition, the query parser's) needs them before it can index
/// or parse.
pub fn register_tokenizers(index: &Index) {
    index
        .tokenizers()
        .register(ID_TOKENIZER, IdTokenizer::default());
}

/// The term an event id is indexed as: the first 64 bits of its SHA-256,
/// seven bits to a character (ASCII, so a valid `str` term, and as dense
/// as one can be).
///
/// Why not the id itself: ids are unique, so each is one more term in the
/// dictionary, and a 25-character random id took a fifth of the index
/// there. Ten random bytes take about a third of that (BENCHMARKS.md,
/// Disk).
/// Two ids can share a key (a chance of n / 2^64 for a given id among n
/// events); `Searcher::get` therefore compares the stored id, and a
/// `query` of `id:x` could, that rarely, also return the other event.
/// SHA-256 rather than a faster hash so that nobody can craft an id that
/// shares a given id's key.
pub fn id_key(id: &str) -> String {
    let mut key = String::with_capacity(10);
    push_id_key(id, &mut key);
    key
}

/// Appends `id_key(id)` to `key`: the tokenizer reuses its token's buffer
/// rather than allocating a key per event.
fn push_id_key(id: &str, key: &mut String) {
    let digest = Sha256::digest(id.as_bytes());
    let mut bits = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    for _ in 0..10 {
        key.push(char::from((bits & 0x7f) as u8));
        bits >>= 7;
    }
}

/// One token a value: its `id_key`.
#[derive(Clone, Default)]
pub struct IdTokenizer {
    token: Token,
}

pub struct IdTokenStream<'a> {
    token: &'a mut Token,
    has_token: bool,
}

impl Tokenizer for IdTokenizer {
    type TokenStream<'a> = IdTokenStream<'a>;
    fn token_stream<'a>(&'a mut self, text: &str) -> IdTokenStream<'a> {
        self.token.reset();
        self.token.position = 0;
        self.token.position_length = 1;
        self.token.offset_to = text.len();
        self.token.text.clear();
        push_id_key(text, &mut self.token.text);
        IdTokenStream {
            token: &mut self.token,
            has_token: true,
        }
    }
}

impl TokenStream for IdTokenStream<'_> {
    fn advance(&mut self) -> bool {
        std::mem::replace(&mut self.has_token, false)
    }

    fn token(&self) -> &Token {
        self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        self.token
    }
}

/// The string values free text searches: all but the addresses and the
/// event id. An id is one unique term per event; kept here as well as in
/// `id` it was a third of the term dictionary, and an id is looked up by
/// `id:` or GetEvent, not by free text.
fn text_values(event: &AuditEvent) -> impl Iterator<Item = &str> {
    let singles = [
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

fn to_object(map: &BTreeMap<String, String>) -> BTreeMap<String, OwnedValue> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::collector::Count;
    use tantivy::query::{QueryParser, TermQuery};
    use tantivy::schema::Term;

    fn event(id: &str, second: i64) -> AuditEvent {
        AuditEvent {
            id: id.to_owned(),
            time: Some(micros_to_timestamp(second * 1_000_000)),
            received: Some(micros_to_timestamp(second * 1_000_000)),
            action: "events.get".to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn bodies_leave_out_whole_microseconds_and_restore_exactly() {
        let mut body = Vec::new();
        for (time_nanos, received_nanos) in [(0, 0), (123_456_789, 5_000), (999_999_999, 999_999)] {
            let mut e = event("x", 1_700_000_000);
            e.time.as_mut().unwrap().nanos = time_nanos;
            e.received.as_mut().unwrap().nanos = received_nanos;
            let sent = e.clone();
            encode_body(&mut e, &mut body);
            assert_eq!(e, sent, "the event comes back unchanged");
            let mut stored = AuditEvent::decode(body.as_slice()).unwrap();
            assert_eq!(
                stored.time.as_ref().map(|t| (t.seconds, t.nanos)),
                (time_nanos % 1000 != 0).then_some((0, time_nanos % 1000)),
            );
            restore_times(
                &mut stored,
                timestamp_micros(sent.time.as_ref()),
                timestamp_micros(sent.received.as_ref()),
            );
            assert_eq!(stored, sent);
        }
        let mut whole = event("x", 1_700_000_000);
        let mut full = Vec::new();
        whole.encode(&mut full).unwrap();
        encode_body(&mut whole, &mut body);
        assert!(
            body.len() + 12 <= full.len(),
            "{} vs {}",
            body.len(),
            full.len()
        );
    }

    #[test]
    fn id_keys_are_fixed_ascii_and_differ() {
        let key = id_key("ckpkb85gpsol7lvmd2kdzoy1q");
        assert_eq!(key.len(), 10);
        assert!(key.is_ascii());
        // The key is on disk: it must never change between versions.
        assert_eq!(key, id_key("ckpkb85gpsol7lvmd2kdzoy1q"));
        assert_eq!(
            key.bytes().collect::<Vec<_>>(),
            // Python: hashlib.sha256(id).digest()[:8], big-endian, 7 bits at a time from the low end.
            [35, 2, 26, 54, 42, 126, 126, 20, 87, 1]
        );
        assert_ne!(key, id_key("ckpkb85gpsol7lvmd2kdzoy1r"));
    }

    /// Ids are found by their key, through `Searcher::get`'s term and
    /// through `query` syntax alike; times take ranges, not single values.
    #[test]
    fn ids_and_times_are_searchable_as_documented() {
        let schema = AuditSchema::new();
        let index = Index::create_in_ram(schema.schema.clone());
        register_tokenizers(&index);
        let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(1, 15 << 20).unwrap();
        let mut body = Vec::new();
        for (i, id) in ["a1", "b2", "c3"].into_iter().enumerate() {
            let doc = schema.document(
                &mut event(id, 100 + i as i64),
                i as u64,
                "",
                None,
                &mut body,
            );
            writer.add_document(doc).unwrap();
        }
        writer.commit().unwrap();
        let searcher = index.reader().unwrap().searcher();
        let count = |query: &dyn tantivy::query::Query| searcher.search(query, &Count).unwrap();

        let by_key = TermQuery::new(
            Term::from_field_text(schema.id, &id_key("b2")),
            IndexRecordOption::Basic,
        );
        assert_eq!(count(&by_key), 1);
        let raw = TermQuery::new(
            Term::from_field_text(schema.id, "b2"),
            IndexRecordOption::Basic,
        );
        assert_eq!(count(&raw), 0, "the raw id is not a term");

        let parser = QueryParser::for_index(&index, vec![schema.text]);
        assert_eq!(count(&parser.parse_query("id:b2").unwrap()), 1);
        assert_eq!(count(&parser.parse_query("id:zz").unwrap()), 0);
        let range = parser.parse_query("time:[101000000 TO 102000000}").unwrap();
        assert_eq!(count(&range), 1);
        assert!(parser.parse_query("time:101000000").is_err());
        // Free text leaves the id out.
        assert_eq!(count(&parser.parse_query("a1").unwrap()), 0);
        assert_eq!(count(&parser.parse_query("events").unwrap()), 3);
    }
}
