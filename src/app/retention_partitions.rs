//! Retention on a node of several partitions (docs/cluster.md,
//! "Retention over partitions"). Each partition keeps its own retention
//! state, in its owner's directory, from the records of its own log:
//!
//! - a lock, a hold or a release is one record, made once by the node
//!   the admin asked (one id), appended to every partition's log by its
//!   owner (`Partitions.Retention`, `apply`) and applied there; applying
//!   a record again is a no-op, so a retry after a partition failed
//!   finishes the change without doubling it;
//! - each owner sweeps its own partition (its days, its holds, the
//!   cluster's rules) every `retention.sweep_interval_ms`, and a `Sweep`
//!   asks every owner at once;
//! - what `GetRetention` and `ListHolds` answer is every partition's
//!   state, merged: the highest floor, each hold once (in force where any
//!   partition still holds it), a dropped day once with the events and
//!   bytes of all its partitions, the oldest day of any.
//!
//! A partition without an owner, or whose owner fails, fails the call
//! UNAVAILABLE naming it: never an answer from some partitions only.

use std::collections::BTreeMap;

use futures::future::join_all;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::retention::RetentionService;
use super::AppError;
use crate::cluster::fanout::{unowned, FanOutError};
use crate::partition::Day;
use crate::proto::partition_retention_request::Op;
use crate::proto::partition_retention_response::Answer;
use crate::proto::{DroppedDay, KeptDay, SweepResponse};
use crate::retention::{Applied, Change, Dropped, Hold, RetentionRecord};

/// The version of [`State`] and [`AppliedWire`] as nodes send them.
const WIRE_VERSION: u32 = 1;

/// One partition's retention state, or several merged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub v: u32,
    pub floor_days: Option<u32>,
    /// Every hold, released ones too.
    pub holds: Vec<Hold>,
    pub drops: Vec<Dropped>,
    pub oldest_day: Option<Day>,
}

/// What applying a lock, a hold or a release did at one partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AppliedWire {
    v: u32,
    applied: Outcome,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Outcome {
    Locked(u32),
    Held(Hold),
    Released(Hold),
    Unchanged(String),
}

impl State {
    /// Every partition's state as one: the highest floor, each hold once
    /// (in force if in force anywhere), each dropped day once (its events
    /// and bytes summed, the latest drop's id and time), the oldest day.
    fn merge(parts: impl IntoIterator<Item = State>) -> State {
        let mut merged = State {
            v: WIRE_VERSION,
            ..State::default()
        };
        let mut holds: BTreeMap<String, Hold> = BTreeMap::new();
        let mut drops: BTreeMap<String, Dropped> = BTreeMap::new();
        for part in parts {
            merged.floor_days = merged.floor_days.max(part.floor_days);
            merged.oldest_day = match (merged.oldest_day, part.oldest_day) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            for hold in part.holds {
                let kept = holds.entry(hold.id.clone()).or_insert_with(|| hold.clone());
                if hold.released.is_none() {
                    kept.released = None;
                }
            }
            for drop in part.drops {
                match drops.get_mut(&drop.day) {
                    Some(day) => {
                        day.events += drop.events;
                        day.bytes += drop.bytes;
                        if drop.at > day.at {
                            (day.id, day.at) = (drop.id, drop.at);
                        }
                    }
                    None => {
                        drops.insert(drop.day.clone(), drop);
                    }
                }
            }
        }
        merged.holds = holds.into_values().collect();
        merged.holds.sort_by_key(|h| h.created);
        merged.drops = drops.into_values().collect();
        merged
    }
}

