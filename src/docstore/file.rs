//! One segment's events file: its records in doc-id order, packed into
//! blocks of about [`BLOCK_BYTES`], each block one zstd frame (with the
//! partition's dictionary, or without when the file names none).
//!
//! ```text
//! block 0 | block 1 | … | index | footer
//! index:  per block, its first doc id (u32 LE) and its offset (u64 LE)
//! footer: "AEVS" | version (u8) = 1 | 3 zero bytes | dictionary id (u32 LE, 0 = none)
//!         | doc count (u32 LE) | block count (u32 LE) | index offset (u64 LE)
//! ```
//!
//! A record is the event's body and its salt (or opening), each a varint
//! length and its bytes ([`encode_record`]). Reading one record
//! decompresses one block: about 4 KiB, a dozen events.

use std::cell::RefCell;
use std::io::{self, Write};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prost::encoding::{decode_varint, encode_varint};
use tantivy::directory::OwnedBytes;
use tantivy::DocId;
use zstd::zstd_safe::{CCtx, DCtx};

use super::dictionary::{invalid, Dictionary, PartitionDictionary};
use super::LEVEL;

/// Uncompressed bytes after which a block is closed.
pub const BLOCK_BYTES: usize = 4 << 10;

const MAGIC: &[u8; 4] = b"AEVS";
const VERSION: u8 = 1;
const FOOTER_BYTES: usize = 28;
const ENTRY_BYTES: usize = 12;

/// Largest block a reader decompresses: a block holds records up to
/// [`BLOCK_BYTES`] and then one more, of at most the log's largest record.
const MAX_BLOCK_BYTES: u64 = 64 << 20;

/// Appends one record (`body`, `salt`) to `out`.
pub fn encode_record(body: &[u8], salt: &[u8], out: &mut Vec<u8>) {
    encode_varint(body.len() as u64, out);
    out.extend_from_slice(body);
    encode_varint(salt.len() as u64, out);
    out.extend_from_slice(salt);
}

/// The first value in `bytes` (a varint length and its bytes), and what
/// follows it.
fn split_value(mut bytes: &[u8]) -> io::Result<(&[u8], &[u8])> {
    let len = decode_varint(&mut bytes).map_err(|e| invalid(format!("record length: {e}")))?;
    let len = usize::try_from(len)
        .ok()
        .filter(|len| *len <= bytes.len())
        .ok_or_else(|| invalid("a record runs past its block".into()))?;
    Ok(bytes.split_at(len))
}

/// The first record in `bytes`: its body, its salt, and what follows it.
fn split_record(bytes: &[u8]) -> io::Result<(&[u8], &[u8], &[u8])> {
    let (body, rest) = split_value(bytes)?;
    let (salt, rest) = split_value(rest)?;
    Ok((body, salt, rest))
}

/// Writes an events file, record by record or by whole blocks of another.
pub struct FileWriter<W: Write> {
    out: W,
    written: u64,
    dictionary: Option<Arc<Dictionary>>,
    context: CCtx<'static>,
    block: Vec<u8>,
    block_first: DocId,
    docs: u32,
    index: Vec<u8>,
    compressed: Vec<u8>,
}

impl<W: Write> FileWriter<W> {
    pub fn new(out: W, dictionary: Option<Arc<Dictionary>>) -> FileWriter<W> {
        FileWriter {
            out,
            written: 0,
            dictionary,
            context: CCtx::create(),
            block: Vec::with_capacity(2 * BLOCK_BYTES),
            block_first: 0,
            docs: 0,
            index: Vec::new(),
            compressed: Vec::new(),
        }
    }

    pub fn dictionary_id(&self) -> u32 {
        self.dictionary.as_ref().map_or(0, |d| d.id())
    }

    /// Bytes it holds until they are written: the open block, the index.
    pub fn mem_usage(&self) -> usize {
        self.block.capacity() + self.compressed.capacity() + self.index.capacity()
    }

    /// Appends the next doc's record, already encoded ([`encode_record`]).
    pub fn push(&mut self, record: &[u8]) -> io::Result<()> {
        self.append(|block| block.extend_from_slice(record))
    }

    /// Appends the next doc's record: `body` and `salt`, encoded straight
    /// into the open block.
    pub fn push_record(&mut self, body: &[u8], salt: &[u8]) -> io::Result<()> {
        self.append(|block| encode_record(body, salt, block))
    }

    fn append(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        if self.block.is_empty() {
            self.block_first = self.docs;
        }
        write(&mut self.block);
        self.docs = self
            .docs
            .checked_add(1)
            .ok_or_else(|| invalid("more than u32::MAX documents".into()))?;
        if self.block.len() >= BLOCK_BYTES {
            self.close_block()?;
        }
        Ok(())
    }

