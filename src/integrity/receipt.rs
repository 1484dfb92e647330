//! Receipts: an event's inclusion proof as a C2SP `tlog-proof` text, and
//! its offline verification (what `auditctl verify-receipt` runs).
//!
//! ```text
//! c2sp.org/tlog-proof@v1
//! extra <base64(0x01 || salt || leaf bytes)>
//! index <leaf index, the event's seq>
//! <base64 hash>                        (the RFC 9162 audit path, one a line)
//!
//! <the signed checkpoint note>
//! ```
//!
//! `extra` (opaque to other tlog-proof readers) carries what the leaf is
//! made of: for a version 1 leaf, form byte `0x01`, the event's 16-byte
//! salt, then the leaf bytes; otherwise (a version 2 or 3 leaf, or an event
//! erasure took fields from) form byte `0x02`, the length of its opening
//! (u16, big-endian), the opening (`integrity::opening`), then the leaf
//! bytes. The leaf bytes alone prove that the log holds this leaf; with
//! the event they prove it is this event (`docs/integrity.md`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::leaf::{Version, SALT_LEN};
use super::merkle::{leaf_hash, verify_inclusion, Hash, ProofError};
use super::note::{parse_checkpoint, verify, NoteError};
use super::opening::Opening;
use crate::proto::AuditEvent;