impl RetentionService {
    /// This partition's part of a retention call a node of several
    /// partitions fans out (`Partitions.Retention`, or in process).
    pub async fn at_partition(&self, op: Op) -> Result<Answer, AppError> {
        match op {
            Op::Apply(bytes) => {
                let bad = |reason: &str| AppError::Invalid {
                    field: "apply",
                    reason: reason.into(),
                };
                let record = RetentionRecord::decode(bytes.as_slice())
                    .map_err(|_| bad("not a retention record"))?;
                match &record.change {
                    Some(Change::Lock(_) | Change::Hold(_) | Change::Release(_)) => {}
                    _ => return Err(bad("only a lock, a hold or a release is applied so")),
                }
                let outcome = match self.apply_here(record).await? {
                    Applied::Locked(days) => Outcome::Locked(days),
                    Applied::Held(hold) => Outcome::Held(hold),
                    Applied::Released(hold) => Outcome::Released(hold),
                    Applied::Unchanged(reason) => Outcome::Unchanged(reason),
                    other => return Err(super::retention::unexpected(other)),
                };
                let wire = AppliedWire {
                    v: WIRE_VERSION,
                    applied: outcome,
                };
                Ok(Answer::AppliedJson(to_json(&wire)))
            }
            Op::Sweep(_) => Ok(Answer::Swept(self.sweep_now().await?)),
            Op::State(_) => Ok(Answer::StateJson(to_json(&self.local_state()))),
        }
    }

    /// Every partition's state, merged.
    pub(super) async fn merged_state(&self) -> Result<State, AppError> {
        let answers = self.everywhere(|| Op::State(Default::default())).await?;
        let states = answers.into_iter().map(|(p, answer)| match answer {
            Answer::StateJson(json) => from_json::<State>(p, &json),
            _ => Err(odd(p)),
        });
        Ok(State::merge(states.collect::<Result<Vec<_>, _>>()?))
    }

    /// `record` applied on every partition; what the first partition
    /// did (every partition applies the same record to the same holds
    /// and floor, up to a hold a failed earlier try left on some only).
    pub(super) async fn apply_everywhere(
        &self,
        record: RetentionRecord,
    ) -> Result<Applied, AppError> {
        let bytes = record.encode_to_vec();
        let answers = self.everywhere(|| Op::Apply(bytes.clone())).await?;
        let mut outcomes = Vec::new();
        for (p, answer) in answers {
            let Answer::AppliedJson(json) = answer else {
                return Err(odd(p));
            };
            outcomes.push(from_json::<AppliedWire>(p, &json)?.applied);
        }
        // A release counts where the hold was; elsewhere it is "no hold".
        let first = outcomes
            .iter()
            .find(|o| !matches!(o, Outcome::Unchanged(_)))
            .or(outcomes.first())
            .cloned();
        Ok(match first {
            Some(Outcome::Locked(days)) => Applied::Locked(days),
            Some(Outcome::Held(hold)) => Applied::Held(hold),
            Some(Outcome::Released(hold)) => Applied::Released(hold),
            Some(Outcome::Unchanged(reason)) => Applied::Unchanged(reason),
            None => Applied::Unchanged("no partition".into()),
        })
    }

    /// A sweep of every partition at its owner, the answers merged: each
    /// dropped day once (events and bytes summed), each kept day once.
    pub(super) async fn sweep_everywhere(&self) -> Result<SweepResponse, AppError> {
        let answers = self.everywhere(|| Op::Sweep(Default::default())).await?;
        let mut dropped: BTreeMap<String, DroppedDay> = BTreeMap::new();
        let mut kept: BTreeMap<String, KeptDay> = BTreeMap::new();
        for (p, answer) in answers {
            let Answer::Swept(swept) = answer else {
                return Err(odd(p));
            };
            for day in swept.dropped {
                match dropped.get_mut(&day.day) {
                    Some(same) => {
                        same.events += day.events;
                        same.bytes += day.bytes;
                    }
                    None => {
                        dropped.insert(day.day.clone(), day);
                    }
                }
            }
            for day in swept.kept {
                kept.entry(day.day.clone()).or_insert(day);
            }
        }
        Ok(SweepResponse {
            dropped: dropped.into_values().collect(),
            kept: kept.into_values().collect(),
        })
    }

