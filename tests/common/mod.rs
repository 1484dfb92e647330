//! The test harness: the real server, in-process, on 127.0.0.1:0.
#![allow(dead_code)]

pub mod aggregate_oracle;
pub mod nats;
pub mod oracle;
pub mod pki;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use auditd::client::gen::GenOptions;
use auditd::client::BearerToken;
use auditd::json::JsonEvent;
use auditd::proto::tokens_client::TokensClient;
use auditd::proto::{
    AuditEvent, CreateTokenRequest, IngestRequest, IngestResponse, SearchRequest, TokenKind,
    WaitFor,
};
use auditd::server::ServerError;
use auditd::{Config, Listeners};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Longest any test waits for a condition before failing.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct TestServer {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

/// A config for tests: the given data directory, ephemeral ports, fast
/// commits, small writers.
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config {
        data_dir: data_dir.to_owned(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    config.index.commit_interval_ms = 100;
    config.index.writer_threads = 1;
    config.index.writer_heap_bytes = 20_000_000;
    config
}

impl TestServer {
    /// Starts a server and waits until it reports SERVING.
    pub async fn start(config: Config) -> TestServer {
        let server = Self::spawn(config).await;
        server.wait_serving().await;
        server
    }

    /// Starts a server on the log its config names, without waiting for it.
    pub async fn spawn(config: Config) -> TestServer {
        let log = auditd::LogChoice::configured(&config);
        Self::spawn_on(config, log).await
    }

    /// Starts a server on the log `log` and waits until it reports SERVING.
    pub async fn start_on(config: Config, log: auditd::LogChoice) -> TestServer {
        let server = Self::spawn_on(config, log).await;
        server.wait_serving().await;
        server
    }

    pub async fn spawn_on(config: Config, log: auditd::LogChoice) -> TestServer {
        let listeners = Listeners::bind(&config).await.expect("bind 127.0.0.1:0");
        let (grpc, http) = listeners.addrs().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let data_dir = config.data_dir.clone();
        let task = tokio::spawn(auditd::run_on(
            config,
            listeners,
            async {
                let _ = stopped.await;
            },
            log,
        ));
        TestServer {
            grpc,
            http,
            data_dir,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The admin token the server wrote on first start.
    pub fn admin_token(&self) -> String {
        admin_token(&self.data_dir)
    }

    /// A client holding the admin token.
    pub async fn client(&self) -> Client {
        self.client_with(&self.admin_token()).await
    }

    pub async fn client_with(&self, token: &str) -> Client {
        connect(&self.url(), token).await
    }

    /// Follows the gRPC health watch stream until the server says SERVING.
    pub async fn wait_serving(&self) {
        wait_health(&self.url(), "audit.v1.AuditLog", ServingStatus::Serving).await;
    }

    /// Graceful stop: returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("server did not stop in time")
            .expect("server task panicked")
    }

    /// What `run` returned without being asked to stop (start-up errors).
    pub async fn outcome(mut self) -> Result<(), ServerError> {
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("server did not return")
            .expect("server task panicked")
    }
}

pub use auditd::client::Client;

pub fn admin_token(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join(auditd::auth::ADMIN_TOKEN_FILE)).expect("admin.token")
}

pub async fn connect(url: &str, token: &str) -> Client {
    let channel = Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .expect("connect");
    auditd::client::audit_log(channel, BearerToken::new(token).unwrap())
}

/// Copies a data directory, as a backup or a fixture would be (its
/// `LOCK` file left behind).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// An `Integrity` client holding `token`.
pub async fn integrity_client(url: &str, token: &str) -> auditd::client::IntegrityClient {
    let channel = Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .expect("connect");
    auditd::client::integrity(channel, BearerToken::new(token).unwrap())
}

/// The latest signed checkpoint, once one holds at least `size` leaves
/// (UNAVAILABLE meanwhile: none signed yet, or still replaying).
pub async fn checkpoint_of_at_least(
    client: &mut auditd::client::IntegrityClient,
    size: u64,
) -> auditd::proto::Checkpoint {
    let started = std::time::Instant::now();
    loop {
        let request = auditd::proto::GetCheckpointRequest {
            size: 0,
            ..Default::default()
        };
        match client.get_checkpoint(request).await {
            Ok(c) if c.get_ref().size >= size => return c.into_inner(),
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::Unavailable => {}
            Err(status) => panic!("get_checkpoint: {status}"),
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no checkpoint of {size} leaves"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every problem a full audit reports, once it is done.
pub async fn full_audit(
    client: &mut auditd::client::IntegrityClient,
) -> Vec<auditd::proto::LeafProblem> {
    let mut stream = client
        .audit_log(auditd::proto::AuditLogRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut problems = Vec::new();
    let mut done = false;
    while let Some(progress) = stream.message().await.unwrap() {
        assert!(!done, "nothing after done");
        assert!(progress.checked <= progress.total);
        problems.extend(progress.problems);
        done = progress.done;
    }
    assert!(done, "the last progress says done");
    problems
}

/// `count` generated events, with times moved so that every `per_day`
/// events fall on a new day (several partitions).
pub fn generated(count: u64, seed: u64, per_day: u64) -> Vec<AuditEvent> {
    let opts = GenOptions {
        count,
        seed,
        accesses: 50,
        subjects: 20,
        addresses: 200,
        start: 1_700_000_000.0,
    };
    auditd::client::gen::events(&opts)
        .enumerate()
        .map(|(i, e)| {
            let mut event = JsonEvent::parse(&e.to_json_line())
                .unwrap()
                .into_proto()
                .unwrap();
            let shift = (i as u64 / per_day) as i64 * 86_400;
            event.time.as_mut().unwrap().seconds += shift;
            event
        })
        .collect()
}

pub async fn ingest(client: &mut Client, events: Vec<AuditEvent>, wait: WaitFor) -> IngestResponse {
    client
        .ingest(IngestRequest {
            events,
            batch_id: String::new(),
            wait_for: wait as i32,
        })
        .await
        .expect("ingest")
        .into_inner()
}

/// How many events a plain search sees (the trail of reads excluded).
/// How many events the daemon holds: an exact count, however many.
pub async fn count_stored(client: &mut Client) -> u64 {
    client
        .search(SearchRequest {
            exact_total: true,
            ..Default::default()
        })
        .await
        .expect("search")
        .into_inner()
        .total_hits
}

/// Every page of `request`, concatenated; checks total_hits stays put.
pub async fn search_all(client: &mut Client, mut request: SearchRequest) -> (Vec<AuditEvent>, u64) {
    let mut events = Vec::new();
    let mut total = None;
    loop {
        let page = client
            .search(request.clone())
            .await
            .expect("search")
            .into_inner();
        let count = (page.total_hits, page.total_hits_is_lower_bound);
        assert_eq!(
            *total.get_or_insert(count),
            count,
            "total_hits changed between pages"
        );
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    (events, total.map_or(0, |(n, _)| n))
}

/// A daemon in a child process, so it can be killed for real.
pub struct Daemon {
    pub child: KillOnDrop,
    pub url: String,
}

/// A child process killed (and reaped) when dropped, unless it was
/// waited for: a test that fails part way leaves no daemon behind to
/// slow the test binaries after it.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Once waited for, std knows its status and signals nothing.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Daemon {
    pub fn start(data_dir: &Path) -> Daemon {
        Self::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_auditd"))
            .args(["--data-dir", data_dir.to_str().unwrap()])
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            // By default it never commits on its own: everything
            // acknowledged is only in the WAL when a kill comes. `env`
            // comes last and may say otherwise.
            .env("AUDITD_INDEX__COMMIT_INTERVAL_MS", "3600000")
            .env("AUDITD_INDEX__WRITER_THREADS", "1")
            .env("AUDITD_INDEX__WRITER_HEAP_BYTES", "20000000")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start auditd");
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("auditd exited before listening")
                .unwrap();
            if let Some(rest) = line.split("grpc_addr=").nth(1) {
                break format!("http://{}", rest.split_whitespace().next().unwrap());
            }
        };
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Daemon {
            child: KillOnDrop(child),
            url,
        }
    }

    /// Follows gRPC health until the daemon serves: `start` returns once it
    /// listens, which is before its replay ends (a crash test may want to
    /// kill it then); a producer that starts earlier meets UNAVAILABLE.
    pub async fn wait_serving(&self) {
        wait_health(&self.url, "audit.v1.AuditLog", ServingStatus::Serving).await;
    }

    /// A client with the admin token (written before the daemon listens).
    pub async fn client(&self, data_dir: &Path) -> Client {
        connect(&self.url, &admin_token(data_dir)).await
    }
}

/// A Subjects client of `server` with `token`.
pub async fn subjects_client(server: &TestServer, token: &str) -> auditd::client::SubjectsClient {
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    auditd::client::subjects(channel, auditd::client::BearerToken::new(token).unwrap())
}

/// `auditctl` against `server`, with its data directory (so the admin
/// token file) and none of the caller's AUDITCTL_* settings.
pub fn auditctl(server: &TestServer, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_auditctl"));
    for var in ["AUDITCTL_ADDR", "AUDITCTL_TOKEN", "AUDITCTL_DATA_DIR"] {
        command.env_remove(var);
    }
    command
        .args(["--addr", &server.url()])
        .args(["--data-dir", server.data_dir.to_str().unwrap()])
        .args(args);
    command
}

/// Runs a command of the project's binaries on a blocking thread (the
/// server under test keeps the runtime) and returns its stdout; panics,
/// with both outputs, unless it succeeds.
pub async fn run_ok(mut command: Command) -> String {
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Ingests, retrying while the daemon still replays (UNAVAILABLE).
pub async fn ingest_when_ready(client: &mut Client, events: Vec<AuditEvent>) -> Vec<String> {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let request = IngestRequest {
            events: events.clone(),
            ..Default::default()
        };
        match client.ingest(request).await {
            Ok(r) => return r.into_inner().ids,
            Err(s)
                if s.code() == tonic::Code::Unavailable && std::time::Instant::now() < deadline =>
            {
                tokio::task::yield_now().await
            }
            Err(s) => panic!("ingest: {s:?}"),
        }
    }
}

/// What a tlog-tiles client holds of a tree of `size` leaves: every tile
/// it needs, fetched with `get` (its path, `tile/<L>/<N>[.p/<W>]`, to a
/// status and bytes), each of which must answer 200.
pub async fn fetch_tiles<F, Fut>(
    size: u64,
    mut get: F,
) -> std::collections::HashMap<auditd::integrity::tiles::TileId, Vec<u8>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = (u16, Vec<u8>)>,
{
    let mut fetched = std::collections::HashMap::new();
    for id in auditd::integrity::tiles::tiles_for(size) {
        let (status, bytes) = get(id.path()).await;
        assert_eq!(status, 200, "{}", id.path());
        fetched.insert(id, bytes);
    }
    fetched
}

/// The tree of `size` leaves as `fetched` tiles give it.
pub fn tile_nodes(
    size: u64,
    fetched: &std::collections::HashMap<auditd::integrity::tiles::TileId, Vec<u8>>,
) -> impl auditd::integrity::merkle::Nodes + '_ {
    use auditd::integrity::tiles::{TileError, TileNodes};
    TileNodes::new(size, move |id| {
        fetched.get(&id).cloned().ok_or(TileError::Absent {
            size,
            level: id.level,
            index: id.index,
            width: id.width,
        })
    })
}

/// A plain HTTP/1.1 GET: status code and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_get_with(addr, path, None).await
}

pub async fn http_get_with(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// Follows the gRPC health watch of `service` until it reports `want`.
pub async fn wait_health(url: &str, service: &str, want: ServingStatus) {
    let wait = async {
        let channel = Channel::from_shared(url.to_owned())
            .unwrap()
            .connect()
            .await
            .expect("connect health");
        let mut health = HealthClient::new(channel);
        let mut updates = health
            .watch(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health watch")
            .into_inner();
        while let Some(update) = updates.message().await.expect("health stream") {
            if update.status == want as i32 {
                return;
            }
        }
        panic!("health stream ended before {want:?}");
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("{service} did not become {want:?} in time"));
}

/// Every stored event (the trail of reads excluded), checked to hold each
/// id once and every id of `acknowledged`.
pub async fn stored_once_with_all_of(
    client: &mut Client,
    acknowledged: &std::collections::HashSet<String>,
) -> Vec<AuditEvent> {
    let (found, _) = search_all(
        client,
        SearchRequest {
            limit: 10_000,
            ..Default::default()
        },
    )
    .await;
    let mut seen = std::collections::HashSet::new();
    for event in &found {
        assert!(
            seen.insert(event.id.clone()),
            "{} is stored twice",
            event.id
        );
    }
    let missing: Vec<&String> = acknowledged.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    found
}

/// The `retry-after-ms` hint of a refusal; panics when it has none.
pub fn retry_after_ms(status: &tonic::Status) -> u64 {
    status
        .metadata()
        .get("retry-after-ms")
        .expect("a retry-after-ms hint")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Checks that every stored event, the read trail's included, has a seq
/// of its own and that together they are exactly 0..n: no gap, no repeat.
/// Returns n.
pub async fn assert_dense_seqs(client: &mut Client) -> u64 {
    let mut seqs = Vec::new();
    for types in [vec![], vec![auditd::app::trail::TRAIL_TYPE.to_owned()]] {
        let request = SearchRequest {
            types,
            limit: 10_000,
            ..Default::default()
        };
        let (events, _) = search_all(client, request).await;
        seqs.extend(events.iter().map(|e| e.seq));
    }
    seqs.sort_unstable();
    let dense: Vec<u64> = (0..seqs.len() as u64).collect();
    assert!(
        seqs == dense,
        "seqs are not 0..{}: first difference at {:?}",
        seqs.len(),
        seqs.iter().zip(&dense).position(|(a, b)| a != b)
    );
    seqs.len() as u64
}

/// A `Tokens` client holding `token`.
pub type Tokens = TokensClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        auditd::client::BearerToken,
    >,
>;

pub async fn tokens_client(server: &TestServer, token: &str) -> Tokens {
    let channel = tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    TokensClient::with_interceptor(channel, auditd::client::BearerToken::new(token).unwrap())
}

/// A new token of `kind` for `subject` (and `access`): its (id, secret).
pub async fn create(
    server: &TestServer,
    kind: TokenKind,
    subject: &str,
    access: &str,
) -> (String, String) {
    let mut admin = tokens_client(server, &server.admin_token()).await;
    let reply = admin
        .create_token(CreateTokenRequest {
            kind: kind as i32,
            name: format!("{kind:?} {subject} {access}"),
            subject: subject.into(),
            access_id: access.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (reply.token.unwrap().id, reply.secret)
}

/// The trail events of `action` (`audit.search`, `audit.tail`, ...),
/// once there are at least `n`: a trail event is durable before the
/// answer goes out, and searchable a commit later.
pub async fn trail_events(client: &mut Client, action: &str, n: usize) -> Vec<AuditEvent> {
    let request = SearchRequest {
        types: vec![auditd::app::trail::TRAIL_TYPE.to_owned()],
        actions: vec![action.to_owned()],
        limit: 10_000,
        ..Default::default()
    };
    let wait = async {
        loop {
            let (events, _) = search_all(client, request.clone()).await;
            if events.len() >= n {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("fewer than {n} {action} trail events"))
}
