//! A partition's zstd dictionary: trained once, on the partition's own
//! events (the first [`MAX_TRAINING_RECORDS`] of its first segment that
//! has that many, or all of a smaller one of at least
//! [`MIN_TRAINING_RECORDS`]), and kept beside the partition's segments in
//! [`FILE`] for as long as the partition lives.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use sha2::{Digest, Sha256};
use zstd::dict::{DecoderDictionary, EncoderDictionary};

use super::LEVEL;

/// The dictionary's file in the partition's directory: the zstd
/// dictionary, then the SHA-256 of it (a damaged dictionary is refused,
/// not used to decompress garbage).
pub const FILE: &str = "events.dict";

/// Largest dictionary trained. Blocks of 4 KiB gain little past this
/// (`docs/benchmarks-history.md`, "2026-12-03: a doc store that reads one
/// event").
pub const DICTIONARY_BYTES: usize = 112 << 10;

/// Fewest records a dictionary is trained from; a segment with fewer,
/// written before the partition has a dictionary, is compressed without
/// one.
pub const MIN_TRAINING_RECORDS: usize = 1_000;

/// Most records a dictionary is trained from (spread evenly over what a
/// merge holds): a segment's writer waits for this many before it
/// trains. A dictionary of 5,000 `gen_events.py` lines compressed them
/// 1.4 % better than one of 1,000, and trained in 68 ms against 41
/// (docs/benchmarks-history.md, "2026-12-03: a doc store that reads one
/// event").
pub const MAX_TRAINING_RECORDS: usize = 5_000;

/// A trained dictionary. Each direction's prepared tables are made when
/// first used: a partition that is only read never pays for the
/// compression tables (about 1 MB at level 3), and one never read since
/// start-up holds only the dictionary's bytes.
pub struct Dictionary {
    id: u32,
    bytes: Vec<u8>,
    encoder: OnceLock<EncoderDictionary<'static>>,
    decoder: OnceLock<DecoderDictionary<'static>>,
}

impl std::fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dictionary").field("id", &self.id).finish()
    }
}

impl Dictionary {
    fn from_bytes(bytes: Vec<u8>) -> io::Result<Dictionary> {
        let id = zstd::zstd_safe::get_dict_id_from_dict(&bytes)
            .ok_or_else(|| invalid("not a zstd dictionary".into()))?
            .get();
        Ok(Dictionary {
            id,
            bytes,
            encoder: OnceLock::new(),
            decoder: OnceLock::new(),
        })
    }

    /// The id a segment's file names it by (never 0: 0 is "none").
    pub fn id(&self) -> u32 {
        self.id
    }

    pub(super) fn encoder(&self) -> &EncoderDictionary<'static> {
        self.encoder
            .get_or_init(|| EncoderDictionary::copy(&self.bytes, LEVEL))
    }

    pub(super) fn decoder(&self) -> &DecoderDictionary<'static> {
        self.decoder
            .get_or_init(|| DecoderDictionary::copy(&self.bytes))
    }
}

/// The dictionary of one partition: none until one is trained.
#[derive(Debug)]
pub struct PartitionDictionary {
    dir: PathBuf,
    current: RwLock<Option<Arc<Dictionary>>>,
}

