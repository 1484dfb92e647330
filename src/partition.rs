//! Time partitions: one Tantivy index per UTC day of event time, under
//! `<data_dir>/index/YYYY-MM-DD/`. Retention can drop a whole directory, and
//! a time-bounded search opens only the days it covers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tantivy::directory::{Directory, MmapDirectory};
use tantivy::store::{Compressor, ZstdCompressor};
use tantivy::{Index, IndexReader, IndexSettings, ReloadPolicy};

use crate::docstore::{self, EventsPlugin, PartitionDictionary};
use crate::messages::CommitPayload;
use crate::schema::AuditSchema;
use crate::search::view::{View, Views};

/// Width of one partition.
pub const PARTITION_MICROS: i64 = 86_400 * 1_000_000;

/// Days since the epoch; the partition key.
pub type Day = i64;

pub fn day_of(time_micros: i64) -> Day {
    time_micros.div_euclid(PARTITION_MICROS)
}

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("index error in {path}: {source}")]
    Tantivy {
        path: PathBuf,
        source: tantivy::TantivyError,
    },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: commit payload {payload:?} is not a WAL position and seq")]
    BadPayload { path: PathBuf, payload: String },
    #[error(
        "{path}: {detail}. This build reads only SSTable term dictionaries; \
         partitions written before 2026-11-23 used FSTs. Nothing was changed: \
         read it with the earlier build, or move it aside and ingest its events again"
    )]
    Format { path: PathBuf, detail: String },
    #[error("{path}: damaged index files (checksum mismatch): {}", list(files))]
    Damaged { path: PathBuf, files: Vec<PathBuf> },
}

fn list(files: &[PathBuf]) -> String {
    let names: Vec<_> = files.iter().map(|f| f.display().to_string()).collect();
    names.join(", ")
}

/// One day's index and the reader searches share.
pub struct Partition {
    pub day: Day,
    pub path: PathBuf,
    pub index: Index,
    pub reader: IndexReader,
    /// The dictionary of its events store; `None` in a partition created
    /// before data format 5, which keeps its events in Tantivy's doc store.
    pub events: Option<Arc<PartitionDictionary>>,
    views: Views,
}

impl Partition {
    /// What a search sees of this partition now: its searcher since the
    /// last reload, with the columns every search reads.
    pub fn view(&self) -> tantivy::Result<Arc<View>> {
        self.views.current(&self.reader, self.events.as_deref())
    }

    /// Opens its view now, with its segments' time bounds, so that the
    /// next search need not (`Views::warm`): at start
    /// (`Partitions::warm_in_background`). A view that cannot be opened
    /// now is opened by the next search, which reports why.
    pub fn warm(&self) {
        if let Err(error) = self.views.warm(&self.reader, self.events.as_deref()) {
            tracing::debug!(%error, path = %self.path.display(), "warming the partition's view");
        }
    }

    #[cfg(test)]
    pub fn is_warm(&self) -> bool {
        self.views.is_warm(&self.reader)
    }

    /// Commits events of seqs `seqs`, at the start of its day, as one
    /// segment, and reloads its reader.
    #[cfg(test)]
    pub fn commit_events(&self, schema: &AuditSchema, seqs: std::ops::Range<u64>) {
        let mut writer = self.index.writer_with_num_threads(1, 15_000_000).unwrap();
        for seq in seqs {
            let mut event = crate::proto::AuditEvent {
                id: format!("e{seq}"),
                time: Some(crate::schema::micros_to_timestamp(
                    self.day * PARTITION_MICROS,
                )),
                ..Default::default()
            };
            let doc = schema.document(&mut event, seq, "b", None, &mut Vec::new());
            writer.add_document(doc).unwrap();
        }
        writer.commit().unwrap();
        self.reader.reload().unwrap();
    }

