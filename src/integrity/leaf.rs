//! What a leaf of the tree commits to: an event, through salted
//! commitments, so that erasing personal fields later (the retention and
//! erasure issue) leaves every leaf, and so every proof, as it was.
//!
//! Every event gets a random 16-byte salt at ingest (`integrity::seeds`
//! makes a batch's from one seed). Its fields fall into parts: part 0,
//! the *core* (`id`, `time`, `received`, `type`, `action`, `source.name`,
//! `status`, `error_id`), which erasure never touches, and parts 1 to 10,
//! one field each, the fields erasure may remove ([`PERSONAL`]). Each
//! personal part `k` has its own salt `salt_k`, from which nobody learns
//! the event salt or any other part's, and is committed as
//! `c_k = SHA-256(salt_k || value_k)` (`value_k`: the part's bytes). The
//! leaf bytes are
//!
//! ```text
//! 3:    version || mask (u16, big-endian) || c_k for each bit k set in mask || value_0
//! 1, 2: version || mask (u16, big-endian) || c_0 || c_k for each bit k set in mask
//! ```
//!
//! where bit `k` (1 ≤ k ≤ 10, bit 0 unused) is set when field `k` is not
//! empty: an empty field has nothing to hide and no commitment. Erasing a
//! field keeps its `c_k` and forgets its value and the event salt,
//! keeping the other parts' `salt_j`: the leaf can still be rebuilt, and
//! nobody can test a guess at the erased value.
//!
//! The versions differ in how `salt_k` is made ([`Version`]), and in
//! whether the core is committed (`c_0`, salted like a personal part) or
//! written out:
//!
//! ```text
//! 1: salt_k = SHA-256(salt || k)                                32 bytes
//! 2: salt_k = half k mod 2 of SHA-256(0x02 || salt || k / 2)    16 bytes
//! 3: salt_k = AES-128 of the block (k || 15 zero bytes) under the key salt
//! ```
//!
//! Version 3 is what new events get: with AES-NI its part salts cost less
//! than one SHA-256 block together, and the core, which erasure never
//! takes, needs neither a salt nor a commitment of its own. A leaf costs
//! about a third fewer SHA-256 blocks than in version 2, which had cut a
//! third from version 1. Leaves of events stored before stay as they are.
//!
//! The value encodings: a string is its length (u32, big-endian) and its
//! UTF-8 bytes; a time is microseconds since the epoch (i64, big-endian);
//! `status` is an i32, big-endian; a map is its entry count (u32,
//! big-endian) and then, ordered by key bytes, each key and value as
//! strings. The core is `id`, `time`, `received`, `type`, `action`,
//! `source.name`, `status`, `error_id`, in that order, concatenated.
//! `docs/integrity.md` has the same with test vectors.

use std::collections::BTreeMap;

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes128Enc;
use sha2::{Digest, Sha256};

use super::merkle::{leaf_hash, Hash};
use crate::proto::AuditEvent;
use crate::schema::timestamp_micros;

/// Bytes of an event's salt.
pub const SALT_LEN: usize = 16;

/// An event's salt.
pub type Salt = [u8; SALT_LEN];

/// A leaf encoding, named by the leaf's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `salt_k = SHA-256(salt || k)`: events stored before version 2.
    V1 = 1,
    /// `salt_k` = one half of `SHA-256(0x02 || salt || k / 2)`.
    V2 = 2,
    /// `salt_k` = AES-128 of `k || 0^15` under the event salt; the core
    /// written out in the leaf, not committed.
    V3 = 3,
}

impl Version {
    /// What new events get.
    pub const CURRENT: Version = Version::V3;

    pub fn byte(self) -> u8 {
        self as u8
    }

    pub fn from_byte(byte: u8) -> Option<Version> {
        match byte {
            1 => Some(Version::V1),
            2 => Some(Version::V2),
            3 => Some(Version::V3),
            _ => None,
        }
    }

    /// Bytes of a part salt.
    pub fn part_salt_len(self) -> usize {
        match self {
            Version::V1 => 32,
            Version::V2 | Version::V3 => 16,
        }
    }

    /// Whether the core is part 0 with a salt and a commitment `c_0`
    /// (versions 1 and 2), rather than written out in the leaf (3).
    pub fn commits_core(self) -> bool {
        self != Version::V3
    }
}