    /// Appends every record of `file`, whose blocks are copied as they
    /// are: it must use this writer's dictionary.
    pub fn stack(&mut self, file: &EventsFile) -> io::Result<()> {
        if file.dictionary_id() != self.dictionary_id() {
            return Err(invalid("stacking blocks of another dictionary".into()));
        }
        self.close_block()?;
        let docs = self
            .docs
            .checked_add(file.docs)
            .ok_or_else(|| invalid("more than u32::MAX documents".into()))?;
        for block in 0..file.blocks {
            let (first, _) = file.entry(block);
            let bytes = file.block_bytes(block)?;
            self.write_block(self.docs.saturating_add(first), bytes)?;
        }
        self.docs = docs;
        Ok(())
    }

    fn close_block(&mut self) -> io::Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let mut compressed = std::mem::take(&mut self.compressed);
        compressed.clear();
        compressed.reserve(zstd::zstd_safe::compress_bound(self.block.len()));
        let result = match &self.dictionary {
            Some(dictionary) => self.context.compress_using_cdict(
                &mut compressed,
                &self.block,
                dictionary.encoder().as_cdict(),
            ),
            None => self.context.compress(&mut compressed, &self.block, LEVEL),
        };
        result.map_err(|code| zstd_error("compress", code))?;
        self.write_block(self.block_first, &compressed)?;
        self.compressed = compressed;
        self.block.clear();
        Ok(())
    }

    fn write_block(&mut self, first: DocId, bytes: &[u8]) -> io::Result<()> {
        self.index.extend_from_slice(&first.to_le_bytes());
        self.index.extend_from_slice(&self.written.to_le_bytes());
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Writes the index and the footer, and gives the output back.
    pub fn finish(mut self) -> io::Result<W> {
        self.close_block()?;
        let blocks = u32::try_from(self.index.len() / ENTRY_BYTES)
            .map_err(|_| invalid("more than u32::MAX blocks".into()))?;
        self.out.write_all(&self.index)?;
        let mut footer = Vec::with_capacity(FOOTER_BYTES);
        footer.extend_from_slice(MAGIC);
        footer.extend_from_slice(&[VERSION, 0, 0, 0]);
        footer.extend_from_slice(&self.dictionary_id().to_le_bytes());
        footer.extend_from_slice(&self.docs.to_le_bytes());
        footer.extend_from_slice(&blocks.to_le_bytes());
        footer.extend_from_slice(&self.written.to_le_bytes());
        self.out.write_all(&footer)?;
        Ok(self.out)
    }
}

/// A segment's events file, open for reading.
#[derive(Clone)]
pub struct EventsFile {
    /// Names this file (and its clones) in the threads' last-block cache.
    id: u64,
    bytes: OwnedBytes,
    dictionary: Option<Arc<Dictionary>>,
    docs: u32,
    blocks: usize,
    index_offset: usize,
}

thread_local! {
    /// One decompression context per thread, reused: making one per block
    /// read costs more than the block.
    static DECOMPRESSOR: RefCell<DCtx<'static>> = RefCell::new(DCtx::create());

    /// The last block this thread decompressed for [`EventsFile::get`]
    /// (file id, block, bytes): a page of neighbouring hits, or an export,
    /// reads each block once rather than once a hit.
    static LAST_BLOCK: RefCell<(u64, usize, Vec<u8>)> = const { RefCell::new((0, 0, Vec::new())) };
}

/// Ids of opened files, from 1 (0 is no file in [`LAST_BLOCK`]).
static NEXT_FILE_ID: AtomicU64 = AtomicU64::new(1);

impl EventsFile {
    /// Opens `bytes`, finding the dictionary it names in `dictionaries`.
    pub fn open(bytes: OwnedBytes, dictionaries: &PartitionDictionary) -> io::Result<EventsFile> {
        let data = bytes.as_slice();
        let footer_start = data
            .len()
            .checked_sub(FOOTER_BYTES)
            .ok_or_else(|| invalid("an events file shorter than its footer".into()))?;
        let footer = &data[footer_start..];
        if &footer[..4] != MAGIC {
            return Err(invalid("not an events file".into()));
        }
        if footer[4] != VERSION {
            return Err(invalid(format!(
                "events file version {} (this auditd reads {VERSION})",
                footer[4]
            )));
        }
        let u32_at = |at: usize| u32::from_le_bytes(footer[at..at + 4].try_into().expect("4"));
        let dictionary = dictionaries.by_id(u32_at(8))?;
        let docs = u32_at(12);
        let blocks = u32_at(16) as usize;
        let index_offset = u64::from_le_bytes(footer[20..28].try_into().expect("8"));
        let index_offset = usize::try_from(index_offset)
            .ok()
            .filter(|at| {
                blocks
                    .checked_mul(ENTRY_BYTES)
                    .and_then(|len| at.checked_add(len))
                    == Some(footer_start)
            })
            .ok_or_else(|| invalid("an events file's index does not fit it".into()))?;
        Ok(EventsFile {
            id: NEXT_FILE_ID.fetch_add(1, Ordering::Relaxed),
            bytes,
            dictionary,
            docs,
            blocks,
            index_offset,
        })
    }

