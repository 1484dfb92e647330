//! Whether the pipeline can take work: set up by start-up, marked degraded
//! by a stage that hit a fault it is working its way out of, and torn down
//! loudly by a worker thread that dies.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

#[derive(Debug)]
pub struct PipelineStatus {
    ready: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Stage name → the fault it is retrying. Empty when all is well.
    faults: Mutex<BTreeMap<&'static str, String>>,
    /// Bumped on every change, so the gRPC health service can follow.
    changed: watch::Sender<u64>,
}

impl Default for PipelineStatus {
    fn default() -> Self {
        PipelineStatus {
            ready: AtomicBool::new(false),
            failure: Mutex::new(None),
            faults: Mutex::new(BTreeMap::new()),
            changed: watch::Sender::new(0),
        }
    }
}

/// What health checks and handlers see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Replaying the WAL; not serving yet.
    Starting,
    Serving,
    /// A stage hit a fault (a failed write, sync or commit) and retries on
    /// its own; reads go on, and writes are refused or held back until the
    /// fault clears. The reason names each stage and its last error.
    Degraded(String),
    /// A pipeline thread died; writes cannot be made durable.
    Failed(String),
}

impl PipelineStatus {
    pub fn health(&self) -> Health {
        if let Some(reason) = self.failure.lock().expect("status lock").clone() {
            return Health::Failed(reason);
        }
        if !self.ready.load(Ordering::Acquire) {
            return Health::Starting;
        }
        let faults = self.faults.lock().expect("status lock");
        if faults.is_empty() {
            Health::Serving
        } else {
            let reasons: Vec<String> = faults
                .iter()
                .map(|(stage, reason)| format!("{stage}: {reason}"))
                .collect();
            Health::Degraded(reasons.join("; "))
        }
    }

    /// A receiver that sees a new value whenever the health may have changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
        self.bump();
    }

    pub fn fail(&self, reason: String) {
        tracing::error!(%reason, "pipeline failed");
        let mut failure = self.failure.lock().expect("status lock");
        failure.get_or_insert(reason);
        drop(failure);
        self.bump();
    }

    /// Marks `stage` degraded with `reason`, or clears it with `None`.
    /// Logs only transitions, so a fault that persists does not flood.
    pub fn set_fault(&self, stage: &'static str, reason: Option<String>) {
        let mut faults = self.faults.lock().expect("status lock");
        let degraded = reason.is_some();
        let changed = match reason {
            Some(reason) => {
                let new = !faults.contains_key(stage);
                if new {
                    tracing::error!(stage, %reason, "degraded: retrying until the fault clears");
                }
                faults.insert(stage, reason);
                new
            }
            None => {
                let cleared = faults.remove(stage).is_some();
                if cleared {
                    tracing::info!(stage, "fault cleared; back to normal");
                }
                cleared
            }
        };
        drop(faults);
        metrics::gauge!(crate::metrics::DEGRADED, "stage" => stage)
            .set(f64::from(u8::from(degraded)));
        if changed {
            self.bump();
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// Marks the pipeline failed when dropped, unless defused: a worker that
/// returns an error or panics takes the pipeline down where everyone sees.
pub struct WorkerGuard {
    status: Option<Arc<PipelineStatus>>,
    name: &'static str,
}

impl WorkerGuard {
    pub fn new(status: Arc<PipelineStatus>, name: &'static str) -> Self {
        WorkerGuard {
            status: Some(status),
            name,
        }
    }

    pub fn defuse(mut self) {
        self.status = None;
    }
}

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        if let Some(status) = self.status.take() {
            status.fail(format!("the {} thread stopped unexpectedly", self.name));
        }
    }
}