const HEADER: &str = "c2sp.org/tlog-proof@v1";
/// The forms of `extra`: a version 1 leaf's salt, then leaf bytes; or
/// any other opening, then leaf bytes.
const EXTRA_SALT_AND_LEAF: u8 = 0x01;
const EXTRA_OPENING_AND_LEAF: u8 = 0x02;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("not a tlog-proof: {0}")]
    Malformed(&'static str),
    #[error("the checkpoint: {0}")]
    Note(#[from] NoteError),
    #[error("the inclusion proof: {0}")]
    Proof(#[from] ProofError),
    #[error("the event does not match the leaf: {0}")]
    EventMismatch(&'static str),
}

/// A receipt's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub index: u64,
    pub hashes: Vec<Hash>,
    /// The signed checkpoint note, as text.
    pub checkpoint: String,
    /// What the leaf is rebuilt from with the event.
    pub opening: Opening,
    pub leaf: Vec<u8>,
}

impl Receipt {
    /// The `tlog-proof` text.
    pub fn to_text(&self) -> String {
        let mut extra = Vec::with_capacity(3 + SALT_LEN + self.leaf.len());
        match &self.opening {
            Opening::Salt(Version::V1, salt) => {
                extra.push(EXTRA_SALT_AND_LEAF);
                extra.extend_from_slice(salt);
            }
            opening => {
                let bytes = opening.to_bytes();
                extra.push(EXTRA_OPENING_AND_LEAF);
                extra.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
                extra.extend_from_slice(&bytes);
            }
        }
        extra.extend_from_slice(&self.leaf);
        let mut out = format!(
            "{HEADER}\nextra {}\nindex {}\n",
            STANDARD.encode(extra),
            self.index
        );
        for hash in &self.hashes {
            out.push_str(&STANDARD.encode(hash));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.checkpoint);
        out
    }

    /// Reads a `tlog-proof` text this module wrote.
    pub fn parse(text: &str) -> Result<Receipt, ReceiptError> {
        let malformed = ReceiptError::Malformed;
        let (head, checkpoint) = text
            .split_once("\n\n")
            .ok_or(malformed("no blank line before the checkpoint"))?;
        let mut lines = head.lines();
        if lines.next() != Some(HEADER) {
            return Err(malformed("the first line is not c2sp.org/tlog-proof@v1"));
        }
        let mut line = lines.next().ok_or(malformed("no index line"))?;
        let mut extra = None;
        if let Some(value) = line.strip_prefix("extra ") {
            extra = Some(
                STANDARD
                    .decode(value)
                    .map_err(|_| malformed("extra is not base64"))?,
            );
            line = lines.next().ok_or(malformed("no index line"))?;
        }
        let index = line
            .strip_prefix("index ")
            .and_then(|n| n.parse().ok())
            .ok_or(malformed("no `index N` line"))?;
        let hashes = lines
            .map(|l| {
                STANDARD
                    .decode(l)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or(malformed("a proof line is not 32 bytes of base64"))
            })
            .collect::<Result<Vec<Hash>, _>>()?;
        let extra = extra.ok_or(malformed(
            "no extra line: an auditd receipt carries the event's salt and leaf",
        ))?;
        let (opening, leaf) = match extra.first() {
            Some(&EXTRA_SALT_AND_LEAF) if extra.len() > 1 + SALT_LEN => {
                let salt = extra[1..1 + SALT_LEN].try_into().expect("16 bytes");
                (Opening::Salt(Version::V1, salt), &extra[1 + SALT_LEN..])
            }
            Some(&EXTRA_OPENING_AND_LEAF) if extra.len() > 3 => {
                let len = u16::from_be_bytes([extra[1], extra[2]]) as usize;
                let bytes = extra
                    .get(3..3 + len)
                    .ok_or(malformed("extra's opening is cut short"))?;
                let opening = Opening::from_bytes(bytes)
                    .ok_or(malformed("extra's opening is not an auditd opening"))?;
                (opening, &extra[3 + len..])
            }
            _ => {
                return Err(malformed(
                    "extra is not an auditd salt or opening and a leaf",
                ))
            }
        };
        Ok(Receipt {
            index,
            hashes,
            checkpoint: checkpoint.to_owned(),
            opening,
            leaf: leaf.to_vec(),
        })
    }
}

/// What a receipt was checked to prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub origin: String,
    pub tree_size: u64,
    pub root: Hash,
    pub index: u64,
    /// Whether an event was given and matched the leaf.
    pub event_matched: bool,
}

/// Checks `receipt` offline: the checkpoint's signature by
/// `verifier_key`, the audit path from the leaf to the signed root, and,
/// when `event` is given, that the leaf is made of exactly that event.
pub fn verify_receipt(
    receipt: &Receipt,
    verifier_key: &str,
    event: Option<&AuditEvent>,
) -> Result<Verified, ReceiptError> {
    let body = verify(&receipt.checkpoint, verifier_key)?;
    let (origin, tree_size, root) = parse_checkpoint(body)?;
    verify_inclusion(
        &leaf_hash(&receipt.leaf),
        receipt.index,
        tree_size,
        &receipt.hashes,
        &root,
    )?;
    if let Some(event) = event {
        if event.seq != receipt.index && event.seq != 0 {
            return Err(ReceiptError::EventMismatch(
                "the event's seq is not the receipt's index",
            ));
        }
        let mut scratch = Vec::new();
        if receipt.opening.leaf_bytes(event, &mut scratch) != receipt.leaf {
            return Err(ReceiptError::EventMismatch(
                "its fields, with the receipt's salt, make another leaf",
            ));
        }
    }
    Ok(Verified {
        origin: origin.to_owned(),
        tree_size,
        root,
        index: receipt.index,
        event_matched: event.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::leaf::leaf_bytes;
    use crate::integrity::leaf::tests::{vector_event, VECTOR_SALT};
    use crate::integrity::merkle::{inclusion_proof, MemoryTree};
    use crate::integrity::note::{checkpoint_body, NoteSigner};

    /// A receipt for the vector event as leaf 5 of 9 in `version`, and
    /// the key.
    fn receipt_in(version: Version) -> (Receipt, String) {
        let mut scratch = Vec::new();
        let leaf = leaf_bytes(version, &vector_event(), &VECTOR_SALT, &mut scratch);
        let mut tree = MemoryTree::new();
        for i in 0..9u8 {
            tree.push(if i == 5 {
                leaf_hash(&leaf)
            } else {
                leaf_hash(&[1, i])
            });
        }
        let signer = NoteSigner::generate("auditd/test", [7; 32]).unwrap();
        let note = signer
            .sign(&checkpoint_body("auditd/test", 9, &tree.root()))
            .unwrap();
        let receipt = Receipt {
            index: 5,
            hashes: inclusion_proof(&tree, 5, 9).unwrap(),
            checkpoint: note,
            opening: Opening::Salt(version, VECTOR_SALT),
            leaf,
        };
        (receipt, signer.verifier_key())
    }

    fn receipt() -> (Receipt, String) {
        receipt_in(Version::CURRENT)
    }

    #[test]
    fn a_receipt_round_trips_as_text_and_verifies_with_and_without_its_event() {
        for version in [Version::V1, Version::V2, Version::V3] {
            round_trips_and_verifies_in(version);
        }
    }

    fn round_trips_and_verifies_in(version: Version) {
        let (receipt, key) = receipt_in(version);
        let text = receipt.to_text();
        assert!(text.starts_with("c2sp.org/tlog-proof@v1\nextra "), "{text}");
        assert!(text.contains("\nindex 5\n"), "{text}");
        let read = Receipt::parse(&text).unwrap();
        assert_eq!(read, receipt);
        let verified = verify_receipt(&read, &key, None).unwrap();
        assert_eq!((verified.tree_size, verified.index), (9, 5));
        assert!(
            verify_receipt(&read, &key, Some(&vector_event()))
                .unwrap()
                .event_matched
        );
    }

    #[test]
    fn a_changed_event_path_index_or_key_is_refused() {
        let (receipt, key) = receipt();
        let mut changed = vector_event();
        changed.subject = "emmb".into();
        assert!(matches!(
            verify_receipt(&receipt, &key, Some(&changed)),
            Err(ReceiptError::EventMismatch(_))
        ));
        let mut path = receipt.clone();
        path.hashes[1][0] ^= 1;
        assert!(matches!(
            verify_receipt(&path, &key, None),
            Err(ReceiptError::Proof(_))
        ));
        let mut index = receipt.clone();
        index.index = 4;
        assert!(verify_receipt(&index, &key, None).is_err());
        let other = NoteSigner::generate("auditd/test", [8; 32]).unwrap();
        assert!(matches!(
            verify_receipt(&receipt, &other.verifier_key(), None),
            Err(ReceiptError::Note(_))
        ));
    }
}
