//! Retention and legal hold: which days' partitions are dropped, and what
//! stops them (README, "Retention and data-subject rights").
//!
//! Every change (a drop, the compliance floor, a hold and its release) is
//! a typed log record (`record::RetentionRecord`), applied by the indexer
//! in log order and kept in `<data_dir>/retention.json`, written
//! atomically before the change takes effect. The log is trimmed only
//! past what the indexer applied, so a crash at any point is finished by
//! replay: each change applied twice changes nothing.

pub mod policy;
pub mod record;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

pub use policy::{Policy, Verdict};
pub use record::{Change, HoldRequest, RetentionRecord};

use crate::config::{ErasureConfig, RetentionConfig};
use crate::datadir::DataDir;
use crate::formats::rfc3339 as micros_to_rfc3339;
use crate::metrics as m;
use crate::partition::{parse_day, Day};

/// A legal hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    pub id: String,
    pub subject: String,
    pub query: String,
    pub reason: String,
    /// The token id that placed it.
    pub by: String,
    /// µs since the epoch.
    pub created: i64,
    /// When it was released (µs); `None` while in force.
    #[serde(default)]
    pub released: Option<i64>,
}

/// A partition retention dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dropped {
    /// The drop record's id.
    pub id: String,
    /// `2026-10-01`.
    pub day: String,
    /// When it was judged and dropped (µs).
    pub at: i64,
    /// The longest rule its events were under, and its days.
    pub rule: String,
    pub days: u32,
    pub events: u64,
    pub bytes: u64,
    /// The seqs of its events, as `[first, end)` runs: the full audit
    /// reports them `expired`, not missing.
    pub seqs: Vec<(u64, u64)>,
}

/// What `retention.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The compliance floor: no event goes before this many days.
    pub floor_days: Option<u32>,
    pub holds: Vec<Hold>,
    pub drops: Vec<Dropped>,
}

/// Seqs `[start, end)` retention dropped, and what to say about them.
#[derive(Debug, Clone, PartialEq)]
pub struct Expired {
    pub start: u64,
    pub end: u64,
    pub detail: Arc<str>,
}

/// What applying a record did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    Locked(u32),
    Held(Hold),
    Released(Hold),
    Dropped(Dropped),
    Erased(crate::erasure::Erasure),
    /// Nothing changed, and why (a drop judged early, a floor already as
    /// high, a hold already released).
    Unchanged(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a retention state file: {reason}")]
    Bad { path: PathBuf, reason: String },
    #[error(
        "the compliance floor of {floor} days (`auditctl retention lock`, irreversible) forbids it: \
         {setting}; set it to {floor} days or more"
    )]
    BelowFloor { floor: u32, setting: String },
}

/// What an erasure takes, as configured (`[erasure]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ErasureSettings {
    /// The personal parts taken (bit `k` for part `k`).
    pub fields: u16,
    pub keep_type_prefixes: Vec<String>,
}

/// The rules, the state, and what ingest and the audit read of it.
pub struct Retention {
    policy: Policy,
    erasure: ErasureSettings,
    data_dir: PathBuf,
    path: PathBuf,
    state: Mutex<State>,
    /// Why an event of a dropped day is refused.
    refusals: RwLock<BTreeMap<Day, String>>,
    /// Whether any day was dropped: ingest looks no further when none was.
    any_dropped: AtomicBool,
    expired: RwLock<Arc<Vec<Expired>>>,
}

