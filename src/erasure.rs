//! Erasure and pseudonymisation of a subject's personal fields (GDPR
//! Art. 17), without breaking a proof.
//!
//! The events are named by seq in a `Retention` log record (never by the
//! subject, so the log keeps no erased value), and rewritten by the
//! indexer in each partition that holds them: the old documents are
//! deleted, the new ones added, and every segment that held a deleted
//! document is merged away at once, so that no byte of the old ones is
//! left in the index files. Each new document keeps, instead of the
//! event's salt, an opening (`integrity::opening`): the erased parts'
//! commitments and the others' salts, so its leaf is still the one the
//! tree holds. The write-ahead log lets go of every record older than
//! the erasure (the WAL thread starts a new segment for it), and the
//! copies `auditd recover` kept in `damaged/` are removed.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use prost::Message;
use sha2::Sha256;
use tantivy::query::{BooleanQuery, Occur, Query, RangeQuery};
use tantivy::{DocAddress, IndexWriter, Term};

use crate::integrity::leaf::PERSONAL;
use crate::integrity::opening::{Erase, Opening, Replace};
use crate::integrity::seeds::SaltSeeds;
use crate::messages::CommitPayload;
use crate::partition::Partition;
use crate::proto::AuditEvent;
use crate::retention::record::EraseRequest;
use crate::schema::{restore_times, AuditSchema};

/// Bytes of the pseudonym key.
pub const KEY_LEN: usize = 32;

/// The mask of the personal parts named in `fields` (their JSON names).
pub fn fields_mask(fields: &[String]) -> Result<u16, String> {
    let mut mask = 0u16;
    for field in fields {
        let k = PERSONAL
            .iter()
            .position(|p| p == field)
            .ok_or_else(|| format!("{field:?} is not one of {}", PERSONAL.join(", ")))?;
        mask |= 1 << (k + 1);
    }
    Ok(mask)
}

/// What one erasure did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erasure {
    /// Events of the subject whose fields were erased or pseudonymised.
    pub erased: u64,
    /// Other events whose `query` named the subject, taken out.
    pub references: u64,
    /// Events of a kept type, by the prefix that kept them.
    pub kept: BTreeMap<String, u64>,
    /// Events this erasure had already done (a replay finishing it).
    pub already: u64,
}

impl Erasure {
    fn add(&mut self, other: Erasure) {
        self.erased += other.erased;
        self.references += other.references;
        self.already += other.already;
        for (prefix, n) in other.kept {
            *self.kept.entry(prefix).or_default() += n;
        }
    }
}

/// The per-deployment key of pseudonyms, `<data_dir>/pseudonym.key`.
pub struct PseudonymKey([u8; KEY_LEN]);

impl PseudonymKey {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("pseudonym.key")
    }

    /// Reads the key, making it (owner-only) the first time.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<PseudonymKey> {
        if let Some(key) = Self::load(data_dir)? {
            return Ok(key);
        }
        let key: [u8; KEY_LEN] = rand::random();
        crate::datadir::write_atomically(&Self::path(data_dir), &key, true)?;
        Ok(PseudonymKey(key))
    }

    pub fn load(data_dir: &Path) -> std::io::Result<Option<PseudonymKey>> {
        match std::fs::read(Self::path(data_dir)) {
            Ok(bytes) => bytes
                .try_into()
                .map(|k| Some(PseudonymKey(k)))
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "pseudonym.key is not 32 bytes",
                    )
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn mac(&self, value: &str) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// `ps-` and 24 hex digits of HMAC-SHA-256(key, value): the same value
    /// always gives the same pseudonym, so counts and links survive.
    pub fn pseudonym(&self, value: &str) -> String {
        let mac = self.mac(value);
        let hex: String = mac[..12].iter().map(|b| format!("{b:02x}")).collect();
        format!("ps-{hex}")
    }

    /// An address stands in for an address: one of `fd00::/8` (unique
    /// local, never routed) made from the HMAC, so counts and CIDR-free
    /// aggregations by address survive.
    pub fn pseudonym_ip(&self, value: &str) -> String {
        let mut bytes = [0u8; 16];
        bytes[0] = 0xfd;
        bytes[1..].copy_from_slice(&self.mac(value)[..15]);
        IpAddr::V6(Ipv6Addr::from(bytes)).to_string()
    }
}

