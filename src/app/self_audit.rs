//! The daemon checks itself: a background audit that goes over the stored
//! events again and again, one [`WINDOW`] at a time, at no more than
//! `integrity.self_audit_events_per_second`, holding each against its
//! leaf. A problem is counted (`auditd_integrity_violations_total{kind}`),
//! turns health degraded (stage `integrity`), and is written down as an
//! `integrity.violation` event on the trail; a pass that finds nothing
//! clears the fault.
//!
//! It is low-priority work in the CPU's eyes too: its windows run on one
//! thread of its own, in `SCHED_IDLE` at nice 19, so that on a saturated
//! machine it yields to ingest and search (about 0.37 CPU s a million
//! events ingested at full speed, when it ran at normal priority: run set
//! T in docs/benchmarks-history.md) and keeps its pace only with CPU to
//! spare. One thread is some twenty times the default pace.
//!
//! Priority was not enough: whatever the thread's policy, a window read
//! beside a search slowed the search (the 10 M search mix had 5 to 9
//! shapes over 5 ms at p99 with the self-audit on, 1 to 4 with it off;
//! BENCHMARKS.md, issue 17). So a window starts only at a quiet moment,
//! when no read has started for [`QUIET`]; under reads that never pause,
//! it waits at most [`MAX_QUIET_WAIT_PAUSES`] pauses, so the audit goes on
//! at a tenth of its pace or more.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::trail::Trail;
use super::{ErrorKind, Origin};
use crate::auth::{Caller, StoredKind};
use crate::integrity::audit::{self, Problem};
use crate::integrity::checkpointer::Integrity;
use crate::integrity::tiles::TILE_WIDTH;
use crate::metrics as m;
use crate::retention::Retention;
use crate::search::{ReadActivity, Searcher};
use crate::status::PipelineStatus;

/// The trail action of a problem the self-audit found.
pub const VIOLATION: &str = "integrity.violation";

/// Problems written to the trail per window at most: a wholesale
/// tampering is counted in full, but does not flood the log.
const MAX_VIOLATION_EVENTS_PER_WINDOW: usize = 100;

/// Seqs checked at once: 16 tiles, whose decoded events take a few MB.
/// A full audit's `AUDIT_WINDOW` (65,536) held so many at once that the
/// overload test's memory bound failed (docs/benchmarks-history.md,
/// "2026-12-05 (2)"). Swapped events farther apart than a window are
/// called `modified`, not `reordered`: the self-audit only has to
/// notice, the full audit names.
pub const WINDOW: u64 = 16 * TILE_WIDTH;

/// A window starts once no read has started for this long ...
pub const QUIET: Duration = Duration::from_millis(250);
/// ... or once it has waited this many pauses between windows for that.
pub const MAX_QUIET_WAIT_PAUSES: u32 = 10;

/// How a wait for a quiet moment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waited {
    Quiet,
    /// Reads went on for the longest wait.
    GaveUp,
    Stopped,
}

/// Waits until no read has started for `quiet`, or `longest` has passed.
async fn quiet_moment(
    reads: &ReadActivity,
    quiet: Duration,
    longest: Duration,
    stop: &CancellationToken,
) -> Waited {
    let deadline = tokio::time::Instant::now() + longest;
    loop {
        let since = reads.since_last();
        let left = match since {
            Some(since) if since < quiet => quiet - since,
            _ => return Waited::Quiet,
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Waited::GaveUp;
        }
        tokio::select! {
            _ = stop.cancelled() => return Waited::Stopped,
            _ = tokio::time::sleep(left.min(deadline - now)) => {}
        }
    }
}

/// What the background audit needs.
pub struct SelfAudit {
    pub integrity: Arc<Integrity>,
    /// What retention dropped is lawfully gone, not a fault.
    pub retention: Arc<Retention>,
    pub searcher: Searcher,
    pub trail: Trail,
    pub status: Arc<PipelineStatus>,
    pub events_per_second: u64,
    pub stop: CancellationToken,
}

