//! What a stored event's leaf is rebuilt from: its salt, or, once erasure
//! took some of its personal fields, each part's own salt (the value is
//! still there) or its commitment (the value is gone).
//!
//! Erasing part `k` keeps `c_k` and forgets the value and the event salt:
//! the other parts keep their `salt_j`, so the leaf can still be rebuilt
//! and checked against the tree, and nobody can test a guess at an erased
//! value (`salt_k` is gone with the event salt).
//!
//! Stored as bytes (the index's `salt` field, a receipt's `extra`):
//!
//! ```text
//! salt, leaf version 1: the 16 salt bytes
//! salt, leaf version 2: 0x03 || the 16 salt bytes
//! salt, leaf version 3: 0x05 || the 16 salt bytes
//! seeded, leaf version 2: 0x04, version 3: 0x06 (the index's form only:
//!         the salt is made from the batch's seed, `integrity::seeds`)
//! erased: 0x02 || flags (bit 0: pseudonymised; bit 1: leaf version 2;
//!         bit 2: leaf version 3) || id length (u8) || erasure request id
//!         || mask (u16, big-endian; the parts the event had at ingest)
//!         || for part 0 (not in version 3, whose leaf has the core
//!            itself), then each part in mask (ascending):
//!            0x00 || salt_k (32 bytes in version 1, 16 in 2 and 3)   the value is there
//!            0x01 || c_k (32 bytes)    the value was erased or pseudonymised
//! ```

use super::leaf::{
    commit_part, parts_of, present_parts, write_layout, PartSalt, PartSalts, Salt, Version,
    SALT_LEN,
};
use super::merkle::Hash;
use crate::proto::AuditEvent;

/// The first byte of the erased form.
pub const ERASED_FORM: u8 = 2;
/// The first byte of a version 2 leaf's salt (a version 1 leaf's is the
/// bare 16 bytes).
pub const SALT_V2_FORM: u8 = 3;
/// The first byte of a version 3 leaf's salt.
pub const SALT_V3_FORM: u8 = 5;
/// What the index keeps of an event of a seeded batch, whose salt
/// (for a version 2 leaf) is made from the seed the tree keeps
/// (`integrity::seeds`); never in a receipt, which carries the salt.
pub const SEEDED_FORM: u8 = 4;
/// The same for a version 3 leaf.
pub const SEEDED_V3_FORM: u8 = 6;
/// The erased form's flags.
const PSEUDONYMISED: u8 = 1;
const LEAF_V2: u8 = 2;
const LEAF_V3: u8 = 4;

/// What the index keeps of an event of a seeded batch of leaf `version`
/// (`None` for version 1, which no seeded batch has).
pub fn seeded_form(version: Version) -> Option<&'static [u8]> {
    match version {
        Version::V1 => None,
        Version::V2 => Some(&[SEEDED_FORM]),
        Version::V3 => Some(&[SEEDED_V3_FORM]),
    }
}

/// The first byte of a salt form of leaf `version` (version 1 has none).
fn salt_form(version: Version) -> Option<u8> {
    match version {
        Version::V1 => None,
        Version::V2 => Some(SALT_V2_FORM),
        Version::V3 => Some(SALT_V3_FORM),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// The event as stored at ingest: its salt, and its leaf's version.
    Salt(Version, Salt),
    Erased(Erased),
}

/// An event some of whose personal parts were erased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erased {
    /// The erasure request that made it so.
    pub request: String,
    pub pseudonymised: bool,
    pub version: Version,
    /// The parts the event had at ingest (bit `k` for part `k`).
    pub mask: u16,
    /// Part 0 (unless the version writes the core out), then each part of
    /// `mask` in ascending order.
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The value is there: its commitment is made from it and this salt.
    Open(PartSalt),
    /// The value is gone: this is its commitment.
    Committed(Hash),
}

/// What erasure puts in place of the values it takes.
pub trait Replace {
    /// The new value of a string, or of each value of a map (empty: gone).
    fn text(&self, value: &str) -> String;
    /// The new value of an address (empty: gone).
    fn ip(&self, value: &str) -> String;
    fn pseudonymises(&self) -> bool;
}