/// Pseudonymising: each value becomes its pseudonym.
pub struct Pseudonymise<'a>(pub &'a PseudonymKey);

impl Replace for Pseudonymise<'_> {
    fn text(&self, value: &str) -> String {
        match value.is_empty() {
            true => String::new(),
            false => self.0.pseudonym(value),
        }
    }

    fn ip(&self, value: &str) -> String {
        match value.is_empty() {
            true => String::new(),
            false => self.0.pseudonym_ip(value),
        }
    }

    fn pseudonymises(&self) -> bool {
        true
    }
}

/// The erasure `id` as `request` says, applied to one partition with
/// `writer` (a writer of its own, no merge policy): rewrites the events it
/// names, commits with `payload`, then merges away every segment holding a
/// deleted document and collects the files no longer used. The salts of
/// seeded batches come from `seeds`; the seqs of the events whose salt
/// must now be forgotten (erased now or before) go to `forget`.
#[allow(clippy::too_many_arguments)]
pub fn rewrite_partition(
    partition: &Partition,
    writer: &mut IndexWriter,
    schema: &AuditSchema,
    id: &str,
    request: &EraseRequest,
    key: Option<&PseudonymKey>,
    seeds: Option<&SaltSeeds>,
    payload: CommitPayload,
    forget: &mut Vec<u64>,
) -> tantivy::Result<Erasure> {
    // What to take from each event it names.
    let mut take: HashMap<u64, u16> = expand(&request.reference_runs)
        .map(|seq| (seq, REFERENCE_FIELDS))
        .collect();
    take.extend(expand(&request.seq_runs).map(|seq| (seq, request.fields as u16)));
    let event_of_subject: std::collections::HashSet<u64> = expand(&request.seq_runs).collect();
    let how: Box<dyn Replace + '_> = match (request.mode, key) {
        (1, Some(key)) => Box::new(Pseudonymise(key)),
        (1, None) => {
            return Err(tantivy::TantivyError::InvalidArgument(
                "pseudonymisation needs pseudonym.key, which is missing".into(),
            ))
        }
        _ => Box::new(Erase),
    };
    partition.reader.reload()?;
    let view = partition.view()?;
    let mut outcome = Erasure::default();
    let mut rewritten: Vec<(u64, AuditEvent, Vec<u8>)> = Vec::new();
    let corrupt = |reason: &str| tantivy::TantivyError::InvalidArgument(reason.to_owned());
    for (ord, (reader, columns)) in view
        .searcher
        .segment_readers()
        .iter()
        .zip(&view.columns)
        .enumerate()
    {
        for doc in reader.doc_ids_alive() {
            let Some((seq, fields)) = columns
                .seq
                .first(doc)
                .and_then(|s| take.get(&s).map(|f| (s, *f)))
            else {
                continue;
            };
            let stored = view.stored(DocAddress::new(ord as u32, doc), schema)?;
            if stored.body.is_empty() {
                return Err(corrupt("a document without a body"));
            }
            let mut event =
                AuditEvent::decode(stored.body.as_slice()).map_err(|e| corrupt(&e.to_string()))?;
            let time = columns.time().first(doc).unwrap_or_default();
            let received = columns.received.first(doc).unwrap_or_default();
            restore_times(&mut event, time, received);
            let opening =
                Opening::stored(stored.salt.as_deref(), || seeds?.salt(seq)).ok_or_else(|| {
                    corrupt("a document without a salt (data format 2), or whose seed is gone")
                })?;
            if opening.erased_by() == Some(id) {
                outcome.already += 1;
                forget.push(seq);
                continue;
            }
            if let Some(prefix) = request
                .keep_type_prefixes
                .iter()
                .find(|p| event.r#type.starts_with(&**p))
            {
                *outcome.kept.entry(prefix.clone()).or_default() += 1;
                continue;
            }
            let opening = opening.erase(&mut event, fields, id, how.as_ref());
            rewritten.push((seq, event, opening.to_bytes()));
            match fields == REFERENCE_FIELDS && !event_of_subject.contains(&seq) {
                true => outcome.references += 1,
                false => outcome.erased += 1,
            }
        }
    }
    if rewritten.is_empty() {
        return Ok(outcome);
    }
    let mut gone: Vec<u64> = rewritten.iter().map(|(seq, _, _)| *seq).collect();
    forget.extend(&gone);
    writer.delete_query(seqs_query(schema, &crate::retention::runs(&mut gone)))?;
    let mut body = Vec::new();
    for (seq, mut event, opening) in rewritten {
        writer.add_document(schema.document(&mut event, seq, "", Some(&opening), &mut body))?;
    }
    let mut prepared = writer.prepare_commit()?;
    prepared.set_payload(&payload.encode());
    prepared.commit()?;
    partition.reader.reload()?;
    let with_deletes: Vec<_> = partition
        .reader
        .searcher()
        .segment_readers()
        .iter()
        .filter(|r| r.num_deleted_docs() > 0)
        .map(|r| r.segment_id())
        .collect();
    if !with_deletes.is_empty() {
        writer.merge(&with_deletes).wait()?;
    }
    partition.reader.reload()?;
    // The cached view held the old segments' searcher.
    partition.view()?;
    writer.garbage_collect_files().wait()?;
    Ok(outcome)
}