/// The parts erasure may remove, by part number (1..=10), as named in the
/// API's JSON and in `integrity.md`.
pub const PERSONAL: [&str; 10] = [
    "accessId",
    "subject",
    "source.ip",
    "forwardedFor",
    "resource",
    "query",
    "errorMessage",
    "before",
    "after",
    "attributes",
];

/// A fresh random salt.
pub fn new_salt() -> Salt {
    rand::random()
}

/// `salt_k`, one part's salt: 32 bytes in version 1, 16 in versions 2
/// and 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartSalt {
    Long(Hash),
    Short([u8; 16]),
}

impl PartSalt {
    pub fn bytes(&self) -> &[u8] {
        match self {
            PartSalt::Long(salt) => salt,
            PartSalt::Short(salt) => salt,
        }
    }

    /// The salt of `version` in `bytes`, which must be exactly its length.
    pub fn from_bytes(version: Version, bytes: &[u8]) -> Option<PartSalt> {
        match version.part_salt_len() {
            32 => bytes.try_into().ok().map(PartSalt::Long),
            _ => bytes.try_into().ok().map(PartSalt::Short),
        }
    }
}

/// An event's part salts, made as asked: in version 2 one hash makes two,
/// so the last one made is kept for its sibling; in version 3 the first
/// one asked for makes them all, in one pass of AES over eleven blocks.
pub struct PartSalts<'a> {
    version: Version,
    salt: &'a Salt,
    pair: Option<(u8, Hash)>,
    all: Option<[aes::Block; PERSONAL.len() + 1]>,
}