impl Retention {
    /// Reads the state (none yet: empty) and refuses a configuration that
    /// would remove events before the compliance floor.
    pub fn open(
        data_dir: &Path,
        config: &RetentionConfig,
        erasure: &ErasureConfig,
    ) -> Result<Retention, RetentionError> {
        let path = DataDir::new(data_dir).retention();
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| RetentionError::Bad {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(source) => return Err(RetentionError::Io { path, source }),
        };
        let policy = Policy::new(config);
        if let Some(floor) = state.floor_days {
            if let Some(setting) = policy.below(floor) {
                return Err(RetentionError::BelowFloor { floor, setting });
            }
        }
        let erasure = ErasureSettings {
            fields: crate::erasure::fields_mask(&erasure.fields).map_err(|reason| {
                RetentionError::Bad {
                    path: path.clone(),
                    reason: format!("erasure.fields: {reason}"),
                }
            })?,
            keep_type_prefixes: erasure.keep_type_prefixes.clone(),
        };
        let retention = Retention {
            policy,
            erasure,
            data_dir: data_dir.to_owned(),
            path,
            state: Mutex::new(State::default()),
            refusals: RwLock::default(),
            any_dropped: AtomicBool::new(false),
            expired: RwLock::default(),
        };
        retention.publish(state);
        Ok(retention)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn erasure(&self) -> &ErasureSettings {
        &self.erasure
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A copy of the state.
    pub fn state(&self) -> State {
        self.lock().clone()
    }

    pub fn floor(&self) -> Option<u32> {
        self.lock().floor_days
    }

    /// The holds in force.
    pub fn holds(&self) -> Vec<Hold> {
        let state = self.lock();
        state
            .holds
            .iter()
            .filter(|h| h.released.is_none())
            .cloned()
            .collect()
    }

    /// Whether retention ever dropped a day (one atomic load: what ingest
    /// asks for every batch).
    pub fn any_dropped(&self) -> bool {
        self.any_dropped.load(Ordering::Acquire)
    }

    /// Why an event of `day` is refused, when retention dropped that day.
    pub fn refusal(&self, day: Day) -> Option<String> {
        let refusals = self.refusals.read().expect("retention refusals lock");
        refusals.get(&day).cloned()
    }

    /// Every seq range retention dropped, in seq order.
    pub fn expired(&self) -> Arc<Vec<Expired>> {
        self.expired.read().expect("retention expired lock").clone()
    }

    /// Whether the drop `id` was already done (replay applies it again).
    pub fn dropped(&self, id: &str) -> bool {
        self.lock().drops.iter().any(|d| d.id == id)
    }

    /// Applies a change other than a drop (the indexer does drops, with
    /// [`Retention::record_drop`]), durably, before it answers.
    pub fn apply(&self, record: &RetentionRecord) -> Result<Applied, RetentionError> {
        let mut state = self.state();
        let applied = match &record.change {
            Some(Change::Lock(days)) => match state.floor_days {
                Some(floor) if floor >= *days => {
                    return Ok(Applied::Unchanged(format!(
                        "the compliance floor is already {floor} days"
                    )))
                }
                _ => {
                    state.floor_days = Some(*days);
                    Applied::Locked(*days)
                }
            },
            Some(Change::Hold(request)) => {
                if let Some(hold) = state.holds.iter().find(|h| h.id == record.id) {
                    return Ok(Applied::Held(hold.clone()));
                }
                let hold = Hold {
                    id: record.id.clone(),
                    subject: request.subject.clone(),
                    query: request.query.clone(),
                    reason: request.reason.clone(),
                    by: request.by.clone(),
                    created: record.at_micros,
                    released: None,
                };
                state.holds.push(hold.clone());
                Applied::Held(hold)
            }
            Some(Change::Release(id)) => {
                let Some(hold) = state.holds.iter_mut().find(|h| &h.id == id) else {
                    return Ok(Applied::Unchanged(format!("no hold {id}")));
                };
                if hold.released.is_some() {
                    return Ok(Applied::Released(hold.clone()));
                }
                hold.released = Some(record.at_micros);
                Applied::Released(hold.clone())
            }
            Some(Change::Drop(_)) | Some(Change::Erase(_)) | None => {
                return Ok(Applied::Unchanged("not a change of the state".into()))
            }
        };
        self.save(state)?;
        Ok(applied)
    }

    /// Notes a drop, durably: called before its partition is removed, so
    /// that replay after a crash finishes it.
    pub fn record_drop(&self, dropped: Dropped) -> Result<(), RetentionError> {
        let mut state = self.state();
        if state.drops.iter().any(|d| d.id == dropped.id) {
            return Ok(());
        }
        metrics::counter!(m::RETENTION_DROPPED_EVENTS).increment(dropped.events);
        metrics::counter!(m::RETENTION_DROPPED_BYTES).increment(dropped.bytes);
        state.drops.push(dropped);
        self.save(state)
    }

    /// Takes the subject out of the released holds `ids` (an erasure of
    /// that subject): the hold stays on record, naming no one.
    pub fn scrub_holds(&self, ids: &[String]) -> Result<(), RetentionError> {
        let mut state = self.state();
        let mut changed = false;
        for hold in state.holds.iter_mut().filter(|h| ids.contains(&h.id)) {
            changed |= !hold.subject.is_empty();
            hold.subject.clear();
        }
        match changed {
            true => self.save(state),
            false => Ok(()),
        }
    }

    fn save(&self, state: State) -> Result<(), RetentionError> {
        let bytes = serde_json::to_vec_pretty(&state).expect("the state serializes");
        crate::datadir::write_atomically(&self.path, &bytes, false).map_err(|source| {
            RetentionError::Io {
                path: self.path.clone(),
                source,
            }
        })?;
        self.publish(state);
        Ok(())
    }

    /// Makes `state` the one ingest, the audit and the API read.
    fn publish(&self, state: State) {
        let mut refusals = BTreeMap::new();
        let mut expired = Vec::new();
        for drop in &state.drops {
            let Some(day) = parse_day(&drop.day) else {
                continue;
            };
            refusals.insert(
                day,
                format!(
                    "older than the retention of {} days ({}): its day, {}, was dropped on {}",
                    drop.days,
                    drop.rule,
                    drop.day,
                    micros_to_rfc3339(drop.at)
                ),
            );
            let detail: Arc<str> = format!(
                "dropped by retention on {} with its day {} ({}, {} days; drop {})",
                micros_to_rfc3339(drop.at),
                drop.day,
                drop.rule,
                drop.days,
                drop.id
            )
            .into();
            expired.extend(drop.seqs.iter().map(|(start, end)| Expired {
                start: *start,
                end: *end,
                detail: detail.clone(),
            }));
        }
        expired.sort_by_key(|e| e.start);
        let holds = state.holds.iter().filter(|h| h.released.is_none()).count();
        metrics::gauge!(m::RETENTION_HOLDS).set(holds as f64);
        self.any_dropped
            .store(!refusals.is_empty(), Ordering::Release);
        *self.refusals.write().expect("retention refusals lock") = refusals;
        *self.expired.write().expect("retention expired lock") = Arc::new(expired);
        *self.lock() = state;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("retention state lock")
    }
}

/// The `[first, end)` runs of `seqs` (sorted in place).
pub fn runs(seqs: &mut [u64]) -> Vec<(u64, u64)> {
    seqs.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &seq in seqs.iter() {
        match out.last_mut() {
            Some(last) if last.1 == seq => last.1 += 1,
            Some(last) if last.1 > seq => {}
            _ => out.push((seq, seq + 1)),
        }
    }
    out
}

/// The expired run holding `seq`, if any (`expired` in seq order).
pub fn expired_at(expired: &[Expired], seq: u64) -> Option<&Expired> {
    let i = expired.partition_point(|e| e.start <= seq);
    expired[..i].last().filter(|e| seq < e.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_become_runs_and_a_seq_finds_its_run() {
        let mut seqs = vec![7, 3, 4, 5, 9, 8, 20];
        assert_eq!(runs(&mut seqs), vec![(3, 6), (7, 10), (20, 21)]);
        let detail: Arc<str> = "x".into();
        let expired: Vec<Expired> = [(3, 6), (7, 10)]
            .iter()
            .map(|(start, end)| Expired {
                start: *start,
                end: *end,
                detail: detail.clone(),
            })
            .collect();
        assert_eq!(expired_at(&expired, 5).map(|e| e.start), Some(3));
        assert_eq!(expired_at(&expired, 6), None);
        assert_eq!(expired_at(&expired, 7).map(|e| e.end), Some(10));
        assert_eq!(expired_at(&expired, 2), None);
        assert_eq!(expired_at(&expired, 10), None);
    }

    #[test]
    fn the_state_survives_a_reopen_and_a_floor_refuses_a_shorter_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = RetentionConfig::default();
        let retention = Retention::open(dir.path(), &config, &Default::default()).unwrap();
        let lock = |days, id: &str| RetentionRecord {
            id: id.into(),
            at_micros: 1,
            change: Some(Change::Lock(days)),
        };
        assert_eq!(
            retention.apply(&lock(365, "a")).unwrap(),
            Applied::Locked(365)
        );
        assert!(matches!(
            retention.apply(&lock(100, "b")).unwrap(),
            Applied::Unchanged(_)
        ));
        drop(retention);
        let reopened = Retention::open(dir.path(), &config, &Default::default()).unwrap();
        assert_eq!(reopened.floor(), Some(365));
        let shorter = RetentionConfig {
            default_days: Some(30),
            ..Default::default()
        };
        let refused = Retention::open(dir.path(), &shorter, &Default::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            refused.contains("retention.default_days keeps 30 days"),
            "{refused}"
        );
        assert!(refused.contains("365"), "{refused}");
    }
}