/// Erasing: the value goes.
pub struct Erase;

impl Replace for Erase {
    fn text(&self, _: &str) -> String {
        String::new()
    }

    fn ip(&self, _: &str) -> String {
        String::new()
    }

    fn pseudonymises(&self) -> bool {
        false
    }
}

/// Replaces personal part `part` of `event` as `how` says. A map whose
/// values all become empty is emptied.
pub fn replace_part(event: &mut AuditEvent, part: u8, how: &dyn Replace) {
    let string = |s: &mut String| *s = how.text(s);
    let map = |m: &mut std::collections::BTreeMap<String, String>| {
        for value in m.values_mut() {
            *value = how.text(value);
        }
        if m.values().all(String::is_empty) {
            m.clear();
        }
    };
    match part {
        1 => string(&mut event.access_id),
        2 => string(&mut event.subject),
        3 => {
            if let Some(source) = event.source.as_mut() {
                source.ip = how.ip(&source.ip);
            }
        }
        4 => string(&mut event.forwarded_for),
        5 => string(&mut event.resource),
        6 => map(&mut event.query),
        7 => string(&mut event.error_message),
        8 => string(&mut event.before),
        9 => string(&mut event.after),
        10 => map(&mut event.attributes),
        _ => {}
    }
}

impl Opening {
    /// What the index keeps for an event, read: the seeded form's salt is
    /// `seeded()`, made from its batch's seed (`None` without one: the
    /// seed was cut, or there is no tree).
    pub fn stored(bytes: Option<&[u8]>, seeded: impl FnOnce() -> Option<Salt>) -> Option<Opening> {
        match bytes? {
            [SEEDED_FORM] => Some(Opening::Salt(Version::V2, seeded()?)),
            [SEEDED_V3_FORM] => Some(Opening::Salt(Version::V3, seeded()?)),
            bytes => Opening::from_bytes(bytes),
        }
    }