impl<'a> PartSalts<'a> {
    pub fn new(version: Version, salt: &'a Salt) -> PartSalts<'a> {
        PartSalts {
            version,
            salt,
            pair: None,
            all: None,
        }
    }

    /// `salt_k`.
    pub fn get(&mut self, part: u8) -> PartSalt {
        match self.version {
            Version::V1 => PartSalt::Long(
                Sha256::new()
                    .chain_update(self.salt)
                    .chain_update([part])
                    .finalize()
                    .into(),
            ),
            Version::V2 => {
                let index = part / 2;
                let pair = match self.pair {
                    Some((made, pair)) if made == index => pair,
                    _ => {
                        let pair = Sha256::new()
                            .chain_update([Version::V2.byte()])
                            .chain_update(self.salt)
                            .chain_update([index])
                            .finalize()
                            .into();
                        self.pair = Some((index, pair));
                        pair
                    }
                };
                let half = 16 * usize::from(part % 2);
                PartSalt::Short(pair[half..half + 16].try_into().expect("16 bytes"))
            }
            Version::V3 => {
                let salt = self.salt;
                let all = self.all.get_or_insert_with(|| {
                    let mut blocks = [aes::Block::default(); PERSONAL.len() + 1];
                    for (k, block) in blocks.iter_mut().enumerate() {
                        block[0] = k as u8;
                    }
                    Aes128Enc::new(salt.into()).encrypt_blocks(&mut blocks);
                    blocks
                });
                PartSalt::Short(all[usize::from(part)].into())
            }
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A `BTreeMap<String, _>` iterates in key-byte order already.
fn put_map(out: &mut Vec<u8>, map: &BTreeMap<String, String>) {
    out.extend_from_slice(&(map.len() as u32).to_be_bytes());
    for (key, value) in map {
        put_str(out, key);
        put_str(out, value);
    }
}

/// The core's bytes (part 0), into `out`.
pub fn core_bytes(event: &AuditEvent, out: &mut Vec<u8>) {
    let source = event.source.as_ref();
    put_str(out, &event.id);
    out.extend_from_slice(&timestamp_micros(event.time.as_ref()).to_be_bytes());
    out.extend_from_slice(&timestamp_micros(event.received.as_ref()).to_be_bytes());
    put_str(out, &event.r#type);
    put_str(out, &event.action);
    put_str(out, source.map_or("", |s| s.name.as_str()));
    out.extend_from_slice(&event.status.to_be_bytes());
    put_str(out, &event.error_id);
}

/// A personal part's field.
enum Field<'a> {
    Text(&'a str),
    Map(&'a BTreeMap<String, String>),
}

impl Field<'_> {
    fn is_empty(&self) -> bool {
        match self {
            Field::Text(s) => s.is_empty(),
            Field::Map(m) => m.is_empty(),
        }
    }
}

/// Personal part `k`'s field (1 ≤ k ≤ 10).
fn personal_field(event: &AuditEvent, part: u8) -> Field<'_> {
    match part {
        1 => Field::Text(&event.access_id),
        2 => Field::Text(&event.subject),
        3 => Field::Text(event.source.as_ref().map_or("", |s| s.ip.as_str())),
        4 => Field::Text(&event.forwarded_for),
        5 => Field::Text(&event.resource),
        6 => Field::Map(&event.query),
        7 => Field::Text(&event.error_message),
        8 => Field::Text(&event.before),
        9 => Field::Text(&event.after),
        10 => Field::Map(&event.attributes),
        _ => unreachable!("personal parts are 1 to {}", PERSONAL.len()),
    }
}

/// The mask of the personal parts `event` has: bit `k` for each field
/// `k` that is not empty.
pub fn present_parts(event: &AuditEvent) -> u16 {
    (1..=PERSONAL.len() as u8)
        .filter(|&k| !personal_field(event, k).is_empty())
        .fold(0, |mask, k| mask | 1 << k)
}

/// The parts a leaf of `version` commits to, in its order: part 0 when
/// the version commits the core, then the parts of `mask`, ascending.
pub fn parts_of(version: Version, mask: u16) -> impl Iterator<Item = u8> {
    let core = version.commits_core().then_some(0);
    core.into_iter()
        .chain((1..=PERSONAL.len() as u8).filter(move |k| mask & (1 << k) != 0))
}

/// Part `k`'s bytes into `out`: the core for 0, else the field's value.
fn part_bytes(event: &AuditEvent, part: u8, out: &mut Vec<u8>) {
    match part {
        0 => core_bytes(event, out),
        k => match personal_field(event, k) {
            Field::Text(s) => put_str(out, s),
            Field::Map(m) => put_map(out, m),
        },
    }
}

/// `c_k = SHA-256(salt_k || value_k)` of `event`'s part `k`, hashed in
/// one call from `input` (reused between calls).
pub fn commit_part(salt_k: &PartSalt, event: &AuditEvent, part: u8, input: &mut Vec<u8>) -> Hash {
    input.clear();
    input.extend_from_slice(salt_k.bytes());
    part_bytes(event, part, input);
    Sha256::digest(&input[..]).into()
}

/// The leaf bytes (see the module) appended to `leaf`, with
/// `commitment(k)` giving `c_k` for each part of [`parts_of`]`(version,
/// mask)` in turn: the one place the layout is written, for an event as
/// ingested and for one whose erased parts left only their commitment.
pub fn write_layout(
    version: Version,
    mask: u16,
    event: &AuditEvent,
    leaf: &mut Vec<u8>,
    mut commitment: impl FnMut(u8) -> Hash,
) {
    leaf.push(version.byte());
    leaf.extend_from_slice(&mask.to_be_bytes());
    for k in parts_of(version, mask) {
        leaf.extend_from_slice(&commitment(k));
    }
    if !version.commits_core() {
        core_bytes(event, leaf);
    }
}

/// The leaf bytes of `event` under `salt`, in `version`. `scratch` is
/// reused between calls to save allocations.
pub fn leaf_bytes(
    version: Version,
    event: &AuditEvent,
    salt: &Salt,
    scratch: &mut Vec<u8>,
) -> Vec<u8> {
    let mut leaf = Vec::with_capacity(3 + 32 * 6 + 128);
    write_leaf(version, event, salt, scratch, &mut leaf);
    leaf
}

/// The leaf bytes of `event`, appended to `leaf`; `input` holds each
/// commitment's input in turn. A part salt is made only for a part
/// present.
fn write_leaf(
    version: Version,
    event: &AuditEvent,
    salt: &Salt,
    input: &mut Vec<u8>,
    leaf: &mut Vec<u8>,
) {
    let mut salts = PartSalts::new(version, salt);
    write_layout(version, present_parts(event), event, leaf, |k| {
        commit_part(&salts.get(k), event, k, input)
    });
}

/// Buffers reused from one event's leaf hash to the next.
#[derive(Debug, Default)]
pub struct LeafScratch {
    value: Vec<u8>,
    leaf: Vec<u8>,
}

/// The hash the tree holds for `event`: `SHA-256(0x00 || leaf bytes)`.
pub fn event_leaf_hash(
    version: Version,
    event: &AuditEvent,
    salt: &Salt,
    scratch: &mut LeafScratch,
) -> Hash {
    scratch.leaf.clear();
    scratch.leaf.push(0x00);
    write_leaf(version, event, salt, &mut scratch.value, &mut scratch.leaf);
    Sha256::digest(&scratch.leaf).into()
}

/// The leaf bytes of an event lost to damaged log bytes before its leaf
/// was made (`auditd recover` skipped them): one zero byte, which no
/// event's leaf can be (those start with their [`Version`]).
pub const LOST_LEAF: [u8; 1] = [0];

/// `SHA-256(0x00 || 0x00)`: the lost leaf's hash.
pub fn lost_leaf_hash() -> Hash {
    leaf_hash(&LOST_LEAF)
}

/// A salt as the log and the index keep it: exactly [`SALT_LEN`] bytes.
pub fn salt_from_bytes(bytes: &[u8]) -> Option<Salt> {
    bytes.try_into().ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proto::Source;
    use crate::schema::micros_to_timestamp;

    /// The event of `docs/integrity.md`'s test vector.
    pub fn vector_event() -> AuditEvent {
        AuditEvent {
            id: "01JDZ3Q6X0AUDITVECTOR0001".into(),
            time: Some(micros_to_timestamp(1_733_148_000_123_456)),
            received: Some(micros_to_timestamp(1_733_148_000_500_000)),
            r#type: "audit-log/pryv-api".into(),
            action: "events.get".into(),
            access_id: "ck6j78uj600011ss2neygkpub".into(),
            subject: "emma".into(),
            source: Some(Source {
                name: "http".into(),
                ip: "85.5.225.68".into(),
            }),
            resource: "diary".into(),
            query: [("streamId", "diary"), ("limit", "100")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            status: 200,
            ..Default::default()
        }
    }

    pub const VECTOR_SALT: Salt = *b"auditd-vector-01";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_documented_vectors_hold() {
        let event = vector_event();
        let mut scratch = Vec::new();
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/integrity.md"))
                .expect("docs/integrity.md");
        let mut core = Vec::new();
        core_bytes(&event, &mut core);
        for version in [Version::V3, Version::V2, Version::V1] {
            let leaf = leaf_bytes(version, &event, &VECTOR_SALT, &mut scratch);
            // Access id, subject, source.ip, resource, query; and the core,
            // committed (c_0) or written out.
            assert_eq!(leaf[..3], [version.byte(), 0b0000_0000, 0b0110_1110]);
            match version.commits_core() {
                true => assert_eq!(leaf.len(), 3 + 32 * 6),
                false => assert_eq!(leaf[3 + 32 * 5..], core[..]),
            }
            for (what, value) in [
                ("leaf bytes", hex(&leaf)),
                ("leaf hash", hex(&leaf_hash(&leaf))),
            ] {
                assert!(
                    doc.contains(&value),
                    "docs/integrity.md lacks the {version:?} vector's {what}: {value}"
                );
            }
        }
        for (version, parts) in [
            (Version::V3, &[1, 2, 3, 5, 6][..]),
            (Version::V2, &[0, 1, 2, 3, 5, 6][..]),
        ] {
            let mut salts = PartSalts::new(version, &VECTOR_SALT);
            for &k in parts {
                let line = format!("salt_{k}   {}", hex(salts.get(k).bytes()));
                assert!(doc.contains(&line), "docs/integrity.md lacks {line}");
            }
        }
    }

    /// The page's Python, run as it stands, prints the same vectors: the
    /// page is enough to write a verifier.
    #[test]
    fn the_pages_python_computes_the_vectors() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/integrity.md"))
                .expect("docs/integrity.md");
        let start = doc.find("```python\n").expect("a python block") + "```python\n".len();
        let code = &doc[start..start + doc[start..].find("```").expect("its end")];
        let out = std::process::Command::new("python3")
            .args(["-c", code])
            .output()
            .expect("python3 (scripts/test.sh needs it too)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut scratch = Vec::new();
        let mut expected = String::new();
        for version in [Version::V3, Version::V2, Version::V1] {
            let leaf = leaf_bytes(version, &vector_event(), &VECTOR_SALT, &mut scratch);
            expected += &format!("{}\n{}\n", hex(&leaf), hex(&leaf_hash(&leaf)));
        }
        assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
    }

    #[test]
    fn a_pair_of_version_2_part_salts_is_two_halves_of_one_hash() {
        let mut salts = PartSalts::new(Version::V2, &VECTOR_SALT);
        let (zero, one, two) = (salts.get(0), salts.get(1), salts.get(2));
        let mut pair = Vec::new();
        pair.extend_from_slice(zero.bytes());
        pair.extend_from_slice(one.bytes());
        let mut input = vec![2];
        input.extend_from_slice(&VECTOR_SALT);
        input.push(0);
        assert_eq!(pair, Sha256::digest(&input).to_vec());
        assert_ne!(zero, one);
        assert_ne!(two, PartSalts::new(Version::V2, &VECTOR_SALT).get(3));
        // Asked out of order, the same salts.
        assert_eq!(salts.get(1), one);
        assert_eq!(salts.get(0), zero);
    }

    #[test]
    fn every_field_moves_the_leaf_and_empty_fields_have_no_part() {
        for version in [Version::V1, Version::V2, Version::V3] {
            every_field_moves_the_leaf_in(version);
        }
        let mut scratch = LeafScratch::default();
        let hashes: Vec<Hash> = [Version::V1, Version::V2, Version::V3]
            .into_iter()
            .map(|v| event_leaf_hash(v, &vector_event(), &VECTOR_SALT, &mut scratch))
            .collect();
        assert!(hashes[0] != hashes[1] && hashes[1] != hashes[2] && hashes[0] != hashes[2]);
    }

    fn every_field_moves_the_leaf_in(version: Version) {
        let base = vector_event();
        let mut scratch = LeafScratch::default();
        // The tree's hash, made in one buffer, is the hash of the leaf
        // bytes a proof carries.
        let hash = |e: &AuditEvent, scratch: &mut LeafScratch| {
            let hash = event_leaf_hash(version, e, &VECTOR_SALT, scratch);
            let leaf = leaf_bytes(version, e, &VECTOR_SALT, &mut Vec::new());
            assert_eq!(hash, leaf_hash(&leaf));
            hash
        };
        let before = hash(&base, &mut scratch);
        type Change = Box<dyn Fn(&mut AuditEvent)>;
        let changes: Vec<Change> = vec![
            Box::new(|e| e.id.push('x')),
            Box::new(|e| e.time = Some(micros_to_timestamp(1))),
            Box::new(|e| e.received = Some(micros_to_timestamp(1))),
            Box::new(|e| e.r#type.push('x')),
            Box::new(|e| e.action.push('x')),
            Box::new(|e| e.access_id.push('x')),
            Box::new(|e| e.subject.push('x')),
            Box::new(|e| e.source.as_mut().unwrap().name.push('x')),
            Box::new(|e| e.source.as_mut().unwrap().ip = "85.5.225.69".into()),
            Box::new(|e| e.forwarded_for = "10.0.0.1".into()),
            Box::new(|e| e.resource.push('x')),
            Box::new(|e| {
                e.query.insert("limit".into(), "101".into());
            }),
            Box::new(|e| e.status = 404),
            Box::new(|e| e.error_id = "x".into()),
            Box::new(|e| e.error_message = "x".into()),
            Box::new(|e| e.before = "{}".into()),
            Box::new(|e| e.after = "{}".into()),
            Box::new(|e| {
                e.attributes.insert("k".into(), "v".into());
            }),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut event = base.clone();
            change(&mut event);
            assert_ne!(hash(&event, &mut scratch), before, "change {i}");
        }
        // A string's length prefix keeps neighbours apart.
        let mut a = base.clone();
        a.subject = "em".into();
        a.resource = "madiary".into();
        let mut b = base.clone();
        b.subject = "emma".into();
        b.resource = "diary".into();
        assert_ne!(hash(&a, &mut scratch), hash(&b, &mut scratch));
        // Another salt, another leaf; the same salt, the same leaf.
        assert_ne!(
            event_leaf_hash(version, &base, &[0; SALT_LEN], &mut scratch),
            before
        );
        assert_eq!(hash(&base, &mut scratch), before);
    }
}