    /// The seqs of every event its searcher holds, and the bytes of its
    /// files.
    pub fn seqs_and_bytes(&self) -> Result<(Vec<u64>, u64), PartitionError> {
        let tantivy = |source| PartitionError::Tantivy {
            path: self.path.clone(),
            source,
        };
        let view = self.view().map_err(tantivy)?;
        let mut seqs = Vec::with_capacity(view.searcher.num_docs() as usize);
        for (reader, columns) in view.searcher.segment_readers().iter().zip(&view.columns) {
            for doc in reader.doc_ids_alive() {
                seqs.extend(columns.seq.first(doc));
            }
        }
        let mut bytes = 0;
        let entries = std::fs::read_dir(&self.path).map_err(|source| PartitionError::Io {
            path: self.path.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            bytes += entry.metadata().map_or(0, |m| m.len());
        }
        Ok((seqs, bytes))
    }

    /// What this partition's last commit covers: every record that starts
    /// below its log position and holds events of this day is in the index.
    pub fn committed(&self) -> Result<CommitPayload, PartitionError> {
        let metas = self
            .index
            .load_metas()
            .map_err(|source| PartitionError::Tantivy {
                path: self.path.clone(),
                source,
            })?;
        match metas.payload {
            None => Ok(CommitPayload::default()),
            Some(payload) => {
                CommitPayload::parse(&payload).ok_or_else(|| PartitionError::BadPayload {
                    path: self.path.clone(),
                    payload,
                })
            }
        }
    }
}

/// Every partition, shared by the indexer (which creates them) and search.
pub struct Partitions {
    root: PathBuf,
    schema: AuditSchema,
    map: RwLock<BTreeMap<Day, Arc<Partition>>>,
}

impl Partitions {
    /// Opens every partition under `root` (created when missing). With
    /// `verify`, also checks each one's commit payload and the checksum of
    /// every file its last commit uses (reading them all once): damage is
    /// then an error here instead of wrong or failing searches later.
    pub fn open(
        root: &Path,
        schema: AuditSchema,
        verify: bool,
    ) -> Result<Partitions, PartitionError> {
        std::fs::create_dir_all(root).map_err(|source| PartitionError::Io {
            path: root.to_owned(),
            source,
        })?;
        let mut map = BTreeMap::new();
        let entries = std::fs::read_dir(root).map_err(|source| PartitionError::Io {
            path: root.to_owned(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| PartitionError::Io {
                path: root.to_owned(),
                source,
            })?;
            let Some(day) = entry.file_name().to_str().and_then(parse_day) else {
                continue;
            };
            let partition = if verify {
                verify_partition(&entry.path(), day, &schema)?
            } else {
                open_partition(&entry.path(), day, &schema, false)?
            };
            map.insert(day, Arc::new(partition));
        }
        Ok(Partitions {
            root: root.to_owned(),
            schema,
            map: RwLock::new(map),
        })
    }

    pub fn schema(&self) -> &AuditSchema {
        &self.schema
    }

    /// The partition for `day`, created on first use.
    pub fn get_or_create(&self, day: Day) -> Result<Arc<Partition>, PartitionError> {
        if let Some(p) = self.map.read().expect("partition map lock").get(&day) {
            return Ok(p.clone());
        }
        let path = self.root.join(format_day(day));
        let partition = Arc::new(open_partition(&path, day, &self.schema, true)?);
        let mut map = self.map.write().expect("partition map lock");
        let partition = map.entry(day).or_insert(partition).clone();
        metrics::gauge!(crate::metrics::PARTITIONS).set(map.len() as f64);
        Ok(partition)
    }

    /// Takes the partition of `day` out of every search from now on (a
    /// search already running keeps its own handle) and removes its
    /// directory, durably.
    pub fn remove(&self, day: Day) -> Result<(), PartitionError> {
        let removed = {
            let mut map = self.map.write().expect("partition map lock");
            let removed = map.remove(&day);
            metrics::gauge!(crate::metrics::PARTITIONS).set(map.len() as f64);
            removed
        };
        let path = removed.map_or_else(|| self.root.join(format_day(day)), |p| p.path.clone());
        let io = |source| PartitionError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(e)),
        }
        std::fs::File::open(&self.root)
            .and_then(|dir| dir.sync_all())
            .map_err(io)
    }

    pub fn get(&self, day: Day) -> Option<Arc<Partition>> {
        self.map
            .read()
            .expect("partition map lock")
            .get(&day)
            .cloned()
    }