    /// `None` for bytes that are neither form.
    pub fn from_bytes(bytes: &[u8]) -> Option<Opening> {
        if bytes.len() == SALT_LEN {
            return bytes.try_into().ok().map(|s| Opening::Salt(Version::V1, s));
        }
        let (&form, rest) = bytes.split_first()?;
        for version in [Version::V2, Version::V3] {
            if salt_form(version) == Some(form) {
                return rest.try_into().ok().map(|s| Opening::Salt(version, s));
            }
        }
        if form != ERASED_FORM {
            return None;
        }
        let (&flags, rest) = rest.split_first()?;
        let version = match flags & (LEAF_V2 | LEAF_V3) {
            0 => Version::V1,
            LEAF_V2 => Version::V2,
            LEAF_V3 => Version::V3,
            _ => return None,
        };
        let (&id_len, rest) = rest.split_first()?;
        let id = rest.get(..id_len as usize)?;
        let rest = &rest[id_len as usize..];
        let mask = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
        let mut rest = &rest[2..];
        let mut parts = Vec::new();
        for _ in parts_of(version, mask) {
            let (&tag, tail) = rest.split_first()?;
            let len = match tag {
                0 => version.part_salt_len(),
                _ => 32,
            };
            let bytes = tail.get(..len)?;
            parts.push(match tag {
                0 => Part::Open(PartSalt::from_bytes(version, bytes)?),
                1 => Part::Committed(bytes.try_into().ok()?),
                _ => return None,
            });
            rest = &tail[len..];
        }
        if !rest.is_empty() {
            return None;
        }
        Some(Opening::Erased(Erased {
            request: String::from_utf8(id.to_vec()).ok()?,
            pseudonymised: flags & PSEUDONYMISED != 0,
            version,
            mask,
            parts,
        }))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Opening::Salt(version, salt) => match salt_form(*version) {
                None => salt.to_vec(),
                Some(form) => {
                    let mut out = vec![form];
                    out.extend_from_slice(salt);
                    out
                }
            },
            Opening::Erased(e) => {
                let id = &e.request.as_bytes()[..e.request.len().min(255)];
                let mut flags = 0;
                if e.pseudonymised {
                    flags |= PSEUDONYMISED;
                }
                flags |= match e.version {
                    Version::V1 => 0,
                    Version::V2 => LEAF_V2,
                    Version::V3 => LEAF_V3,
                };
                let mut out = vec![ERASED_FORM, flags, id.len() as u8];
                out.extend_from_slice(id);
                out.extend_from_slice(&e.mask.to_be_bytes());
                for part in &e.parts {
                    let (tag, bytes) = match part {
                        Part::Open(salt) => (0, salt.bytes()),
                        Part::Committed(c) => (1, &c[..]),
                    };
                    out.push(tag);
                    out.extend_from_slice(bytes);
                }
                out
            }
        }
    }

    /// The erasure request behind it, when some part was erased.
    pub fn erased_by(&self) -> Option<&str> {
        match self {
            Opening::Salt(..) => None,
            Opening::Erased(e) => Some(&e.request),
        }
    }

    /// The leaf bytes of `event` stored with this opening. For an erased
    /// event, the erased parts' commitments stand in for their values.
    pub fn leaf_bytes(&self, event: &AuditEvent, scratch: &mut Vec<u8>) -> Vec<u8> {
        let erased = match self {
            Opening::Salt(version, salt) => {
                return super::leaf::leaf_bytes(*version, event, salt, scratch)
            }
            Opening::Erased(erased) => erased,
        };
        let mut leaf = Vec::with_capacity(3 + 32 * erased.parts.len() + 128);
        // `from_bytes` and `erase` give a part for each of `parts_of`.
        let mut parts = erased.parts.iter();
        write_layout(
            erased.version,
            erased.mask,
            event,
            &mut leaf,
            |k| match parts.next().expect("a part for each part of the mask") {
                Part::Committed(c) => *c,
                Part::Open(salt) => commit_part(salt, event, k, scratch),
            },
        );
        leaf
    }

    /// Takes the parts of `fields` (bit `k` for part `k`) out of `event`
    /// as `how` says, and returns the opening that still rebuilds its
    /// leaf. Parts already erased stay as they are; `request` names the
    /// erasure.
    pub fn erase(
        &self,
        event: &mut AuditEvent,
        fields: u16,
        request: &str,
        how: &dyn Replace,
    ) -> Opening {
        let mut scratch = Vec::new();
        let erased = match self {
            Opening::Erased(erased) => erased.clone(),
            Opening::Salt(version, salt) => open_parts(*version, event, salt),
        };
        let mut parts = Vec::with_capacity(erased.parts.len());
        for (part, k) in erased
            .parts
            .iter()
            .zip(parts_of(erased.version, erased.mask))
        {
            parts.push(match part {
                Part::Open(salt) if k != 0 && fields & (1 << k) != 0 => {
                    let c = commit_part(salt, event, k, &mut scratch);
                    replace_part(event, k, how);
                    Part::Committed(c)
                }
                other => *other,
            });
        }
        Opening::Erased(Erased {
            request: request.to_owned(),
            pseudonymised: erased.pseudonymised || how.pseudonymises(),
            version: erased.version,
            mask: erased.mask,
            parts,
        })
    }
}

