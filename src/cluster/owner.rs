//! A node's share of the partitions (docs/cluster.md, items 5 and 5a):
//! the lease round every third of the lease time, a pipeline
//! ([`OwnedPartition`]) started for each partition gained and stopped for
//! each lost, and the routes a fan-out reads each partition by: this
//! node's own pipeline, or its owner's `Partitions` service
//! ([`RemotePartition`]) at the address the owner's heartbeat gives.
//!
//! A pipeline starts on a task of its own, so that a long rebuild never
//! delays a renewal; the partition is routed here once it is ready (its
//! replay done), and until then to nobody (a search needing it is
//! refused, naming it). A lease this node lost, or could not renew before
//! its deadline, stops the partition's pipeline at once. Routes to other
//! nodes are as fresh as the last round: a search that reaches a node
//! which no longer owns the partition is refused, UNAVAILABLE naming the
//! partition, and may be retried.
//!
//! Bounds: at most `N` pipelines, one a partition held; one gRPC channel
//! a remote node (`max_nodes` of them at most, the oldest dropped past
//! it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::fanout::Reader;
use super::lease::{LeaseSettings, Leases};
use super::owned::OwnedPartition;
use super::remote::{Held, RemotePartition};
use super::{ClusterError, Layout};
use crate::auth::TokenStore;
use crate::search::Searcher;
use crate::Config;

/// Channels to other nodes kept at once: one a node; past it the oldest
/// is dropped (and made again when next needed).
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
    /// Whether this node takes leases (roles `all` and `index`); one that
    /// does not only routes its reads to the owners.
    pub owns: bool,
}

/// What the round and the readers share.
struct Routes {
    /// Ready partitions of this node, by their searchers.
    local: RwLock<BTreeMap<u32, Searcher>>,
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
            starting: JoinSet::new(),
            opening: BTreeSet::new(),
            channels: BTreeMap::new(),
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
    pub fn held_searchers(&self) -> Held {
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

/// The rounds' state.
struct Round {
    settings: OwnerSettings,
    leases: Leases,
    routes: Arc<Routes>,
    owned: BTreeMap<u32, OwnedPartition>,
    /// Pipelines starting, each with its partition.
    starting: JoinSet<(u32, Result<OwnedPartition, crate::server::ServerError>)>,
    /// Their partitions.
    opening: BTreeSet<u32>,
    /// A channel per remote address, with when it was last used.
    channels: BTreeMap<String, (Channel, Instant)>,
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
        for (p, owned) in std::mem::take(&mut self.owned) {
            self.drop_partition(p, Some(owned)).await;
        }
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
                    self.drop_partition(p, owned).await;
                }
                for p in change.gained {
                    tracing::info!(partition = p, "took the partition's lease");
                    self.start_partition(p);
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
            self.drop_partition(p, owned).await;
        }
        // A partition held whose pipeline failed to start: again.
        for p in held.iter().copied() {
            if !self.owned.contains_key(&p) && !self.opening.contains(&p) {
                self.start_partition(p);
            }
        }
        *self.routes.held.write().expect("routes lock") = held;
        self.route().await;
    }

    fn start_partition(&mut self, p: u32) {
        self.opening.insert(p);
        let settings = &self.settings;
        let (config, layout, tokens) = (
            settings.config.clone(),
            settings.layout.clone(),
            settings.tokens.clone(),
        );
        self.starting
            .spawn(async move { (p, OwnedPartition::start(&config, layout, p, tokens).await) });
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
                    self.drop_partition(p, Some(before)).await;
                }
            }
            Ok(owned) => self.drop_partition(p, Some(owned)).await,
            Err(error) => {
                tracing::error!(partition = p, %error, "the partition's pipeline did not start; again next round")
            }
        }
    }

    /// Stops routing to `p` here, and its pipeline if it runs.
    async fn drop_partition(&mut self, p: u32, owned: Option<OwnedPartition>) {
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
            if let Err(error) = owned.stop().await {
                tracing::error!(partition = p, %error, "stopping the partition's pipeline");
            }
        }
    }

    /// Each partition's reader: this node's ready pipeline, else its
    /// owner's service, else none.
    async fn route(&mut self) {
        let owners = self.leases.owners().await.unwrap_or_default();
        let addresses = self.leases.addresses().await.unwrap_or_default();
        let me = self.leases.node().to_owned();
        let mut readers = Vec::with_capacity(self.settings.layout.partitions as usize);
        let mut local = BTreeMap::new();
        for p in 0..self.settings.layout.partitions {
            if let Some(owned) = self.owned.get(&p) {
                local.insert(p, owned.searcher());
                readers.push(Some(owned.reader()));
                continue;
            }
            let remote = owners
                .get(&p)
                .filter(|node| **node != me)
                .and_then(|node| addresses.get(node))
                .filter(|address| !address.is_empty())
                .and_then(|address| self.channel(address))
                .and_then(|channel| {
                    RemotePartition::new(p, channel, &self.settings.node_secret).ok()
                });
            readers.push(remote.map(|r| Arc::new(r) as Reader));
        }
        *self.routes.local.write().expect("routes lock") = local;
        *self.routes.readers.write().expect("routes lock") = readers;
    }

    /// The channel to `address`, made (lazily: it connects on first use)
    /// when there is none.
    fn channel(&mut self, address: &str) -> Option<Channel> {
        let now = Instant::now();
        if let Some((channel, used)) = self.channels.get_mut(address) {
            *used = now;
            return Some(channel.clone());
        }
        let endpoint = Channel::from_shared(address.to_owned())
            .map_err(|error| tracing::warn!(address, %error, "a node's address is not a URL"))
            .ok()?
            .connect_timeout(Duration::from_secs(2));
        let channel = endpoint.connect_lazy();
        if self.channels.len() >= MAX_NODE_CHANNELS {
            let oldest = self
                .channels
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(a, _)| a.clone());
            if let Some(oldest) = oldest {
                self.channels.remove(&oldest);
            }
        }
        self.channels
            .insert(address.to_owned(), (channel.clone(), now));
        Some(channel)
    }
}
