//! Real `nats-server` processes with JetStream, on loopback, for the
//! tests of the JetStream log. `scripts/test.sh` installs Debian's
//! `nats-server` when it is missing; a test without it fails, saying so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use auditd::config::LogKind;
use auditd::proto::{AuditEvent, IngestRequest, WaitFor};
use auditd::Config;

use super::{test_config, DEADLINE};

/// A test config whose log is the stream `stream` on `nats`.
pub fn on_jetstream(data_dir: &Path, nats: &NatsServer, stream: &str) -> Config {
    let mut config = test_config(data_dir);
    config.log.kind = LogKind::Jetstream;
    config.log.jetstream.servers = vec![nats.url.clone()];
    config.log.jetstream.stream = stream.into();
    config.log.jetstream.subject = format!("{}.log", stream.to_lowercase());
    config.log.jetstream.timeout_ms = 1_000;
    config
}

/// A test config for a node of a one-partition cluster on the stream
/// `stream` of `nats` (`[cluster] enabled`).
#[allow(dead_code)] // used by tests/cluster.rs only
pub fn on_cluster(data_dir: &Path, nats: &NatsServer, stream: &str) -> Config {
    let mut config = on_jetstream(data_dir, nats, stream);
    config.log.jetstream.subject = format!("{}.events", stream.to_lowercase());
    config.cluster.enabled = true;
    config
}

/// Node `node` of role `role` of a cluster of `partitions` partitions on
/// `nats` (stream `PARTS`, leases of 2 s), in `dir/<node>`.
pub fn on_partitions(
    dir: &Path,
    nats: &NatsServer,
    partitions: u32,
    node: &str,
    role: auditd::config::Role,
) -> Config {
    let mut config = on_cluster(&dir.join(node), nats, "PARTS");
    config.cluster.partitions = partitions;
    config.cluster.node = node.into();
    config.cluster.lease_ms = 2_000;
    config.cluster.role = role;
    config
}

/// The environment that puts a daemon in a child process on `nats`, on
/// the default stream (`AUDITD`, subject `auditd.log`): what
/// `on_jetstream(dir, nats, "AUDITD")` configures in-process.
pub fn jetstream_env(nats: &NatsServer) -> Vec<(&'static str, String)> {
    vec![
        ("AUDITD_LOG__KIND", "jetstream".into()),
        (
            "AUDITD_LOG__JETSTREAM__SERVERS",
            format!("[\"{}\"]", nats.url),
        ),
    ]
}

/// One `nats-server -js`: its store and config live in `dir`, and a
/// restart reuses both, and the port.
pub struct NatsServer {
    child: Option<Child>,
    dir: PathBuf,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
}

impl NatsServer {
    /// Starts a server on a free loopback port; `max_payload` bounds a
    /// message (the servers' own default is 1 MiB).
    pub fn start(dir: &Path, max_payload: u64) -> NatsServer {
        Self::start_with(dir, max_payload, "")
    }

    /// Starts a server that requires TLS, with this certificate and key
    /// (PEM files).
    pub fn start_tls(dir: &Path, cert: &Path, key: &Path) -> NatsServer {
        let tls = format!(
            "tls {{ cert_file: \"{}\", key_file: \"{}\" }}\n",
            cert.display(),
            key.display()
        );
        Self::start_with(dir, 1 << 20, &tls)
    }