    /// `op` asked of every partition's owner at once. Any partition
    /// without owner or failing fails the call, naming it; an `apply`
    /// says how many partitions did apply it, so that a retry (the same
    /// admin call again) finishes it.
    async fn everywhere(&self, op: impl Fn() -> Op) -> Result<Vec<(u32, Answer)>, AppError> {
        let routes = self.routes.get().cloned().ok_or(AppError::Starting)?;
        let readers = routes();
        let applying = matches!(op(), Op::Apply(_));
        let asked = readers.iter().enumerate().map(|(p, reader)| {
            let (p, reader, op) = (p as u32, reader.clone(), op());
            async move {
                let reader = reader.ok_or_else(|| unowned(p))?;
                Ok::<_, FanOutError>((p, reader.retention(op).await?))
            }
        });
        let results = join_all(asked).await;
        let done = results.iter().filter(|r| r.is_ok()).count();
        let mut answers = Vec::new();
        for result in results {
            match result {
                Ok(answer) => answers.push(answer),
                Err(FanOutError::Unavailable { partition, reason })
                | Err(FanOutError::Failed { partition, reason })
                    if applying =>
                {
                    let reason = format!(
                        "{reason} (applied on {done} of {} partitions: ask again to finish)",
                        readers.len()
                    );
                    return Err(FanOutError::Unavailable { partition, reason }.into());
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(answers)
    }

    /// This partition's own state.
    pub(super) fn local_state(&self) -> State {
        let state = self.retention().state();
        State {
            v: WIRE_VERSION,
            floor_days: state.floor_days,
            holds: state.holds,
            drops: state.drops,
            oldest_day: super::retention::note_oldest(&self.searcher),
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data serializes")
}

/// A partition's JSON answer, of this version.
fn from_json<T: for<'de> Deserialize<'de> + Versioned>(p: u32, json: &str) -> Result<T, AppError> {
    let value: T = serde_json::from_str(json).map_err(|e| {
        AppError::FanOut(FanOutError::Failed {
            partition: p,
            reason: format!("its retention answer is not understood: {e}"),
        })
    })?;
    match value.version() {
        WIRE_VERSION => Ok(value),
        v => Err(AppError::FanOut(FanOutError::Failed {
            partition: p,
            reason: format!("its retention answer is of version {v}, not {WIRE_VERSION}"),
        })),
    }
}

trait Versioned {
    fn version(&self) -> u32;
}

impl Versioned for State {
    fn version(&self) -> u32 {
        self.v
    }
}

impl Versioned for AppliedWire {
    fn version(&self) -> u32 {
        self.v
    }
}

fn odd(p: u32) -> AppError {
    AppError::FanOut(FanOutError::Failed {
        partition: p,
        reason: "its retention answer is of another kind than asked".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(id: &str, created: i64, released: Option<i64>) -> Hold {
        Hold {
            id: id.into(),
            subject: "s".into(),
            query: String::new(),
            reason: "r".into(),
            by: "t".into(),
            created,
            released,
        }
    }

    fn dropped(id: &str, day: &str, at: i64, events: u64) -> Dropped {
        Dropped {
            id: id.into(),
            day: day.into(),
            at,
            rule: "retention.default_days".into(),
            days: 30,
            events,
            bytes: events * 100,
            seqs: Vec::new(),
        }
    }

    #[test]
    fn states_merge_to_the_highest_floor_each_hold_and_day_once_and_the_oldest_day() {
        let a = State {
            v: 1,
            floor_days: Some(30),
            holds: vec![hold("h1", 1, Some(5)), hold("h2", 2, None)],
            drops: vec![dropped("d1", "2026-01-01", 10, 3)],
            oldest_day: Some(20_000),
        };
        let b = State {
            v: 1,
            floor_days: Some(60),
            holds: vec![hold("h1", 1, None)],
            drops: vec![
                dropped("d2", "2026-01-01", 12, 4),
                dropped("d3", "2026-01-02", 11, 1),
            ],
            oldest_day: Some(19_990),
        };
        let merged = State::merge([a, b, State::default()]);
        assert_eq!(merged.floor_days, Some(60));
        assert_eq!(merged.oldest_day, Some(19_990));
        // h1 is still in force on b: in force.
        assert_eq!(merged.holds, vec![hold("h1", 1, None), hold("h2", 2, None)]);
        assert_eq!(merged.drops.len(), 2);
        let first = &merged.drops[0];
        assert_eq!(
            (first.id.as_str(), first.events, first.bytes),
            ("d2", 7, 700)
        );
        let json = to_json(&merged);
        assert_eq!(from_json::<State>(0, &json).unwrap(), merged);
        let other = json.replacen("\"v\":1", "\"v\":2", 1);
        assert!(from_json::<State>(0, &other).is_err());
    }
}
