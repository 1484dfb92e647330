//! Reads: Search, GetEvent and Aggregate, each inside the caller's scope, off the
//! async runtime, and audited before the answer goes out.

use std::collections::BTreeMap;

use std::sync::Arc;

use super::trail::{self, Trail};
use super::{AppError, Origin, StreamSettings};
use crate::auth::Caller;
use crate::proto::{
    AggregateRequest, AggregateResponse, AuditEvent, SearchRequest, SearchResponse,
};
use crate::search::{SearchError, Searcher};
use crate::status::{Health, PipelineStatus};

#[derive(Clone)]
pub struct ReadService {
    searcher: Searcher,
    status: Arc<PipelineStatus>,
    pub(super) trail: Trail,
    pub(super) streams: StreamSettings,
    /// One permit per open Tail stream, `max_subscribers` in all
    /// (`limits.max_tail_subscribers`).
    pub(super) subscribers: Arc<tokio::sync::Semaphore>,
    pub(super) max_subscribers: usize,
}

impl ReadService {
    pub fn new(
        searcher: Searcher,
        status: Arc<PipelineStatus>,
        trail: Trail,
        streams: StreamSettings,
        max_subscribers: usize,
    ) -> Self {
        ReadService {
            searcher,
            status,
            trail,
            streams,
            subscribers: Arc::new(tokio::sync::Semaphore::new(max_subscribers)),
            max_subscribers,
        }
    }

    /// One page of the events `request` matches inside the caller's
    /// scope. A request that is refused (scope, a bad field, starting) is
    /// audited with its refusal before the answer. A valid one has its
    /// trail event stored while the search runs, and is answered once both
    /// are done: the read waits for the longer of the two, not their sum,
    /// and still no page goes out unaudited. Should the search fail after
    /// all, a second trail event records what the caller got.
    pub async fn search(
        &self,
        caller: &Caller,
        origin: &Origin,
        request: SearchRequest,
    ) -> Result<SearchResponse, AppError> {
        let query = trail::search_query(&request);
        let checked = self.check_health().and_then(|()| {
            let scope = caller.read_scope("search")?;
            self.searcher.check(&request, &scope)?;
            Ok(scope)
        });
        let scope = match checked {
            Ok(scope) => scope,
            Err(error) => {
                return self
                    .trail
                    .audited(caller, trail::SEARCH, origin, query, Err(error))
                    .await
            }
        };
        let search = self.blocking(move |s| s.search(&request, &scope));
        self.trail
            .alongside(caller, trail::SEARCH, origin, query, search)
            .await
    }

    /// Exact counts over the matches of the request's filter inside the
    /// caller's scope.
    pub async fn aggregate(
        &self,
        caller: &Caller,
        origin: &Origin,
        request: AggregateRequest,
    ) -> Result<AggregateResponse, AppError> {
        let query = trail::aggregate_query(&request);
        let result = async {
            let scope = caller.read_scope("aggregate")?;
            self.blocking(move |s| s.aggregate(&request, &scope)).await
        }
        .await;
        self.trail
            .audited(caller, trail::AGGREGATE, origin, query, result)
            .await
    }

    /// The event with `id`; outside the caller's scope it is exactly as
    /// absent as a nonexistent one.
    pub async fn get_event(
        &self,
        caller: &Caller,
        origin: &Origin,
        id: String,
    ) -> Result<AuditEvent, AppError> {
        let query = BTreeMap::from([("id".to_owned(), id.clone())]);
        let result = async {
            let scope = caller.read_scope("read events")?;
            if id.is_empty() {
                return Err(AppError::Invalid {
                    field: "id",
                    reason: "required".into(),
                });
            }
            let lookup = id.clone();
            self.blocking(move |s| s.get(&lookup, &scope))
                .await?
                .ok_or(AppError::EventNotFound(id))
        }
        .await;
        self.trail
            .audited(caller, trail::GET_EVENT, origin, query, result)
            .await
    }

    pub fn searcher(&self) -> &Searcher {
        &self.searcher
    }

    /// Reads wait for replay; they go on while writes are degraded.
    fn check_health(&self) -> Result<(), AppError> {
        match self.status.health() {
            Health::Starting => Err(AppError::Starting),
            Health::Serving | Health::Degraded(_) | Health::Failed(_) => Ok(()),
        }
    }

    /// Runs blocking index work on the blocking pool, never on the async
    /// runtime.
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(Searcher) -> Result<T, SearchError> + Send + 'static,
    ) -> Result<T, AppError> {
        self.check_health()?;
        let searcher = self.searcher.clone();
        let result = tokio::task::spawn_blocking(move || work(searcher))
            .await
            .map_err(|e| AppError::Internal(format!("search task failed: {e}")))?;
        Ok(result?)
    }
}
