//! A node's share of the partitions (docs/cluster.md, items 5 and 5a):
//! the lease round every third of the lease time, a pipeline
//! ([`OwnedPartition`]) started for each partition gained and stopped for
//! each lost, and the routes a fan-out reads each partition by: this
//! node's own pipeline, or its owner's `Partitions` service
//! ([`RemotePartition`]) at the address the owner's heartbeat gives.
//!
//! A pipeline starts on a task of its own, so that a long rebuild never
//! delays a renewal; the partition is routed here once it is ready (its
//! replay done). It stops on a task of its own too, so that a slow last
//! commit never delays one either: a renewal late past the lease would
//! lose every partition of the node. A partition started again here
//! waits for its pipeline's stop first. Each node's heartbeat says which
//! partitions it is ready for, and a partition is read at its owner when
//! the owner is ready, else at another node still ready for it, else at
//! its owner anyway (which refuses, UNAVAILABLE naming the partition).
//!
//! **Hand-over.** A partition released above the share (a node joined)
//! keeps its pipeline here, answering and following the stream, until
//! its new owner's heartbeat has said it is ready on two rounds in a row
//! (so every node's routes, made each round, point there first); gained
//! back meanwhile, it is owned again without a rebuild. So a node joining
//! never makes a partition unreadable. A lease this node lost (taken
//! over, or not renewed before its deadline) stops the partition's
//! pipeline at once; a node that stops releases everything and hands
//! nothing over: its partitions are unreadable until their new owners
//! are ready. Routes are as fresh as the last round that could read the
//! lease bucket (a round that cannot keeps the routes to other nodes as
//! they were): a search that reaches a node which no longer answers for
//! the partition is refused, UNAVAILABLE naming it, and may be retried.
//!
//! Bounds: at most `N` pipelines, one a partition held, handed over or
//! stopping (a partition's next pipeline starts once the last has stopped);
//! one gRPC channel a remote node ([`MAX_NODE_CHANNELS`] at most, the
//! least recently used dropped past it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::channels::NodeChannels;
use super::fanout::{LocalPartition, Reader};
use super::lease::{LeaseSettings, Leases, Member};
use super::owned::OwnedPartition;
use super::remote::{Held, RemotePartition};
use super::{ClusterError, Layout};
use crate::app::trail::Trail;
use crate::auth::TokenStore;
use crate::Config;

/// Channels to other nodes kept at once: one a node; past it the least
/// recently used is dropped, and made again when next needed
/// ([`NodeChannels`]).
pub const MAX_NODE_CHANNELS: usize = 256;

/// What a node needs to own partitions.
pub struct OwnerSettings {
    /// The node's configuration: its data directory (partitions go under
    /// `partitions/<p>/`) and index settings.
    pub config: Config,
    pub layout: Layout,
    pub leases: LeaseSettings,
    /// What the node shows other nodes' `Partitions` services.
    pub node_secret: String,
    pub tokens: Arc<TokenStore>,
    /// The node's trail: where an owned partition's sweeps put their
    /// drops (`None`: owned partitions are not swept).
    pub trail: Option<Trail>,
    /// Whether this node takes leases (roles `all` and `index`); one that
    /// does not only routes its reads to the owners.
    pub owns: bool,
}

/// What the round and the readers share.
struct Routes {
    /// Ready partitions of this node.
    local: RwLock<BTreeMap<u32, LocalPartition>>,
    /// How each partition is read: here, at another node, or not at all.
    readers: RwLock<Vec<Option<Reader>>>,
    /// Partitions this node holds a lease on (ready or not).
    held: RwLock<BTreeSet<u32>>,
}