    /// Starts `n` servers routed into one cluster, each in `dir/n<i>`.
    /// JetStream places a replicated stream only once they have met:
    /// [`wait_for_jetstream`] waits for that.
    pub fn cluster(dir: &Path, n: usize, max_payload: u64) -> Vec<NatsServer> {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        (0..n)
            .map(|i| {
                let routes: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| format!("\"nats://127.0.0.1:{p}\""))
                    .collect();
                let cluster = format!(
                    "server_name: n{i}\ncluster {{ name: \"auditd-test\", \
                     listen: \"127.0.0.1:{}\", routes: [{}] }}\n",
                    ports[i],
                    routes.join(", ")
                );
                Self::start_with(&dir.join(format!("n{i}")), max_payload, &cluster)
            })
            .collect()
    }

    fn start_with(dir: &Path, max_payload: u64, extra: &str) -> NatsServer {
        std::fs::create_dir_all(dir).unwrap();
        let config = format!(
            "listen: \"127.0.0.1:-1\"\nmax_payload: {max_payload}\n\
             jetstream {{ store_dir: \"{}\" }}\n{extra}",
            dir.join("store").display()
        );
        std::fs::write(dir.join("nats.conf"), config).unwrap();
        let mut server = NatsServer {
            child: None,
            dir: dir.to_owned(),
            url: String::new(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let ports = self.dir.join("ports");
        let _ = std::fs::remove_dir_all(&ports);
        std::fs::create_dir_all(&ports).unwrap();
        let child = Command::new(binary())
            .arg("-c")
            .arg(self.dir.join("nats.conf"))
            .arg("--ports_file_dir")
            .arg(&ports)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start nats-server ({e}): scripts/test.sh installs Debian's")
            });
        let file = ports.join(format!("nats-server_{}.ports", child.id()));
        self.child = Some(child);
        let started = Instant::now();
        let url = loop {
            // The file is written once the server listens.
            if let Ok(text) = std::fs::read_to_string(&file) {
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) {
                    break json["nats"][0].as_str().unwrap().to_owned();
                }
            }
            assert!(
                started.elapsed() < DEADLINE,
                "nats-server did not write its ports file"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        if self.url.is_empty() {
            // A restart listens where the first start did.
            let port = url.rsplit(':').next().unwrap();
            let config = std::fs::read_to_string(self.dir.join("nats.conf")).unwrap();
            let config = config.replace("127.0.0.1:-1", &format!("127.0.0.1:{port}"));
            std::fs::write(self.dir.join("nats.conf"), config).unwrap();
        }
        self.url = url;
    }

    /// Kills the server (SIGKILL): what JetStream fsynced survives.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until JetStream on `servers` can place a stream of `replicas`
/// copies (a cluster elects its meta leader a moment after it forms), by
/// creating and deleting one.
pub async fn wait_for_jetstream(servers: &[NatsServer], replicas: usize) {
    let urls: Vec<async_nats::ServerAddr> =
        servers.iter().map(|s| s.url.parse().unwrap()).collect();
    let started = Instant::now();
    let client = async_nats::connect(urls).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    loop {
        let probe = async_nats::jetstream::stream::Config {
            name: "PROBE".into(),
            subjects: vec!["probe".into()],
            num_replicas: replicas,
            ..Default::default()
        };
        if jetstream.create_stream(probe).await.is_ok() {
            jetstream.delete_stream("PROBE").await.unwrap();
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "JetStream never placed a stream of {replicas} replicas"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Ingests `events` (waiting until searchable), retrying while the answer
/// is UNAVAILABLE, as a client would. Returns the ids and the refusals.
#[allow(dead_code)] // not every test file uses it
pub async fn ingest_retrying(
    client: &mut super::Client,
    events: &[AuditEvent],
    batch_id: &str,
) -> (Vec<String>, usize) {
    let (stored, refusals) =
        ingest_until(client, events, batch_id, &[tonic::Code::Unavailable]).await;
    (stored.ids, refusals)
}

/// Ingests `events` as batch `batch_id`, waiting until searchable, and
/// retries while a cluster is not ready for it: UNAVAILABLE (starting),
/// or DEADLINE_EXCEEDED (stored, but a partition's owner not known or
/// not answering yet; the retry is the same batch). Returns the answer.
#[allow(dead_code)]
pub async fn ingest_searchable(
    client: &mut super::Client,
    events: &[AuditEvent],
    batch_id: &str,
) -> auditd::proto::IngestResponse {
    use tonic::Code::{DeadlineExceeded, Unavailable};
    ingest_until(client, events, batch_id, &[Unavailable, DeadlineExceeded])
        .await
        .0
}

/// Ingests until stored and searchable, retrying on the codes `retry`:
/// the answer and how many refusals came before it.
async fn ingest_until(
    client: &mut super::Client,
    events: &[AuditEvent],
    batch_id: &str,
    retry: &[tonic::Code],
) -> (auditd::proto::IngestResponse, usize) {
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut refusals = 0;
    loop {
        let request = IngestRequest {
            events: events.to_vec(),
            batch_id: batch_id.into(),
            wait_for: WaitFor::Searchable as i32,
        };
        match client.ingest(request).await {
            Ok(stored) => return (stored.into_inner(), refusals),
            Err(s) if retry.contains(&s.code()) => {
                refusals += 1;
                assert!(std::time::Instant::now() < deadline, "still {s:?}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(s) => panic!("ingest: {s:?}"),
        }
    }
}

/// Which of `servers` (named `n<i>`) leads `stream`'s replicas.
#[allow(dead_code)]
pub async fn stream_leader(servers: &[NatsServer], stream: &str) -> usize {
    let client = async_nats::connect(servers[0].url.as_str()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream.get_stream(stream).await.unwrap();
    let info = stream.info().await.unwrap();
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .unwrap();
    leader.trim_start_matches('n').parse().unwrap()
}

/// A loopback port nothing listens on, for ports that must be known
/// before their server starts (cluster routes, `scripts/cluster.sh`).
///
/// Drawn from below the kernel's ephemeral range, never from it: every
/// `bind(127.0.0.1:0)` of the tests running beside this one (their
/// daemons, their `nats-server -1`s) takes a port from that range, and
/// one of them could take a port handed out here before its server binds
/// it. Below the range only this function hands out ports, and never the
/// same one twice in a process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const LOWEST: u16 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let span = ephemeral.saturating_sub(LOWEST).max(1);
    // Each process starts at its own place, so that test binaries run
    // one after another do not reuse a port a slow server still holds.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        1 + rand::random::<u16>() % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = LOWEST + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOWEST}..{ephemeral}");
}

/// `nats-server` on the PATH, or where Debian puts it.
fn binary() -> PathBuf {
    let debian = Path::new("/usr/sbin/nats-server");
    if debian.exists() {
        debian.to_owned()
    } else {
        PathBuf::from("nats-server")
    }
}
