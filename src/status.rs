//! Whether the pipeline can take work: set up by start-up, torn down
//! loudly by a worker thread that dies.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub struct PipelineStatus {
    ready: AtomicBool,
    failure: Mutex<Option<String>>,
}

/// What health checks and handlers see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Replaying the WAL; not serving yet.
    Starting,
    Serving,
    /// A pipeline thread died; writes cannot be made durable.
    Failed(String),
}

impl PipelineStatus {
    pub fn health(&self) -> Health {
        if let Some(reason) = self.failure.lock().expect("status lock").clone() {
            return Health::Failed(reason);
        }
        if self.ready.load(Ordering::Acquire) {
            Health::Serving
        } else {
            Health::Starting
        }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn fail(&self, reason: String) {
        tracing::error!(%reason, "pipeline failed");
        let mut failure = self.failure.lock().expect("status lock");
        failure.get_or_insert(reason);
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