/// A node's partitions, owned and routed; stopped by [`Owner::stop`].
pub struct Owner {
    routes: Arc<Routes>,
    stop: CancellationToken,
    /// Set by [`Owner::abandon`]: stop without releasing the leases.
    abandon: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Owner {
    /// Opens the lease bucket and starts the rounds; the first round runs
    /// at once.
    pub async fn start(settings: OwnerSettings) -> Result<Owner, ClusterError> {
        let (_, context) = crate::wal::jetstream::connect(&settings.layout.jetstream)
            .await
            .map_err(|reason| ClusterError::Remote {
                stream: settings.leases.bucket.clone(),
                reason,
            })?;
        let tls = super::channels::client_tls(&settings.config)?;
        let leases = Leases::open(&context, settings.leases.clone()).await?;
        let partitions = settings.layout.partitions as usize;
        let routes = Arc::new(Routes {
            local: RwLock::new(BTreeMap::new()),
            readers: RwLock::new(vec![None; partitions]),
            held: RwLock::new(BTreeSet::new()),
        });
        let (stop, abandon) = (CancellationToken::new(), CancellationToken::new());
        let round = Round {
            settings,
            leases,
            routes: routes.clone(),
            owned: BTreeMap::new(),
            handing: BTreeMap::new(),
            starting: JoinSet::new(),
            opening: BTreeSet::new(),
            stops: TaskTracker::new(),
            stopping: BTreeMap::new(),
            channels: NodeChannels::new(MAX_NODE_CHANNELS, tls),
        };
        let task = tokio::spawn(round.run(stop.clone(), abandon.clone()));
        Ok(Owner {
            routes,
            stop,
            abandon,
            task,
        })
    }

    /// How a fan-out reads each partition now (index = partition).
    pub fn readers(&self) -> Vec<Option<Reader>> {
        self.routes.readers.read().expect("routes lock").clone()
    }

    /// [`Owner::readers`], as the read service asks for them.
    pub fn routes(&self) -> crate::app::Routes {
        let routes = self.routes.clone();
        Arc::new(move || routes.readers.read().expect("routes lock").clone())
    }

    /// The partitions this node holds a lease on.
    pub fn held(&self) -> BTreeSet<u32> {
        self.routes.held.read().expect("routes lock").clone()
    }

    /// The partitions whose pipeline is ready here.
    pub fn ready(&self) -> BTreeSet<u32> {
        let local = self.routes.local.read().expect("routes lock");
        local.keys().copied().collect()
    }

    /// What this node's `Partitions` service answers for.
    pub fn held_here(&self) -> Held {
        let routes = self.routes.clone();
        Arc::new(move |p| routes.local.read().expect("routes lock").get(&p).cloned())
    }

    /// Stops every pipeline after its last commit and releases the
    /// leases, so that the other nodes take the partitions on their next
    /// round.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Stops every pipeline but keeps the leases, as a node that dies
    /// does: the others take its partitions once the leases expire.
    pub async fn abandon(self) {
        self.abandon.cancel();
        let _ = self.task.await;
    }
}

/// Rounds a new owner must be seen ready before a hand-over ends.
const HAND_OVER_ROUNDS: u32 = 3;

/// A released partition's pipeline, kept until its new owner is ready.
struct HandOver {
    owned: OwnedPartition,
    /// Rounds in a row the new owner was seen ready.
    seen_ready: u32,
}

/// The rounds' state.
struct Round {
    settings: OwnerSettings,
    leases: Leases,
    routes: Arc<Routes>,
    owned: BTreeMap<u32, OwnedPartition>,
    /// Released partitions still answered here.
    handing: BTreeMap<u32, HandOver>,
    /// Pipelines starting, each with its partition.
    starting: JoinSet<(u32, Result<OwnedPartition, crate::server::ServerError>)>,
    /// Their partitions.
    opening: BTreeSet<u32>,
    /// Every pipeline's stop, waited for before the round ends.
    stops: TaskTracker,
    /// The last stop of each partition, for its next start to wait for.
    stopping: BTreeMap<u32, JoinHandle<()>>,
    /// A channel per remote address.
    channels: NodeChannels,
}

impl Round {
    async fn run(mut self, stop: CancellationToken, abandon: CancellationToken) {
        let every = self.settings.leases.lease / 3;
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = abandon.cancelled() => break,
                _ = ticks.tick() => self.round().await,
                Some(started) = self.starting.join_next() => {
                    match started {
                        Ok((p, started)) => self.started(p, started).await,
                        Err(error) => tracing::error!(%error, "a partition's start-up task failed"),
                    }
                    self.route().await;
                }
            }
        }
        self.starting.shutdown().await;
        let handing = std::mem::take(&mut self.handing);
        let handing = handing.into_iter().map(|(p, h)| (p, h.owned));
        for (p, owned) in std::mem::take(&mut self.owned).into_iter().chain(handing) {
            self.drop_partition(p, Some(owned));
        }
        self.stops.close();
        self.stops.wait().await;
        if !abandon.is_cancelled() && self.settings.owns {
            if let Err(error) = self.leases.release_all().await {
                tracing::warn!(%error, "could not release the leases; they expire on their own");
            }
        }
    }

    /// One lease round, its changes applied, the routes made again.
    async fn round(&mut self) {
        if !self.settings.owns {
            self.route().await;
            return;
        }
        match self.leases.tick().await {
            Ok(change) => {
                for p in change.lost {
                    tracing::info!(partition = p, "lost the partition's lease");
                    let owned = self.owned.remove(&p);
                    self.drop_partition(p, owned);
                }
                for p in change.released {
                    tracing::info!(partition = p, "released the partition; handing it over");
                    match self.owned.remove(&p) {
                        Some(owned) => {
                            let seen_ready = 0;
                            self.handing.insert(p, HandOver { owned, seen_ready });
                        }
                        None => self.drop_partition(p, None),
                    }
                }
                for p in change.gained {
                    tracing::info!(partition = p, "took the partition's lease");
                    match self.handing.remove(&p) {
                        Some(handing) => {
                            self.owned.insert(p, handing.owned);
                        }
                        None => self.start_partition(p),
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "lease round failed; again next round"),
        }
        // A lease past its deadline unrenewed is not ours any more, even
        // when the round could not tell (NATS unreachable).
        let held = self.leases.held(Instant::now());
        let gone: Vec<u32> = self
            .owned
            .keys()
            .copied()
            .filter(|p| !held.contains(p))
            .collect();
        for p in gone {
            let owned = self.owned.remove(&p);
            self.drop_partition(p, owned);
        }
        // A partition held whose pipeline failed to start: again.
        for p in held.iter().copied() {
            if !self.owned.contains_key(&p) && !self.opening.contains(&p) {
                self.start_partition(p);
            }
        }
        *self.routes.held.write().expect("routes lock") = held;
        match self.cluster().await {
            Some((owners, members)) => {
                // Routed to the new owners first, then stopped: no read
                // finds a handed-over partition without a reader.
                let handed = self.hand_over(&owners, &members);
                self.route_by(&owners, &members).await;
                for (p, owned) in handed {
                    self.stop_pipeline(p, owned);
                }
            }
            None => self.route_here(),
        }
    }

    fn start_partition(&mut self, p: u32) {
        self.opening.insert(p);
        let settings = &self.settings;
        let (config, layout) = (settings.config.clone(), settings.layout.clone());
        let (tokens, trail) = (settings.tokens.clone(), settings.trail.clone());
        let stopped = self.stopping.remove(&p);
        self.starting.spawn(async move {
            // The directory is the old pipeline's until it has stopped.
            if let Some(stopped) = stopped {
                let _ = stopped.await;
            }
            let started = OwnedPartition::start(&config, layout, p, tokens, trail).await;
            (p, started)
        });
    }

    /// A pipeline done starting: kept if the lease is still ours.
    async fn started(
        &mut self,
        p: u32,
        started: Result<OwnedPartition, crate::server::ServerError>,
    ) {
        self.opening.remove(&p);
        match started {
            Ok(owned) if self.leases.held(Instant::now()).contains(&p) => {
                if let Some(before) = self.owned.insert(p, owned) {
                    self.drop_partition(p, Some(before));
                }
            }
            Ok(owned) => self.drop_partition(p, Some(owned)),
            Err(error) => {
                tracing::error!(partition = p, %error, "the partition's pipeline did not start; again next round")
            }
        }
    }

    /// Stops routing to `p` here, and its pipeline if it runs.
    fn drop_partition(&mut self, p: u32, owned: Option<OwnedPartition>) {
        self.routes.local.write().expect("routes lock").remove(&p);
        if let Some(reader) = self
            .routes
            .readers
            .write()
            .expect("routes lock")
            .get_mut(p as usize)
        {
            *reader = None;
        }
        if let Some(owned) = owned {
            self.stop_pipeline(p, owned);
        }
    }

    /// Stops partition `p`'s pipeline after its last commit, on a task of
    /// its own, after any earlier stop of `p`.
    fn stop_pipeline(&mut self, p: u32, owned: OwnedPartition) {
        self.stopping.retain(|_, stop| !stop.is_finished());
        let before = self.stopping.remove(&p);
        let stop = self.stops.spawn(async move {
            if let Some(before) = before {
                let _ = before.await;
            }
            if let Err(error) = owned.stop().await {
                tracing::error!(partition = p, %error, "stopping the partition's pipeline");
            }
        });
        self.stopping.insert(p, stop);
    }

    /// Each partition's reader: this node's ready pipeline (owned or
    /// handed over), else the owner's service when it is ready, else
    /// another node's that is ready for it, else the owner's anyway, else
    /// none. An owning node then heartbeats when what it answers for
    /// changed.
    async fn route(&mut self) {
        match self.cluster().await {
            Some((owners, members)) => self.route_by(&owners, &members).await,
            None => self.route_here(),
        }
    }

    /// Every partition's owner and every live node, as the bucket says now;
    /// `None` when it cannot be read.
    async fn cluster(&self) -> Option<(BTreeMap<u32, String>, BTreeMap<String, Member>)> {
        let read = async {
            Ok::<_, ClusterError>((self.leases.owners().await?, self.leases.members().await?))
        };
        match read.await {
            Ok(cluster) => Some(cluster),
            Err(error) => {
                tracing::warn!(%error, "could not read the lease bucket; routes to other nodes kept as they were");
                None
            }
        }
    }

    /// The routes when the bucket cannot be read: this node's own
    /// pipelines as they are now, every other partition where it was
    /// routed last (a bucket that does not answer for a moment is no
    /// reason to refuse reads its owners can still answer).
    fn route_here(&mut self) {
        let mut local = BTreeMap::new();
        let mut readers = self.routes.readers.read().expect("routes lock").clone();
        let here = self
            .owned
            .iter()
            .chain(self.handing.iter().map(|(p, h)| (p, &h.owned)));
        for (p, owned) in here {
            local.insert(*p, owned.local());
            readers[*p as usize] = Some(owned.reader());
        }
        *self.routes.local.write().expect("routes lock") = local;
        *self.routes.readers.write().expect("routes lock") = readers;
    }

    /// [`Round::route`] by what the bucket said.
    async fn route_by(
        &mut self,
        owners: &BTreeMap<u32, String>,
        members: &BTreeMap<String, Member>,
    ) {
        let me = self.leases.node().to_owned();
        let mut readers = Vec::with_capacity(self.settings.layout.partitions as usize);
        let mut local = BTreeMap::new();
        for p in 0..self.settings.layout.partitions {
            let here = self
                .owned
                .get(&p)
                .or(self.handing.get(&p).map(|h| &h.owned));
            if let Some(owned) = here {
                local.insert(p, owned.local());
                readers.push(Some(owned.reader()));
                continue;
            }
            let ready = |node: &String| {
                *node != me && members.get(node).is_some_and(|m| m.ready.contains(&p))
            };
            let owner = owners.get(&p).filter(|node| **node != me);
            let node = owner
                .filter(|node| ready(node))
                .or_else(|| members.keys().find(|node| ready(node)))
                .or(owner);
            let remote = node
                .and_then(|node| members.get(node))
                .map(|member| member.address.as_str())
                .filter(|address| !address.is_empty())
                .and_then(|address| self.channels.get(address))
                .and_then(|channel| {
                    RemotePartition::new(p, channel, &self.settings.node_secret).ok()
                });
            readers.push(remote.map(|r| Arc::new(r) as Reader));
        }
        let ready: BTreeSet<u32> = local.keys().copied().collect();
        *self.routes.local.write().expect("routes lock") = local;
        *self.routes.readers.write().expect("routes lock") = readers;
        let said = members.get(&me).map(|m| &m.ready);
        if self.settings.owns && said != Some(&ready) {
            self.leases.set_ready(ready);
            if let Err(error) = self.leases.heartbeat().await {
                tracing::warn!(%error, "could not say which partitions are ready; again next round");
            }
        }
    }

    /// Ends each hand-over whose new owner was seen ready
    /// [`HAND_OVER_ROUNDS`] rounds in a row: its pipeline, to stop once
    /// the partition is routed to the new owner.
    fn hand_over(
        &mut self,
        owners: &BTreeMap<u32, String>,
        members: &BTreeMap<String, Member>,
    ) -> Vec<(u32, OwnedPartition)> {
        let me = self.leases.node();
        let mut done = Vec::new();
        for (p, handing) in self.handing.iter_mut() {
            let taken = owners
                .get(p)
                .filter(|node| *node != me)
                .and_then(|node| members.get(node))
                .is_some_and(|member| member.ready.contains(p));
            handing.seen_ready = if taken { handing.seen_ready + 1 } else { 0 };
            if handing.seen_ready >= HAND_OVER_ROUNDS {
                done.push(*p);
            }
        }
        let mut handed = Vec::new();
        for p in done {
            tracing::info!(partition = p, "handed the partition over");
            handed.extend(self.handing.remove(&p).map(|h| (p, h.owned)));
        }
        handed
    }
}
