//! `auditctl load`: drives a daemon with NDJSON events (a file, or
//! generated in the same format as `gen_events.py`) over N concurrent
//! connections, closed-loop or at a fixed target rate, and reports
//! throughput, acknowledgement latency and time to searchable.
//!
//! Everything is parsed, batched and encoded as protobuf before the clock
//! starts, so the figure is the daemon's, not the client's JSON parser's or
//! encoder's: the client shares the machine's cores with the daemon, and
//! cloning and encoding each request took CPU from them
//! (`perf`, docs/benchmarks-history.md). With `--rate`, each
//! batch has a due time and its latency counts from that due time, not from
//! when it was actually sent: a stalled daemon cannot hide its stall by
//! slowing the client down (no coordinated omission).
//!
//! Time to searchable: one batch in every `batches / markers` is a marker.
//! Once it is acknowledged, a probe asks `GetEvent` for its first event
//! every `PROBE_INTERVAL` until it is found, and records the time from the
//! batch's send (or due time) to the first answer that finds it. Probes are
//! reads, and every read is audited through the WAL, so they add a little
//! write load of their own.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use auditd::client::BearerToken;
use auditd::json::JsonEvent;
use auditd::proto::audit_log_client::AuditLogClient;
use auditd::proto::{GetEventRequest, IngestRequest, IngestResponse, WaitFor};
use prost::bytes::BufMut;
use prost::Message;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::{channel, retry, wait_searchable, NO_SEARCHABLE_WAIT};
use auditd::client::MAX_MESSAGE_BYTES;

/// How often a probe asks whether its marker is searchable: the resolution
/// of the time-to-searchable figures.
const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// A marker not found by then is reported as missing.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most events `load` holds in memory (about 300 bytes each once encoded).
const MAX_LOAD_EVENTS: u64 = 20_000_000;

#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// NDJSON file of events (`-` reads stdin). Without it, `--generate`.
    file: Option<PathBuf>,
    /// Generate this many events in memory instead of reading a file
    /// (the generator of `auditctl gen`).
    #[arg(long, conflicts_with = "file")]
    generate: Option<u64>,
    /// Seed for `--generate`.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Concurrent connections, each with one batch in flight.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Events per batch.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Target rate in events per second (open loop); without it, each
    /// connection sends its next batch as soon as the last is acknowledged.
    #[arg(long)]
    rate: Option<f64>,
    /// How many batches carry a time-to-searchable probe (0: none).
    #[arg(long, default_value_t = 50)]
    markers: usize,
    /// Do not wait, at the end, until everything is searchable (for a
    /// daemon that is not committing, as in the start-up benchmark).
    #[arg(long)]
    no_wait: bool,
    /// Print the report as one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// At the end, write when each batch was acknowledged to FILE: one
    /// line `<first seq> <last seq> <unix microseconds>` per run of
    /// consecutive seqs (`auditctl bench-tail --ack-log` reads it).
    #[arg(long, value_name = "FILE")]
    ack_log: Option<PathBuf>,
    /// Send each batch as NDJSON to `POST <URL>/v1/events` (the HTTP
    /// listener, e.g. http://127.0.0.1:8080) instead of gRPC `Ingest`.
    /// Probes and the final wait stay on gRPC.
    #[arg(long, value_name = "URL")]
    http: Option<String>,
}

/// One batch, ready to send: an `IngestRequest` (its `batch_id` set,
/// waiting for durability) already encoded, and with `--http` its NDJSON
/// body.
struct Batch {
    request: Arc<[u8]>,
    ndjson: Option<prost::bytes::Bytes>,
    batch_id: String,
    events: usize,
    ndjson_bytes: u64,
}

/// What the connections and probes record.
#[derive(Default)]
struct Samples {
    /// Per batch: acknowledgement latency, seconds.
    ack: Vec<f64>,
    /// Per marker found: time to searchable, seconds.
    searchable: Vec<f64>,
    /// With `--ack-log`: (first seq, last seq, unix microseconds) per run
    /// of consecutive seqs acknowledged.
    acked_at: Vec<(u64, u64, i64)>,
    missing_markers: u64,
    retries: u64,
}