    pub fn docs(&self) -> u32 {
        self.docs
    }

    pub fn dictionary_id(&self) -> u32 {
        self.dictionary.as_ref().map_or(0, |d| d.id())
    }

    /// Block `i`'s first doc and offset.
    fn entry(&self, i: usize) -> (DocId, u64) {
        let at = self.index_offset + i * ENTRY_BYTES;
        let entry = &self.bytes.as_slice()[at..at + ENTRY_BYTES];
        (
            u32::from_le_bytes(entry[..4].try_into().expect("4")),
            u64::from_le_bytes(entry[4..].try_into().expect("8")),
        )
    }

    fn block_range(&self, i: usize) -> Range<usize> {
        let start = self.entry(i).1 as usize;
        let end = if i + 1 < self.blocks {
            self.entry(i + 1).1 as usize
        } else {
            self.index_offset
        };
        start..end
    }

    /// The block holding `doc`.
    fn block_of(&self, doc: DocId) -> usize {
        let (mut low, mut high) = (0, self.blocks);
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            if self.entry(middle).0 <= doc {
                low = middle;
            } else {
                high = middle;
            }
        }
        low
    }

    /// Block `i` as stored (compressed).
    fn block_bytes(&self, i: usize) -> io::Result<&[u8]> {
        self.bytes
            .as_slice()
            .get(self.block_range(i))
            .ok_or_else(|| invalid("a block outside its file".into()))
    }

    /// Block `i`, decompressed into `out`.
    fn read_block(&self, i: usize, out: &mut Vec<u8>) -> io::Result<()> {
        let src = self.block_bytes(i)?;
        let size = zstd::zstd_safe::get_frame_content_size(src)
            .ok()
            .flatten()
            .filter(|size| *size <= MAX_BLOCK_BYTES)
            .ok_or_else(|| invalid("a block without a valid size".into()))?;
        out.clear();
        out.reserve(size as usize);
        DECOMPRESSOR.with(|context| {
            let mut context = context.borrow_mut();
            match &self.dictionary {
                Some(dictionary) => {
                    context.decompress_using_ddict(out, src, dictionary.decoder().as_ddict())
                }
                None => context.decompress(out, src),
            }
            .map(|_| ())
            .map_err(|code| zstd_error("decompress", code))
        })
    }

    /// `doc`'s body and salt.
    pub fn get(&self, doc: DocId) -> io::Result<(Vec<u8>, Vec<u8>)> {
        if doc >= self.docs {
            return Err(invalid(format!("doc {doc} of {}", self.docs)));
        }
        let block = self.block_of(doc);
        LAST_BLOCK.with(|last| {
            let mut last = last.borrow_mut();
            let (file, cached, bytes) = &mut *last;
            if (*file, *cached) != (self.id, block) {
                *file = 0;
                self.read_block(block, bytes)?;
                (*file, *cached) = (self.id, block);
            }
            let mut rest = bytes.as_slice();
            for _ in self.entry(block).0..doc {
                rest = split_record(rest)?.2;
            }
            let (body, salt, _) = split_record(rest)?;
            Ok((body.to_vec(), salt.to_vec()))
        })
    }

    /// Calls `f` with each doc's id and encoded record, in order, one
    /// decompression a block.
    pub fn for_each(&self, mut f: impl FnMut(DocId, &[u8]) -> io::Result<()>) -> io::Result<()> {
        let mut bytes = Vec::new();
        for block in 0..self.blocks {
            let (first, _) = self.entry(block);
            let end = if block + 1 < self.blocks {
                self.entry(block + 1).0
            } else {
                self.docs
            };
            self.read_block(block, &mut bytes)?;
            let mut rest = bytes.as_slice();
            for doc in first..end {
                let before = rest;
                rest = split_record(rest)?.2;
                f(doc, &before[..before.len() - rest.len()])?;
            }
        }
        Ok(())
    }
}

