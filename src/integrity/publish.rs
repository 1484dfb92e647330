//! Publishing checkpoints outside the daemon by HTTP: each new checkpoint
//! note is POSTed (`text/plain`) to `integrity.publish_url`. An outside
//! copy is what catches an attacker who owns the whole disk.
//!
//! Best effort and bounded: one POST at a time (a checkpoint signed while
//! one is in flight is skipped, as the next carries a newer tree and a
//! checker only needs the latest), each cut off after
//! [`PUBLISH_TIMEOUT`]; a failure is logged and counted
//! (`auditd_integrity_publish_errors_total`), never retried and never in
//! the way of the log. `integrity.publish_file` and `auditctl verify
//! --since` run elsewhere are the durable ways.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics as m;

/// The longest one POST may take.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

pub struct UrlPublisher {
    url: String,
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    in_flight: Arc<AtomicBool>,
}

impl UrlPublisher {
    /// POSTs to `url` from tasks on `runtime`.
    pub fn new(url: String, runtime: tokio::runtime::Handle) -> UrlPublisher {
        UrlPublisher {
            url,
            client: reqwest::Client::new(),
            runtime,
            in_flight: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Sends `note`, unless a POST is still in flight.
    pub fn publish(&self, note: String) {
        if self.in_flight.swap(true, Ordering::AcqRel) {
            metrics::counter!(m::PUBLISH_SKIPPED).increment(1);
            return;
        }
        let (client, url, in_flight) = (
            self.client.clone(),
            self.url.clone(),
            self.in_flight.clone(),
        );
        self.runtime.spawn(async move {
            let sent = client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .timeout(PUBLISH_TIMEOUT)
                .body(note)
                .send()
                .await
                .and_then(|r| r.error_for_status());
            if let Err(error) = sent {
                metrics::counter!(m::PUBLISH_ERRORS).increment(1);
                tracing::warn!(%error, url, "could not publish a checkpoint");
            }
            in_flight.store(false, Ordering::Release);
        });
    }
}