    /// The partitions that can hold events in `[from, to)` (microseconds;
    /// `None` is unbounded).
    pub fn overlapping(&self, from: Option<i64>, to: Option<i64>) -> Vec<Arc<Partition>> {
        let lo = from.map_or(Day::MIN, day_of);
        // `to` is exclusive: an event at to - 1 µs is the last that counts.
        let hi = to.map_or(Day::MAX, |t| day_of(t.saturating_sub(1)));
        if lo > hi {
            return Vec::new();
        }
        self.map
            .read()
            .expect("partition map lock")
            .range(lo..=hi)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Warms the newest partitions (`Partition::warm`), the newest day
    /// first, until `events` events are warmed (the day that crosses it
    /// whole), on a thread of its own at the lowest priority: the first
    /// searches after a start would otherwise find each segment's time
    /// bounds themselves (`index.warm_on_start_events`). A partition
    /// removed meanwhile is passed over. Each warmed partition's searcher
    /// is then handed to `and_then`, on the same thread: the search layer
    /// makes the bit sets the last run used there
    /// (`DenseTerms::make_remembered`), and what it returns is logged as
    /// `bit_sets`.
    pub fn warm_in_background(
        self: &Arc<Self>,
        events: u64,
        and_then: impl Fn(&tantivy::Searcher) -> usize + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let days: Vec<Day> = self
            .map
            .read()
            .expect("partition map lock")
            .keys()
            .copied()
            .collect();
        let partitions = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("auditd-warm".into())
            .spawn(move || {
                crate::priority::lower_this_threads_priority("the start's warming");
                let started = std::time::Instant::now();
                let (mut warmed, mut days_warmed, mut bit_sets) = (0u64, 0usize, 0usize);
                for day in days.into_iter().rev() {
                    let Some(partitions) = partitions.upgrade().filter(|_| warmed < events) else {
                        break;
                    };
                    if let Some(partition) = partitions.get(day) {
                        partition.warm();
                        let searcher = partition.reader.searcher();
                        warmed += searcher.num_docs();
                        days_warmed += 1;
                        bit_sets += and_then(&searcher);
                    }
                }
                let seconds = started.elapsed().as_secs_f64();
                tracing::info!(
                    days = days_warmed,
                    events = warmed,
                    bit_sets,
                    seconds,
                    "the newest partitions' views are warm"
                );
            })
    }

    /// The latest `received` (µs) of any event in the index, from each
    /// segment's column bounds (deleted events count too); `None` when the
    /// index is empty.
    pub fn latest_received(&self) -> Result<Option<i64>, PartitionError> {
        let map = self.map.read().expect("partition map lock");
        let mut latest = None;
        for partition in map.values() {
            for segment in partition.reader.searcher().segment_readers() {
                let column = segment
                    .fast_fields()
                    .i64(crate::schema::names::RECEIVED)
                    .map_err(|source| PartitionError::Tantivy {
                        path: partition.path.clone(),
                        source,
                    })?;
                if segment.max_doc() > 0 {
                    latest = latest.max(Some(column.max_value()));
                }
            }
        }
        Ok(latest)
    }

    pub fn len(&self) -> usize {
        self.map.read().expect("partition map lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Opens an existing partition as it is, as the daemon would: for tools
/// and tests that read or change a stopped daemon's index.
pub fn open_existing(
    path: &Path,
    day: Day,
    schema: &AuditSchema,
) -> Result<Partition, PartitionError> {
    open_partition(path, day, schema, false)
}

/// Opens an existing partition and checks that its commit payload parses
/// and that every file its last commit uses matches its checksum.
pub fn verify_partition(
    path: &Path,
    day: Day,
    schema: &AuditSchema,
) -> Result<Partition, PartitionError> {
    let partition = open_partition(path, day, schema, false)?;
    partition.committed()?;
    let damaged =
        partition
            .index
            .validate_checksum()
            .map_err(|source| PartitionError::Tantivy {
                path: path.to_owned(),
                source,
            })?;
    if !damaged.is_empty() {
        let mut files: Vec<_> = damaged.into_iter().map(|f| path.join(f)).collect();
        files.sort();
        return Err(PartitionError::Damaged {
            path: path.to_owned(),
            files,
        });
    }
    Ok(partition)
}

fn open_partition(
    path: &Path,
    day: Day,
    schema: &AuditSchema,
    create: bool,
) -> Result<Partition, PartitionError> {
    let tantivy_err = |source| PartitionError::Tantivy {
        path: path.to_owned(),
        source,
    };
    if create {
        std::fs::create_dir_all(path).map_err(|source| PartitionError::Io {
            path: path.to_owned(),
            source,
        })?;
    }
    let dir = MmapDirectory::open(path).map_err(|e| tantivy_err(e.into()))?;
    #[cfg(feature = "failpoints")]
    let dir = crate::failpoint::FailingDirectory(dir);
    let (index, events) = open_index(path, dir, schema).map_err(tantivy_err)?;
    crate::schema::register_tokenizers(&index);
    let reader: IndexReader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()
        .map_err(tantivy_err)?;
    check_dictionaries(path, &reader, schema)?;
    Ok(Partition {
        day,
        path: path.to_owned(),
        index,
        reader,
        events,
        views: Views::default(),
    })
}

/// Opens the index in `dir` (the directory `path`), or creates it, with
/// the events store, when there is none. An index created with the events
/// store has it registered again (Tantivy does not keep plugins); one
/// created before data format 5 keeps Tantivy's doc store.
fn open_index<D: Directory>(
    path: &Path,
    dir: D,
    schema: &AuditSchema,
) -> tantivy::Result<(Index, Option<Arc<PartitionDictionary>>)> {
    if !Index::exists(&dir)? {
        let (index, dictionary) = create_index(path, dir, schema)?;
        return Ok((index, Some(dictionary)));
    }
    let mut index = Index::open(dir)?;
    let persisted = index.load_metas()?.persisted_custom_extensions;
    if !persisted.iter().any(|e| e == docstore::EXTENSION) {
        return Ok((index, None));
    }
    let (plugin, dictionary) = events_plugin(path, schema)?;
    index.register_plugin(plugin);
    Ok((index, Some(dictionary)))
}

/// Creates a partition's index in `dir` (the directory `path`): the
/// schema and settings of every new partition, with the events store.
/// Also what the raw-engine bench builds, to be a fair limit.
pub fn create_index<D: Directory>(
    path: &Path,
    dir: D,
    schema: &AuditSchema,
) -> tantivy::Result<(Index, Arc<PartitionDictionary>)> {
    let (plugin, dictionary) = events_plugin(path, schema)?;
    let index = Index::builder()
        .schema(schema.events_store_schema())
        .settings(index_settings())
        .register_plugin(plugin)
        .open_or_create(dir)?;
    Ok((index, dictionary))
}

fn events_plugin(
    path: &Path,
    schema: &AuditSchema,
) -> tantivy::Result<(Arc<EventsPlugin>, Arc<PartitionDictionary>)> {
    let dictionary = Arc::new(PartitionDictionary::open(path)?);
    let plugin = EventsPlugin::new(schema.body, schema.salt, dictionary.clone());
    Ok((Arc::new(plugin), dictionary))
}

/// Opens one term dictionary of every segment: Tantivy opens them only
/// when a query first needs them, so a partition in the older FST format
/// would otherwise start and then fail searches.
fn check_dictionaries(
    path: &Path,
    reader: &IndexReader,
    schema: &AuditSchema,
) -> Result<(), PartitionError> {
    for segment in reader.searcher().segment_readers() {
        if let Err(error) = segment.inverted_index(schema.id) {
            let detail = error.to_string();
            // Tantivy says so only in its message ("Unsupported dictionary
            // type, compiled tantivy with SSTable, but got Fst").
            if detail.contains("dictionary type") {
                return Err(PartitionError::Format {
                    path: path.to_owned(),
                    detail,
                });
            }
            return Err(PartitionError::Tantivy {
                path: path.to_owned(),
                source: error,
            });
        }
    }
    Ok(())
}

/// The settings of every new partition (and of the raw-engine bench, which
/// must build the same index to be a fair limit).
pub fn index_settings() -> IndexSettings {
    IndexSettings {
        // Level 6 rather than zstd's default 3: a smaller doc store at no
        // measurable cost in indexing rate, where higher levels cost rate
        // (BENCHMARKS.md, Disk; the runs: docs/benchmarks-history.md).
        // Decompression, which fetching pays, is as fast at either level.
        docstore_compression: Compressor::Zstd(ZstdCompressor {
            compression_level: Some(6),
        }),
        // 64 KiB blocks (Tantivy's default is 16 KiB): less disk
        // (BENCHMARKS.md, Disk); a fetched event costs one block's
        // decompression.
        docstore_blocksize: 64 << 10,
        ..IndexSettings::default()
    }
}

/// `2023-11-14` for the day starting at that UTC midnight.
pub fn format_day(day: Day) -> String {
    match time::OffsetDateTime::from_unix_timestamp(day * 86_400) {
        Ok(t) => {
            let d = t.date();
            format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
        }
        Err(_) => format!("day{day}"),
    }
}

pub fn parse_day(name: &str) -> Option<Day> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(name, &format).ok()?;
    Some(
        date.midnight()
            .assume_utc()
            .unix_timestamp()
            .div_euclid(86_400),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_warms_the_newest_partitions_up_to_its_limit_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let days = [20_362, 20_363, 20_365];
        {
            let partitions = Partitions::open(dir.path(), AuditSchema::new(), false).unwrap();
            for day in days {
                let partition = partitions.get_or_create(day).unwrap();
                partition.commit_events(partitions.schema(), 0..3);
            }
        }
        // Past the limit, the older days are left to the first search;
        // the day that crosses it is warmed whole; 0 warms none.
        let open = || Arc::new(Partitions::open(dir.path(), AuditSchema::new(), false).unwrap());
        for (limit, warm) in [
            (0, [false, false, false]),
            (1, [false, false, true]),
            (3, [false, false, true]),
            (4, [false, true, true]),
            (9, [true, true, true]),
            (u64::MAX, [true, true, true]),
        ] {
            let partitions = open();
            let all = partitions.overlapping(None, None);
            assert_eq!(all.len(), days.len());
            assert!(all.iter().all(|p| !p.is_warm()));
            // Each warmed day is handed on.
            let handed = Arc::new(std::sync::Mutex::new(Vec::new()));
            let record = handed.clone();
            partitions
                .warm_in_background(limit, move |searcher| {
                    record.lock().unwrap().push(searcher.num_docs());
                    0
                })
                .unwrap()
                .join()
                .unwrap();
            let warmed: Vec<bool> = all.iter().map(|p| p.is_warm()).collect();
            assert_eq!(warmed, warm, "limit {limit}");
            let days_warmed = warm.iter().filter(|w| **w).count();
            assert_eq!(
                *handed.lock().unwrap(),
                vec![3; days_warmed],
                "limit {limit}"
            );
        }
    }

    #[test]
    fn day_names_round_trip() {
        for day in [0, 1, 19_675, 2_932_896] {
            assert_eq!(parse_day(&format_day(day)), Some(day));
        }
        assert_eq!(day_of(PARTITION_MICROS - 1), 0);
        assert_eq!(day_of(PARTITION_MICROS), 1);
    }

    /// `tests/fixtures/fst-index` holds one partition (three events) that
    /// the build before the SSTable switch wrote. It must be refused at
    /// open, naming the partition, with or without verification, and be
    /// left as it was.
    #[test]
    fn a_partition_with_fst_dictionaries_is_refused_and_left_alone() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fst-index");
        let dir = tempfile::tempdir().unwrap();
        let day_dir = dir.path().join("2023-11-14");
        std::fs::create_dir(&day_dir).unwrap();
        let mut before = Vec::new();
        for entry in std::fs::read_dir(fixture.join("2023-11-14")).unwrap() {
            let entry = entry.unwrap();
            let bytes = std::fs::read(entry.path()).unwrap();
            std::fs::write(day_dir.join(entry.file_name()), &bytes).unwrap();
            before.push((entry.file_name(), bytes));
        }
        for verify in [false, true] {
            let error = match Partitions::open(dir.path(), AuditSchema::new(), verify) {
                Ok(_) => panic!("an FST partition was opened (verify: {verify})"),
                Err(error) => error,
            };
            assert!(matches!(error, PartitionError::Format { .. }), "{error}");
            let message = error.to_string();
            assert!(message.contains("2023-11-14"), "{message}");
            assert!(message.contains("SSTable"), "{message}");
        }
        for (name, bytes) in before {
            assert_eq!(
                std::fs::read(day_dir.join(&name)).unwrap(),
                bytes,
                "{name:?} changed"
            );
        }
    }
}
