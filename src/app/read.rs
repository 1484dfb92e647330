//! Reads: Search, GetEvent and Aggregate, each inside the caller's scope, off the
//! async runtime, and audited before the answer goes out.

use std::collections::BTreeMap;

use std::sync::{Arc, OnceLock};

use super::trail::{self, Trail};
use super::{AppError, Origin, StreamSettings};
use crate::auth::{Caller, ReadScope};
use crate::cluster::fanout::{self, Bounds, Reader};
use crate::proto::{
    AggregateRequest, AggregateResponse, AuditEvent, EventFilter, SearchRequest, SearchResponse,
};
use crate::search::{request_of, SearchError, Searcher};
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
    /// On a node of a cluster of several partitions: how each partition is
    /// read now (`cluster::owner`), set once the node's owner runs;
    /// Search and Aggregate fan out through it.
    pub(super) routes: Arc<OnceLock<Routes>>,
    pub(super) partitioned: bool,
}

/// Each partition's reader now (index = partition; `None`: no owner).
pub type Routes = Arc<dyn Fn() -> Vec<Option<Reader>> + Send + Sync>;

impl ReadService {
    pub fn new(
        searcher: Searcher,
        status: Arc<PipelineStatus>,
        trail: Trail,
        streams: StreamSettings,
        max_subscribers: usize,
    ) -> Self {
        let partitioned = trail.partitioned();
        ReadService {
            searcher,
            status,
            trail,
            streams,
            subscribers: Arc::new(tokio::sync::Semaphore::new(max_subscribers)),
            max_subscribers,
            routes: Arc::new(OnceLock::new()),
            partitioned,
        }
    }

    /// Reads fan out through `routes` from now on (a node of a cluster of
    /// several partitions; set once).
    pub fn route_through(&self, routes: Routes) {
        let _ = self.routes.set(routes);
    }

    /// The partitions' readers, on a node of several partitions (`None`
    /// elsewhere); `Starting` until its owner runs.
    fn fanning_out(&self) -> Result<Option<Vec<Option<Reader>>>, AppError> {
        if !self.partitioned {
            return Ok(None);
        }
        Ok(Some(self.partition_routes()?()))
    }

    /// How each partition is read now, on a node of several partitions;
    /// `Starting` until its owner runs.
    pub(super) fn partition_routes(&self) -> Result<Routes, AppError> {
        self.check_health()?;
        self.routes.get().cloned().ok_or(AppError::Starting)
    }

    /// Checks `filter` here, before a fan-out asks any owner: a bad field
    /// is named as one node names it.
    pub(super) fn check_filter(
        &self,
        filter: Option<&EventFilter>,
        scope: &ReadScope,
    ) -> Result<(), AppError> {
        let request = request_of(filter.cloned().unwrap_or_default());
        Ok(self.searcher.check(&request, scope)?)
    }

    /// Refuses what does not fan out yet on a node of several partitions.
    pub(super) fn not_partitioned(&self, what: &'static str) -> Result<(), AppError> {
        match self.partitioned {
            true => Err(AppError::NotInCluster(
                what,
                "with cluster.partitions > 1 it does not reach the partitions' owners yet \
                 (docs/cluster.md)",
            )),
            false => Ok(()),
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
            let readers = self.fanning_out()?;
            // A merged search's page token is the fan-out's to check.
            let mut own = request.clone();
            if readers.is_some() {
                own.page_token.clear();
            }
            self.searcher.check(&own, &scope)?;
            Ok((scope, readers))
        });
        let (scope, readers) = match checked {
            Ok(checked) => checked,
            Err(error) => {
                return self
                    .trail
                    .audited(caller, trail::SEARCH, origin, query, Err(error))
                    .await
            }
        };
        if let Some(readers) = readers {
            let bounds = Bounds {
                limit: self.searcher.limit_of(&request),
                count_up_to: self.searcher.count_up_to(&request),
            };
            let search =
                async move { Ok(fanout::search(&readers, &request, &scope, bounds).await?) };
            return self
                .trail
                .alongside(caller, trail::SEARCH, origin, query, search)
                .await;
        }
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
            match self.fanning_out()? {
                Some(readers) => {
                    self.check_filter(request.filter.as_ref(), &scope)?;
                    Ok(fanout::aggregate(&readers, &request, &scope).await?)
                }
                None => self.blocking(move |s| s.aggregate(&request, &scope)).await,
            }
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
            let readers = self.fanning_out()?;
            if id.is_empty() {
                return Err(AppError::Invalid {
                    field: "id",
                    reason: "required".into(),
                });
            }
            let found = match readers {
                Some(readers) => fanout::get(&readers, &id, &scope).await?,
                None => {
                    let lookup = id.clone();
                    self.blocking(move |s| s.get(&lookup, &scope)).await?
                }
            };
            found.ok_or(AppError::EventNotFound(id))
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
    pub(super) fn check_health(&self) -> Result<(), AppError> {
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
        searcher.reads().note();
        let result = tokio::task::spawn_blocking(move || work(searcher))
            .await
            .map_err(|e| AppError::Internal(format!("search task failed: {e}")))?;
        Ok(result?)
    }
}