impl SelfAudit {
    /// Runs until `stop`: windows in seq order, from 0 to what is
    /// searchable, then again from 0.
    pub async fn run(self) {
        let pool = match low_priority_pool() {
            Ok(pool) => Arc::new(pool),
            Err(error) => {
                tracing::error!(%error, "the self-audit could not start its threads; it is off");
                return;
            }
        };
        let caller = system_caller();
        let origin = Origin {
            transport: "self-audit",
            peer: None,
        };
        let pause = Duration::from_secs_f64(WINDOW as f64 / self.events_per_second as f64);
        let mut start = 0u64;
        let mut pass_clean = true;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            let longest = pause * MAX_QUIET_WAIT_PAUSES;
            match quiet_moment(self.searcher.reads(), QUIET, longest, &self.stop).await {
                Waited::Stopped => return,
                Waited::GaveUp => metrics::counter!(m::SELF_AUDIT_BUSY_WINDOWS).increment(1),
                Waited::Quiet => {}
            }
            let searchable = *self.searcher.searchable().borrow();
            let Some(checkpoint) = self.integrity.checkpoints.latest() else {
                continue;
            };
            let end = (start + WINDOW).min(searchable);
            if start >= end {
                // A pass is over: start again, and clear a fault the last
                // pass found nothing of.
                if pass_clean {
                    self.status.set_fault("integrity", None);
                }
                start = 0;
                pass_clean = true;
                continue;
            }
            let (integrity, searcher) = (self.integrity.clone(), self.searcher.clone());
            let signed = (checkpoint.size, checkpoint.root);
            let expired = self.retention.expired();
            let pool = pool.clone();
            let found = tokio::task::spawn_blocking(move || {
                pool.install(move || {
                    let snapshot = integrity.tree.snapshot();
                    let mut problems = Vec::new();
                    audit::audit(
                        &searcher,
                        &snapshot,
                        signed,
                        &expired,
                        start..end,
                        WINDOW,
                        |progress| {
                            problems
                                .extend(progress.problems.into_iter().filter(|p| !p.is_lawful()));
                            true
                        },
                    )
                    .map(|()| problems)
                })
            })
            .await;
            let problems = match found {
                Ok(Ok(problems)) => problems,
                Ok(Err(error)) => {
                    tracing::warn!(%error, start, "the self-audit could not read a window; will retry");
                    continue;
                }
                Err(error) => {
                    tracing::error!(%error, "the self-audit task failed");
                    continue;
                }
            };
            metrics::counter!(m::SELF_AUDITED_EVENTS).increment(end - start);
            if !problems.is_empty() {
                pass_clean = false;
                self.report(&caller, &origin, &problems).await;
            }
            start = end;
        }
    }

    async fn report(&self, caller: &Caller, origin: &Origin, problems: &[Problem]) {
        for problem in problems {
            metrics::counter!(m::INTEGRITY_VIOLATIONS, "kind" => problem.kind).increment(1);
        }
        let first = &problems[0];
        self.status.set_fault(
            "integrity",
            Some(format!(
                "the self-audit found {} problem(s), first at seq {}: {}: {}",
                problems.len(),
                first.seq,
                first.kind,
                first.detail
            )),
        );
        for problem in problems.iter().take(MAX_VIOLATION_EVENTS_PER_WINDOW) {
            let query = BTreeMap::from([
                ("seq".to_owned(), problem.seq.to_string()),
                ("kind".to_owned(), problem.kind.to_owned()),
                ("detail".to_owned(), problem.detail.clone()),
            ]);
            let outcome = Some((ErrorKind::DataLoss, problem.detail.as_str()));
            if let Err(error) = self
                .trail
                .store(caller, VIOLATION, origin, query, outcome)
                .await
            {
                tracing::error!(%error, seq = problem.seq, "could not write an integrity.violation event");
            }
        }
    }
}

/// The self-audit's thread, at the lowest CPU priority: the window's
/// reads and leaves run on it (`install`), not on the pool searches
/// share, and never on more than one core.
fn low_priority_pool() -> Result<rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(|i| format!("auditd-audit-{i}"))
        .start_handler(|_| crate::priority::lower_this_threads_priority("the self-audit"))
        .build()
}

/// Who the daemon's own events are written as.
pub(super) fn system_caller() -> Caller {
    Caller {
        token_id: "auditd".into(),
        kind: StoredKind::Admin,
        subject: String::new(),
        access_id: String::new(),
        sources: Vec::new(),
        type_prefix: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Notes a read every 10 ms until `until` is cancelled.
    fn reading(reads: Arc<ReadActivity>, until: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while !until.is_cancelled() {
                reads.note();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    }

    #[tokio::test]
    async fn a_window_waits_for_reads_to_pause_but_not_longer_than_its_bound() {
        let stop = CancellationToken::new();
        let reads = Arc::new(ReadActivity::default());
        let second = Duration::from_secs(1);
        // No read yet: at once.
        let waited = quiet_moment(&reads, second, 60 * second, &stop).await;
        assert_eq!(waited, Waited::Quiet);

        // Reads that never pause: it gives up at the bound.
        let until = CancellationToken::new();
        reads.note();
        let reader = reading(reads.clone(), until.clone());
        let started = std::time::Instant::now();
        let longest = Duration::from_millis(300);
        let waited = quiet_moment(&reads, second, longest, &stop).await;
        assert_eq!(waited, Waited::GaveUp);
        let took = started.elapsed();
        assert!(took >= longest && took < 5 * second, "{took:?}");

        // Reads that stop: it goes on once they have been quiet.
        let stopper = {
            let until = until.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                until.cancel();
            })
        };
        let quiet = Duration::from_millis(300);
        let waited = quiet_moment(&reads, quiet, 60 * second, &stop).await;
        assert_eq!(waited, Waited::Quiet);
        assert!(until.is_cancelled(), "it went on while reads were running");
        assert!(reads.since_last().unwrap() >= quiet);
        stopper.await.unwrap();
        reader.await.unwrap();

        // Stopping the daemon ends the wait.
        reads.note();
        stop.cancel();
        let waited = quiet_moment(&reads, second, 60 * second, &stop).await;
        assert_eq!(waited, Waited::Stopped);
    }

    #[test]
    fn every_self_audit_thread_runs_idle_at_nice_19() {
        let pool = super::low_priority_pool().unwrap();
        let found = pool.broadcast(|_| unsafe {
            (
                libc::sched_getscheduler(0),
                libc::getpriority(libc::PRIO_PROCESS, 0),
            )
        });
        assert_eq!(
            found,
            vec![(libc::SCHED_IDLE, 19); pool.current_num_threads()]
        );
    }
}
