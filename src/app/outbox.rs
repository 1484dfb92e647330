//! The sending side of a long-lived server stream (Tail, Export): a
//! bounded queue to the transport, a reader that takes nothing for too
//! long or a daemon that stops ends it, and the error that ends it goes
//! out after what was queued, carrying the token to resume with.

use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{AppError, StreamSettings};

pub struct Outbox<T, E> {
    tx: mpsc::Sender<Result<T, E>>,
    end: oneshot::Sender<E>,
    idle: Duration,
    stop: CancellationToken,
}

/// How a send went.
pub enum Sent {
    Queued,
    /// The reader hung up: nothing more to do.
    Gone,
}

impl<T: Send + 'static, E: From<AppError> + Send + 'static> Outbox<T, E> {
    /// An outbox holding up to `capacity` items for its reader, and the
    /// stream the transport sends.
    pub fn new(
        capacity: usize,
        settings: &StreamSettings,
    ) -> (Self, impl Stream<Item = Result<T, E>> + Send + 'static) {
        let (tx, rx) = mpsc::channel(capacity);
        let (end, last) = oneshot::channel();
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
            .chain(futures::stream::once(last).filter_map(|end| async move { end.ok().map(Err) }));
        let outbox = Outbox {
            tx,
            end,
            idle: settings.idle_timeout,
            stop: settings.stop.clone(),
        };
        (outbox, stream)
    }

    /// Queues `item`, waiting while the queue is full. `resume` is the
    /// token that resumes right before `item`: the error says it when the
    /// reader stalls or the daemon stops.
    pub async fn send(&self, item: T, resume: &str) -> Result<Sent, AppError> {
        let permit = tokio::select! {
            _ = self.stop.cancelled() => {
                return Err(AppError::ShuttingDownResume { resume_token: resume.to_owned() })
            }
            permit = tokio::time::timeout(self.idle, self.tx.reserve()) => permit,
        };
        match permit {
            Ok(Ok(permit)) => {
                permit.send(Ok(item));
                Ok(Sent::Queued)
            }
            Ok(Err(_closed)) => Ok(Sent::Gone),
            Err(_stalled) => Err(AppError::ReaderStalled {
                waited: self.idle,
                resume_token: resume.to_owned(),
            }),
        }
    }

    /// Waits until the reader hangs up (`None`) or the daemon stops (the
    /// error that says to resume with `resume`).
    pub async fn closed(&self, resume: &str) -> Option<AppError> {
        tokio::select! {
            _ = self.stop.cancelled() => Some(AppError::ShuttingDownResume { resume_token: resume.to_owned() }),
            _ = self.tx.closed() => None,
        }
    }

    /// Ends the stream: after what is queued, `error` if there is one.
    pub fn finish(self, error: Option<AppError>) {
        if let Some(error) = error {
            let _ = self.end.send(E::from(error));
        }
    }
}