/// Every part of an event as it was stored, each with its own salt.
fn open_parts(version: Version, event: &AuditEvent, salt: &Salt) -> Erased {
    let mask = present_parts(event);
    let mut salts = PartSalts::new(version, salt);
    Erased {
        request: String::new(),
        pseudonymised: false,
        version,
        mask,
        parts: parts_of(version, mask)
            .map(|k| Part::Open(salts.get(k)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::leaf::leaf_bytes;
    use crate::integrity::leaf::tests::{vector_event, VECTOR_SALT};
    use crate::integrity::seeds::SaltSeeds;

    #[test]
    fn an_erased_event_still_rebuilds_its_leaf_and_the_opening_round_trips() {
        for version in [Version::V1, Version::V2, Version::V3] {
            erased_rebuilds_its_leaf_in(version);
        }
    }

    fn erased_rebuilds_its_leaf_in(version: Version) {
        let event = vector_event();
        let original = leaf_bytes(version, &event, &VECTOR_SALT, &mut Vec::new());
        let salted = Opening::Salt(version, VECTOR_SALT);
        assert_eq!(
            Opening::from_bytes(&salted.to_bytes()),
            Some(salted.clone())
        );
        assert_eq!(salted.leaf_bytes(&event, &mut Vec::new()), original);
        let mut erased = event.clone();
        let opening = salted.erase(&mut erased, 0b110, "req-1", &Erase);
        assert!(erased.subject.is_empty() && erased.access_id.is_empty());
        assert_eq!(opening.leaf_bytes(&erased, &mut Vec::new()), original);
        assert_eq!(
            Opening::from_bytes(&opening.to_bytes()),
            Some(opening.clone())
        );
        assert_eq!(opening.erased_by(), Some("req-1"));
        // A non-personal field changed no longer gives the leaf.
        let mut changed = erased.clone();
        changed.action.push('x');
        assert_ne!(opening.leaf_bytes(&changed, &mut Vec::new()), original);
        // Erasing more later keeps it whole; the salt is not in the bytes.
        let mut more = erased.clone();
        let again = opening.erase(&mut more, 1 << 5 | 1 << 6, "req-2", &Erase);
        assert!(more.resource.is_empty() && more.query.is_empty());
        assert_eq!(again.leaf_bytes(&more, &mut Vec::new()), original);
        let bytes = again.to_bytes();
        assert!(!bytes.windows(SALT_LEN).any(|w| w == VECTOR_SALT));
        assert_eq!(Opening::from_bytes(&bytes[..bytes.len() - 1]), None);
        // Flags naming two leaf versions are no form.
        let mut both = bytes.clone();
        both[1] |= LEAF_V2 | LEAF_V3;
        assert_eq!(Opening::from_bytes(&both), None);
    }

    /// The index's one-byte seeded forms name their leaf version: events
    /// stored before version 3 keep `0x04`, and still rebuild version 2.
    #[test]
    fn a_seeded_form_names_its_leaf_version() {
        let dir = tempfile::tempdir().unwrap();
        let seeds = SaltSeeds::open(dir.path(), 0).unwrap();
        seeds.add(100, 40, VECTOR_SALT);
        let salt = seeds.salt(105).unwrap();
        for (version, form) in [(Version::V2, SEEDED_FORM), (Version::V3, SEEDED_V3_FORM)] {
            assert_eq!(seeded_form(version), Some(&[form][..]));
            assert_eq!(
                Opening::stored(Some(&[form]), || seeds.salt(105)),
                Some(Opening::Salt(version, salt))
            );
        }
        assert_eq!(seeded_form(Version::V1), None);
        // No seed for that seq, or no seeds at all: nothing to rebuild from.
        assert_eq!(
            Opening::stored(Some(&[SEEDED_V3_FORM]), || seeds.salt(99)),
            None
        );
        assert_eq!(Opening::stored(Some(&[SEEDED_V3_FORM]), || None), None);
    }

    #[test]
    fn a_bare_salt_is_a_version_1_leaf_and_a_tagged_one_version_2_or_3() {
        assert_eq!(
            Opening::from_bytes(&VECTOR_SALT),
            Some(Opening::Salt(Version::V1, VECTOR_SALT))
        );
        let mut tagged = vec![SALT_V2_FORM];
        tagged.extend_from_slice(&VECTOR_SALT);
        assert_eq!(
            Opening::from_bytes(&tagged),
            Some(Opening::Salt(Version::V2, VECTOR_SALT))
        );
        tagged[0] = SALT_V3_FORM;
        assert_eq!(
            Opening::from_bytes(&tagged),
            Some(Opening::Salt(Version::V3, VECTOR_SALT))
        );
        tagged.push(0);
        assert_eq!(Opening::from_bytes(&tagged), None);
    }
}