/// What goes from an event that only names the subject: its `query`.
pub const REFERENCE_FIELDS: u16 = 1 << 6;

/// The seqs of flattened `[first, end)` runs.
fn expand(runs: &[u64]) -> impl Iterator<Item = u64> + '_ {
    runs.chunks(2)
        .flat_map(|run| run[0]..run.get(1).copied().unwrap_or(run[0]))
}

/// `runs` flattened, as an `EraseRequest` carries them.
pub fn flatten(runs: &[(u64, u64)]) -> Vec<u64> {
    runs.iter()
        .flat_map(|(first, end)| [*first, *end])
        .collect()
}

/// Documents whose seq lies in one of `runs`.
fn seqs_query(schema: &AuditSchema, runs: &[(u64, u64)]) -> Box<dyn Query> {
    let range = |(first, end): &(u64, u64)| -> Box<dyn Query> {
        Box::new(RangeQuery::new(
            std::ops::Bound::Included(Term::from_field_u64(schema.seq, *first)),
            std::ops::Bound::Excluded(Term::from_field_u64(schema.seq, *end)),
        ))
    };
    Box::new(BooleanQuery::new(
        runs.iter().map(|r| (Occur::Should, range(r))).collect(),
    ))
}

/// Adds the outcome of one partition to the erasure's.
pub fn total(parts: impl IntoIterator<Item = Erasure>) -> Erasure {
    let mut sum = Erasure::default();
    for part in parts {
        sum.add(part);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::opening::replace_part;

    #[test]
    fn field_names_map_to_their_parts_and_an_unknown_one_is_named() {
        assert_eq!(
            fields_mask(&["accessId".into(), "subject".into()]),
            Ok(0b110)
        );
        assert_eq!(fields_mask(&["attributes".into()]), Ok(1 << 10));
        let error = fields_mask(&["email".into()]).unwrap_err();
        assert!(error.contains("\"email\""), "{error}");
    }

    #[test]
    fn pseudonyms_are_stable_per_key_and_addresses_stay_addresses() {
        let key = PseudonymKey([7; KEY_LEN]);
        let other = PseudonymKey([8; KEY_LEN]);
        assert_eq!(key.pseudonym("emma"), key.pseudonym("emma"));
        assert_ne!(key.pseudonym("emma"), key.pseudonym("emmb"));
        assert_ne!(key.pseudonym("emma"), other.pseudonym("emma"));
        let ip: IpAddr = key.pseudonym_ip("85.5.225.68").parse().unwrap();
        assert!(matches!(ip, IpAddr::V6(v6) if v6.octets()[0] == 0xfd));
        let mut event = AuditEvent {
            subject: "emma".into(),
            source: Some(crate::proto::Source {
                name: "http".into(),
                ip: "85.5.225.68".into(),
            }),
            query: [("email".to_owned(), "emma@example.com".to_owned())].into(),
            ..Default::default()
        };
        let mut erased = event.clone();
        for part in [2, 3, 6] {
            replace_part(&mut erased, part, &Erase);
            replace_part(&mut event, part, &Pseudonymise(&key));
        }
        assert!(erased.subject.is_empty() && erased.query.is_empty());
        assert!(erased.source.as_ref().unwrap().ip.is_empty());
        assert_eq!(event.subject, key.pseudonym("emma"));
        assert_eq!(event.query["email"], key.pseudonym("emma@example.com"));
        assert_eq!(event.source.unwrap().ip, ip.to_string());
    }
}