pub async fn load(endpoint: Endpoint, bearer: BearerToken, args: LoadArgs) -> anyhow::Result<()> {
    if args.batch_size == 0 || args.streams == 0 {
        bail!("--batch-size and --streams must be at least 1");
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of events per second");
    }
    let run_id = ulid::Ulid::new().to_string();
    let batches = Arc::new(prepare(&args, &run_id)?);
    if batches.is_empty() {
        bail!("no events to send");
    }
    let markers = args.markers;
    let marker_every = (batches.len() / markers.max(1)).max(1);
    let mut clients = Vec::with_capacity(args.streams);
    for _ in 0..args.streams {
        // One connection each: concurrency across connections, as from
        // separate producers. Batches go out pre-encoded; probes and the
        // final wait use the generated client on the same connection.
        let channel = channel(&endpoint).await?;
        let client = AuditLogClient::with_interceptor(channel.clone(), bearer.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let sender = match &args.http {
            None => Sender::Grpc(PreEncodedIngest::new(channel, bearer.clone())),
            Some(url) => Sender::Http(HttpIngest::new(url, &bearer)?),
        };
        clients.push((sender, client));
    }

    let next = Arc::new(AtomicUsize::new(0));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let acked_events = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let cpu_at_start = auditd::client::cpu::process_cpu_seconds();
    let (rate, batch_size) = (args.rate, args.batch_size);
    let ack_log = args.ack_log.is_some();
    let due = move |k: usize| -> Option<Instant> {
        rate.map(|rate| started + Duration::from_secs_f64((k * batch_size) as f64 / rate))
    };
    let mut workers = Vec::new();
    let probes = Arc::new(Mutex::new(Vec::new()));
    let mut last_client = clients[0].1.clone();
    for (sender, client) in clients {
        let (next, batches, samples, acked_events, probes) = (
            next.clone(),
            batches.clone(),
            samples.clone(),
            acked_events.clone(),
            probes.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(batch) = batches.get(k) else {
                    return Ok::<(), anyhow::Error>(());
                };
                let from = match due(k) {
                    Some(at) => {
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    None => Instant::now(),
                };
                let (reply, retries) = retry(|| {
                    let mut sender = sender.clone();
                    async move { sender.ingest(batch).await }
                })
                .await
                .with_context(|| format!("batch {k}"))?;
                let acked = from.elapsed().as_secs_f64();
                acked_events.fetch_add(batch.events as u64, Ordering::Relaxed);
                {
                    let mut s = samples.lock().expect("samples lock");
                    s.ack.push(acked);
                    s.retries += u64::from(retries);
                    if ack_log {
                        let now = unix_micros();
                        s.acked_at
                            .extend(seq_runs(&reply.seqs).map(|(a, b)| (a, b, now)));
                    }
                }
                if markers > 0 && k % marker_every == 0 {
                    if let Some(id) = reply.ids.first().cloned() {
                        let probe = tokio::spawn(probe(client.clone(), id, from, samples.clone()));
                        probes.lock().expect("probes lock").push(probe);
                    }
                }
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    // Sending the last batch again, with its id, stores nothing and
    // returns once everything durable is searchable.
    let all_searchable = if args.no_wait {
        None
    } else {
        let again = IngestRequest::decode(&*batches[batches.len() - 1].request)
            .context("decoding the last batch")?;
        let waited = wait_searchable(&mut last_client, &again)
            .await
            .context("waiting until everything is searchable")?;
        if !waited {
            eprintln!("auditctl: {NO_SEARCHABLE_WAIT}");
        }
        waited.then(|| started.elapsed().as_secs_f64())
    };
    let probes = std::mem::take(&mut *probes.lock().expect("probes lock"));
    for probe in probes {
        probe.await??;
    }

    // This generator's own CPU while it sent and waited (not the reading
    // and encoding before the clock): on one machine it is taken from
    // the daemon's cores.
    let cpu_seconds = cpu_at_start
        .zip(auditd::client::cpu::process_cpu_seconds())
        .map(|(start, end)| end - start);
    let events = acked_events.load(Ordering::Relaxed);
    let ndjson_bytes: u64 = batches.iter().map(|b| b.ndjson_bytes).sum();
    let mut samples = std::mem::take(&mut *samples.lock().expect("samples lock"));
    if let Some(path) = &args.ack_log {
        write_ack_log(path, &samples.acked_at)?;
    }
    let report = serde_json::json!({
        "events": events,
        "batches": batches.len(),
        "batch_size": args.batch_size,
        "streams": args.streams,
        "target_rate": args.rate,
        "seconds": seconds,
        "all_searchable_seconds": all_searchable,
        "events_per_sec": events as f64 / seconds,
        "ndjson_mb_per_sec": ndjson_bytes as f64 / 1e6 / seconds,
        "retries": samples.retries,
        "ack_latency_ms": percentiles(
            &mut samples.ack,
            &[("p50", 0.5), ("p99", 0.99), ("p999", 0.999)]
        ),
        "searchable_ms": percentiles(&mut samples.searchable, &[("p50", 0.5), ("p99", 0.99)]),
        "markers_found": samples.searchable.len(),
        "markers_missing": samples.missing_markers,
        "cpu_seconds": cpu_seconds,
    });
    if args.json {
        println!("{report}");
    } else {
        print_summary(&report);
    }
    Ok(())
}

/// How a batch goes out: gRPC `Ingest`, or `POST /v1/events`.
#[derive(Clone)]
enum Sender {
    Grpc(PreEncodedIngest),
    Http(HttpIngest),
}

impl Sender {
    async fn ingest(
        &mut self,
        batch: &Batch,
    ) -> Result<tonic::Response<IngestResponse>, tonic::Status> {
        match self {
            Sender::Grpc(grpc) => grpc.ingest(batch.request.clone()).await,
            Sender::Http(http) => http.ingest(batch).await,
        }
    }
}

/// `POST /v1/events` with a batch's NDJSON, on a client of its own (one
/// connection, one batch in flight, as a gRPC stream has). An HTTP
/// problem comes back as the status gRPC would give, so retries follow
/// the same rules.
#[derive(Clone)]
struct HttpIngest {
    client: reqwest::Client,
    url: String,
    authorization: String,
}

impl HttpIngest {
    fn new(base: &str, bearer: &BearerToken) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .context("building the HTTP client")?;
        Ok(HttpIngest {
            client,
            url: format!("{}/v1/events", base.trim_end_matches('/')),
            authorization: bearer.header_value().to_owned(),
        })
    }

    async fn ingest(
        &self,
        batch: &Batch,
    ) -> Result<tonic::Response<IngestResponse>, tonic::Status> {
        let body = batch
            .ndjson
            .clone()
            .ok_or_else(|| tonic::Status::internal("no NDJSON body prepared"))?;
        let response = self
            .client
            .post(&self.url)
            .query(&[("batchId", batch.batch_id.as_str()), ("waitFor", "durable")])
            .header("authorization", &self.authorization)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("HTTP: {e}")))?;
        let ok = response.status().is_success();
        let text = response
            .text()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("HTTP: {e}")))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|_| tonic::Status::internal(format!("HTTP: not JSON: {text}")))?;
        if ok {
            let ids = json["ids"]
                .as_array()
                .map(|ids| {
                    ids.iter()
                        .filter_map(|i| i.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let accepted = json["accepted"].as_u64().unwrap_or(0) as u32;
            let seqs = json["seqs"]
                .as_array()
                .map(|seqs| seqs.iter().filter_map(|s| s.as_u64()).collect())
                .unwrap_or_default();
            return Ok(tonic::Response::new(IngestResponse {
                accepted,
                ids,
                seqs,
            }));
        }
        let code = match json["code"].as_str().unwrap_or("") {
            "ResourceExhausted" => tonic::Code::ResourceExhausted,
            "Unavailable" => tonic::Code::Unavailable,
            "Aborted" => tonic::Code::Aborted,
            "InvalidArgument" => tonic::Code::InvalidArgument,
            "Unauthenticated" => tonic::Code::Unauthenticated,
            "PermissionDenied" => tonic::Code::PermissionDenied,
            _ => tonic::Code::Internal,
        };
        let mut status =
            tonic::Status::new(code, json["detail"].as_str().unwrap_or(&text).to_owned());
        if let Some(ms) = json["retryAfterMs"].as_u64() {
            if let Ok(value) = ms.to_string().parse() {
                status
                    .metadata_mut()
                    .insert(auditd::grpc::RETRY_AFTER_MS, value);
            }
        }
        Err(status)
    }
}

/// `Ingest` with a request encoded beforehand: the encoder only copies its
/// bytes into the frame. Same method, headers and limits as the generated
/// client.
#[derive(Clone)]
struct PreEncodedIngest(tonic::client::Grpc<InterceptedService<Channel, BearerToken>>);

impl PreEncodedIngest {
    fn new(channel: Channel, bearer: BearerToken) -> Self {
        PreEncodedIngest(
            tonic::client::Grpc::new(InterceptedService::new(channel, bearer))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
    }

    async fn ingest(
        &mut self,
        request: Arc<[u8]>,
    ) -> Result<tonic::Response<IngestResponse>, tonic::Status> {
        self.0
            .ready()
            .await
            .map_err(|e| tonic::Status::unknown(format!("service was not ready: {e}")))?;
        let path =
            tonic::codegen::http::uri::PathAndQuery::from_static("/audit.v1.AuditLog/Ingest");
        self.0
            .unary(tonic::Request::new(request), path, PreEncoded)
            .await
    }
}

/// Sends bytes as they are; decodes the reply with prost.
struct PreEncoded;

impl Codec for PreEncoded {
    type Encode = Arc<[u8]>;
    type Decode = IngestResponse;
    type Encoder = PreEncoded;
    type Decoder = tonic_prost::ProstDecoder<IngestResponse>;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::new(Default::default())
    }
}

impl Encoder for PreEncoded {
    type Item = Arc<[u8]>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Arc<[u8]>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

/// Batch ids make a retry (and the final wait for searchability) store
/// nothing twice.
fn batch_id(run_id: &str, k: usize) -> String {
    format!("load-{run_id}-{k}")
}

/// Polls `GetEvent(id)` until it is found, then records the time since
/// `from`.
async fn probe(
    mut client: crate::Client,
    id: String,
    from: Instant,
    samples: Arc<Mutex<Samples>>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + PROBE_TIMEOUT;
    loop {
        match client.get_event(GetEventRequest { id: id.clone() }).await {
            Ok(_) => {
                let seconds = from.elapsed().as_secs_f64();
                samples
                    .lock()
                    .expect("samples lock")
                    .searchable
                    .push(seconds);
                return Ok(());
            }
            Err(status) if status.code() == tonic::Code::NotFound => {}
            // A node that cannot look events up by id (one of an older
            // cluster of several partitions): the marker goes unmeasured.
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                samples.lock().expect("samples lock").missing_markers += 1;
                return Ok(());
            }
            // Reads may be refused for a moment under overload; retry.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::ResourceExhausted | tonic::Code::Unavailable
                ) => {}
            Err(status) => return Err(crate::status_error(status)),
        }
        if Instant::now() >= deadline {
            samples.lock().expect("samples lock").missing_markers += 1;
            return Ok(());
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Reads (or generates) and parses every event into batches, before the
/// clock starts.
fn prepare(args: &LoadArgs, run_id: &str) -> anyhow::Result<Vec<Batch>> {
    let lines: Box<dyn Iterator<Item = anyhow::Result<String>>> = match (&args.file, args.generate)
    {
        (Some(file), _) => {
            let input: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(std::io::BufReader::with_capacity(
                    1 << 20,
                    std::fs::File::open(file)
                        .with_context(|| format!("opening {}", file.display()))?,
                ))
            };
            Box::new(std::io::BufRead::lines(input).map(|l| l.context("reading")))
        }
        (None, Some(count)) => {
            if count > MAX_LOAD_EVENTS {
                bail!("--generate at most {MAX_LOAD_EVENTS} events");
            }
            let opts = auditd::client::gen::GenOptions {
                count,
                seed: args.seed,
                ..auditd::client::gen::GenOptions::default()
            };
            Box::new(auditd::client::gen::events(&opts).map(|e| Ok(e.to_json_line())))
        }
        (None, None) => bail!("give an NDJSON file or --generate COUNT"),
    };
    let mut batches = Vec::new();
    let mut events = Vec::with_capacity(args.batch_size);
    let mut ndjson_bytes = 0;
    let mut total = 0u64;
    let http = args.http.is_some();
    let mut body = String::new();
    let mut seal = |events: &mut Vec<_>, ndjson_bytes: &mut u64, body: &mut String| {
        let request = IngestRequest {
            events: std::mem::replace(events, Vec::with_capacity(args.batch_size)),
            batch_id: batch_id(run_id, batches.len()),
            wait_for: WaitFor::Durable as i32,
        };
        batches.push(Batch {
            request: request.encode_to_vec().into(),
            ndjson: http.then(|| std::mem::take(body).into()),
            batch_id: request.batch_id.clone(),
            events: request.events.len(),
            ndjson_bytes: std::mem::take(ndjson_bytes),
        });
    };
    for (n, line) in lines.enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        total += 1;
        if total > MAX_LOAD_EVENTS {
            bail!("more than {MAX_LOAD_EVENTS} events: split the file");
        }
        ndjson_bytes += line.len() as u64 + 1;
        if http {
            body.push_str(&line);
            body.push('\n');
        }
        events.push(
            JsonEvent::parse(&line)
                .and_then(JsonEvent::into_proto)
                .with_context(|| format!("line {}", n + 1))?,
        );
        if events.len() == args.batch_size {
            seal(&mut events, &mut ndjson_bytes, &mut body);
        }
    }
    if !events.is_empty() {
        seal(&mut events, &mut ndjson_bytes, &mut body);
    }
    Ok(batches)
}

/// Nearest-rank percentiles, in milliseconds, plus the maximum; `null`
/// when there are no samples.
fn percentiles(samples: &mut [f64], ranks: &[(&str, f64)]) -> serde_json::Value {
    if samples.is_empty() {
        return serde_json::Value::Null;
    }
    samples.sort_by(f64::total_cmp);
    let mut out = serde_json::Map::new();
    for &(name, rank) in ranks {
        let i = ((rank * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
        out.insert(name.into(), (samples[i] * 1e3).into());
    }
    out.insert("max".into(), (samples[samples.len() - 1] * 1e3).into());
    out.into()
}

fn print_summary(report: &serde_json::Value) {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "{} events in {} batches of {} over {} connections{}: {:.2} s",
        report["events"],
        report["batches"],
        report["batch_size"],
        report["streams"],
        match report["target_rate"].as_f64() {
            Some(rate) => format!(" at a target of {rate:.0} events/s"),
            None => String::new(),
        },
        f(&report["seconds"]),
    );
    if let Some(seconds) = report["all_searchable_seconds"].as_f64() {
        println!("everything searchable after {seconds:.2} s");
    }
    println!(
        "throughput: {:.0} events/s, {:.1} MB/s of NDJSON ({} retries after a refusal)",
        f(&report["events_per_sec"]),
        f(&report["ndjson_mb_per_sec"]),
        report["retries"],
    );
    let line = |name: &str, v: &serde_json::Value| match v.as_object() {
        None => println!("{name}: no samples"),
        Some(map) => {
            let parts: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k} {:.1} ms", v.as_f64().unwrap_or(f64::NAN)))
                .collect();
            println!("{name}: {}", parts.join(", "));
        }
    };
    line("acknowledged (durable)", &report["ack_latency_ms"]);
    line("time to searchable", &report["searchable_ms"]);
    println!(
        "markers: {} found, {} missing",
        report["markers_found"], report["markers_missing"]
    );
}

/// Now, in microseconds since 1970 (0 for a clock before it).
pub(crate) fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// `seqs` as runs of consecutive values, (first, last) each.
fn seq_runs(seqs: &[u64]) -> impl Iterator<Item = (u64, u64)> + '_ {
    seqs.chunk_by(|a, b| a + 1 == *b)
        .map(|run| (run[0], run[run.len() - 1]))
}

/// Writes the ack log whole under a temporary name, then renames it: a
/// reader never sees half of it.
fn write_ack_log(path: &std::path::Path, acked_at: &[(u64, u64, i64)]) -> anyhow::Result<()> {
    use std::io::Write;
    let partial = path.with_extension("partial");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&partial)
            .with_context(|| format!("creating {}", partial.display()))?,
    );
    for (first, last, at) in acked_at {
        writeln!(out, "{first} {last} {at}")?;
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&partial, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod ack_log_tests {
    use super::seq_runs;

    #[test]
    fn seqs_group_into_runs_of_consecutive_values() {
        let runs: Vec<_> = seq_runs(&[4, 5, 6, 9, 10, 12]).collect();
        assert_eq!(runs, vec![(4, 6), (9, 10), (12, 12)]);
        assert_eq!(seq_runs(&[]).count(), 0);
    }
}