impl PartitionDictionary {
    /// Loads the dictionary of the partition in `dir`, if it has one.
    pub fn open(dir: &Path) -> io::Result<PartitionDictionary> {
        let path = dir.join(FILE);
        let current = match std::fs::read(&path) {
            Ok(bytes) => Some(Arc::new(parse_file(&bytes).map_err(|e| {
                io::Error::new(e.kind(), format!("{}: {e}", path.display()))
            })?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(PartitionDictionary {
            dir: dir.to_owned(),
            current: RwLock::new(current),
        })
    }

    pub fn current(&self) -> Option<Arc<Dictionary>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The dictionary a segment's file names: `None` for id 0, an error
    /// for an id this partition does not have.
    pub fn by_id(&self, id: u32) -> io::Result<Option<Arc<Dictionary>>> {
        if id == 0 {
            return Ok(None);
        }
        match self.current() {
            Some(dictionary) if dictionary.id == id => Ok(Some(dictionary)),
            _ => Err(invalid(format!(
                "a segment names dictionary {id}, which {} does not hold",
                self.dir.join(FILE).display()
            ))),
        }
    }

    /// The partition's dictionary, trained from `records` (and made
    /// durable) if it has none yet and they are enough.
    pub fn current_or_train<R: AsRef<[u8]>>(
        &self,
        records: &[R],
    ) -> io::Result<Option<Arc<Dictionary>>> {
        if let Some(dictionary) = self.current() {
            return Ok(Some(dictionary));
        }
        if records.len() < MIN_TRAINING_RECORDS {
            return Ok(None);
        }
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if let Some(dictionary) = current.as_ref() {
            return Ok(Some(dictionary.clone()));
        }
        let step = records.len().div_ceil(MAX_TRAINING_RECORDS);
        let samples: Vec<&[u8]> = records.iter().step_by(step).map(|r| r.as_ref()).collect();
        let bytes = match zstd::dict::from_samples(&samples, DICTIONARY_BYTES) {
            Ok(bytes) => bytes,
            // Samples zstd cannot learn from (too few distinct bytes): the
            // segment goes without, and the next one tries again.
            Err(_) => return Ok(None),
        };
        let mut file = bytes.clone();
        file.extend_from_slice(&Sha256::digest(&bytes));
        let dictionary = Arc::new(Dictionary::from_bytes(bytes)?);
        // Whole or not at all, and durable before any segment names it.
        crate::datadir::write_atomically(&self.dir.join(FILE), &file, false)?;
        *current = Some(dictionary.clone());
        Ok(Some(dictionary))
    }
}

fn parse_file(bytes: &[u8]) -> io::Result<Dictionary> {
    let split = bytes
        .len()
        .checked_sub(32)
        .ok_or_else(|| invalid("too short".into()))?;
    let (dictionary, sum) = bytes.split_at(split);
    if Sha256::digest(dictionary).as_slice() != sum {
        return Err(invalid("its checksum does not match".into()));
    }
    Dictionary::from_bytes(dictionary.to_vec())
}

pub(super) fn invalid(detail: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn records(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                format!(
                    "{{\"action\":\"events.get\",\"subject\":\"user{:04}\",\"ip\":\"10.0.{}.{}\",\"n\":{i}}}",
                    i % 97,
                    i % 13,
                    i % 251
                )
                .into_bytes()
            })
            .collect()
    }

    #[test]
    fn too_few_records_train_nothing_and_enough_train_a_durable_dictionary() {
        let dir = tempfile::tempdir().unwrap();
        let dictionaries = PartitionDictionary::open(dir.path()).unwrap();
        assert!(dictionaries
            .current_or_train(&records(MIN_TRAINING_RECORDS - 1))
            .unwrap()
            .is_none());
        assert!(!dir.path().join(FILE).exists());

        let trained = dictionaries
            .current_or_train(&records(3_000))
            .unwrap()
            .expect("trained");
        assert_ne!(trained.id(), 0);
        let again = dictionaries.current_or_train(&records(3_000)).unwrap();
        assert_eq!(again.map(|d| d.id()), Some(trained.id()), "trained once");

        let reopened = PartitionDictionary::open(dir.path()).unwrap();
        assert_eq!(reopened.current().map(|d| d.id()), Some(trained.id()));
        assert!(reopened.by_id(0).unwrap().is_none());
        assert!(reopened.by_id(trained.id().wrapping_add(1)).is_err());
    }

    #[test]
    fn a_damaged_dictionary_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        PartitionDictionary::open(dir.path())
            .unwrap()
            .current_or_train(&records(3_000))
            .unwrap();
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let error = PartitionDictionary::open(dir.path()).unwrap_err();
        assert!(error.to_string().contains("checksum"), "{error}");
    }
}