/// The body and salt of an encoded record.
#[cfg(test)]
fn decode_record(record: &[u8]) -> io::Result<(&[u8], &[u8])> {
    split_record(record).map(|(body, salt, _)| (body, salt))
}

fn zstd_error(what: &str, code: usize) -> io::Error {
    invalid(format!(
        "zstd could not {what}: {}",
        zstd::zstd_safe::get_error_name(code)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docstore::dictionary::MIN_TRAINING_RECORDS;

    fn body(i: usize) -> Vec<u8> {
        format!(
            "{{\"action\":\"events.get\",\"subject\":\"user{:04}\",\"status\":{},\"n\":{i}}}",
            i % 97,
            200 + i % 3
        )
        .into_bytes()
    }

    fn write(n: usize, dictionary: Option<Arc<Dictionary>>) -> Vec<u8> {
        let mut writer = FileWriter::new(Vec::new(), dictionary);
        let mut record = Vec::new();
        for i in 0..n {
            record.clear();
            encode_record(&body(i), &[i as u8; 17], &mut record);
            writer.push(&record).unwrap();
        }
        writer.finish().unwrap()
    }

    fn trained(dir: &std::path::Path) -> PartitionDictionary {
        let dictionaries = PartitionDictionary::open(dir).unwrap();
        let records: Vec<Vec<u8>> = (0..MIN_TRAINING_RECORDS * 2).map(body).collect();
        dictionaries.current_or_train(&records).unwrap().unwrap();
        dictionaries
    }

    #[test]
    fn every_record_reads_back_with_and_without_a_dictionary() {
        let dir = tempfile::tempdir().unwrap();
        let dictionaries = trained(dir.path());
        for dictionary in [None, dictionaries.current()] {
            let id = dictionary.as_ref().map_or(0, |d| d.id());
            let bytes = write(1_000, dictionary);
            let file = EventsFile::open(OwnedBytes::new(bytes), &dictionaries).unwrap();
            assert_eq!((file.docs(), file.dictionary_id()), (1_000, id));
            assert!(file.blocks > 10, "{} blocks", file.blocks);
            for i in [0, 1, 499, 998, 999] {
                assert_eq!(file.get(i as u32).unwrap(), (body(i), vec![i as u8; 17]));
            }
            assert!(file.get(1_000).is_err());
            let mut seen = 0;
            file.for_each(|doc, record| {
                let (b, s) = decode_record(record)?;
                assert_eq!(
                    (b, s),
                    (body(doc as usize).as_slice(), &[doc as u8; 17][..])
                );
                seen += 1;
                Ok(())
            })
            .unwrap();
            assert_eq!(seen, 1_000);
        }
    }

    #[test]
    fn stacked_files_read_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let dictionaries = trained(dir.path());
        let first = EventsFile::open(
            OwnedBytes::new(write(300, dictionaries.current())),
            &dictionaries,
        )
        .unwrap();
        let mut writer = FileWriter::new(Vec::new(), dictionaries.current());
        let mut record = Vec::new();
        encode_record(b"loose", b"", &mut record);
        writer.push(&record).unwrap();
        writer.stack(&first).unwrap();
        writer.stack(&first).unwrap();
        let file =
            EventsFile::open(OwnedBytes::new(writer.finish().unwrap()), &dictionaries).unwrap();
        assert_eq!(file.docs(), 601);
        assert_eq!(file.get(0).unwrap().0, b"loose");
        assert_eq!(file.get(1).unwrap().0, body(0));
        assert_eq!(file.get(300).unwrap().0, body(299));
        assert_eq!(file.get(301).unwrap().0, body(0));
        assert_eq!(file.get(600).unwrap().0, body(299));

        let mut other = FileWriter::new(Vec::new(), None);
        assert!(other.stack(&first).is_err(), "another dictionary's blocks");
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let dictionaries = PartitionDictionary::open(dir.path()).unwrap();
        let bytes = write(200, None);
        for cut in [0, 10, bytes.len() - 1] {
            assert!(
                EventsFile::open(OwnedBytes::new(bytes[..cut].to_vec()), &dictionaries).is_err()
            );
        }
        // The first block's frame header, with its reserved bit set.
        let mut flipped = bytes.clone();
        flipped[4] ^= 0x08;
        let file = EventsFile::open(OwnedBytes::new(flipped), &dictionaries).unwrap();
        assert!((0..200).any(|doc| file.get(doc).is_err()));
        let mut named = bytes;
        let at = named.len() - FOOTER_BYTES + 8;
        named[at] = 7;
        assert!(
            EventsFile::open(OwnedBytes::new(named), &dictionaries).is_err(),
            "an unknown dictionary"
        );
    }
}
