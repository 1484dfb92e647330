//! `auditctl receipt`, `verify-receipt` and `verify`: an event's receipt
//! (a C2SP tlog-proof), its offline check, and the checks of the whole log
//! (consistency with a saved checkpoint, the full audit).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use auditd::client::IntegrityClient;
use auditd::integrity::audit::LAWFUL;
use auditd::integrity::combined::{is_combined, parse_combined};
use auditd::integrity::merkle::{verify_consistency, Hash};
use auditd::integrity::note::{parse_checkpoint, verify};
use auditd::integrity::receipt::{verify_receipt, Receipt};
use auditd::json::JsonEvent;
use auditd::proto::{
    AuditLogRequest, Checkpoint, GetCheckpointRequest, GetConsistencyProofRequest,
    GetInclusionProofRequest,
};

use super::status_error;

/// How long `receipt` waits for the event to be in a signed checkpoint.
const RECEIPT_WAIT: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug, Clone)]
pub struct ReceiptArgs {
    /// The event's id.
    id: Option<String>,
    /// The event by seq instead of id.
    #[arg(long, conflicts_with = "id")]
    seq: Option<u64>,
    /// Prove against the kept checkpoint of this size (default: the latest).
    #[arg(long, default_value_t = 0)]
    tree_size: u64,
}

#[derive(clap::Args, Debug, Clone)]
pub struct VerifyReceiptArgs {
    /// The receipt (`auditctl receipt` wrote it).
    receipt: PathBuf,
    /// The log's note verifier key (`<name>+<id>+<key>`), or a file holding
    /// it (the daemon writes it to <data-dir>/integrity.pub).
    #[arg(long)]
    key: String,
    /// The event as JSON (`auditctl get ID`): checks that the receipt's
    /// leaf is exactly this event.
    #[arg(long)]
    event: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    /// A checkpoint saved by an earlier run: the latest must be signed by
    /// the same key and prove itself an extension of it; then it replaces
    /// it. A file that does not exist yet is written (first use).
    #[arg(long)]
    since: Option<PathBuf>,
    /// Recompute every leaf from the stored events (admin), with progress,
    /// and print every problem by seq.
    #[arg(long)]
    full: bool,
    /// The note verifier key, or a file holding it (default:
    /// <data-dir>/integrity.pub).
    #[arg(long)]
    key: Option<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchProofArgs {
    /// Inclusion proofs to time, of events drawn at random.
    #[arg(long, default_value_t = 2_000)]
    count: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Draw seqs at or above this one only (default: 0).
    #[arg(long, default_value_t = 0)]
    from_seq: u64,
    /// Draw seqs below this one only (default: the checkpoint's size).
    #[arg(long)]
    to_seq: Option<u64>,
}

/// Times `GetInclusionProof` for random seqs of the latest checkpoint (or
/// of `--from-seq`..`--to-seq` in it), one at a time, and prints p50, p99
/// and max as JSON (BENCHMARKS.md).
pub async fn bench_proof(mut client: IntegrityClient, args: BenchProofArgs) -> anyhow::Result<()> {
    use rand::{Rng, SeedableRng};
    let size = client
        .get_checkpoint(GetCheckpointRequest {
            size: 0,
            ..Default::default()
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .size;
    if size == 0 {
        bail!("the log is empty");
    }
    let to = args.to_seq.unwrap_or(size).min(size);
    if args.from_seq >= to {
        bail!(
            "--from-seq {} leaves no seq below {to} (the checkpoint holds {size} leaves)",
            args.from_seq
        );
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut samples = Vec::with_capacity(args.count);
    // The first few warm the caches and connections; not counted.
    for i in 0..args.count + 10 {
        let request = GetInclusionProofRequest {
            seq: Some(rng.random_range(args.from_seq..to)),
            tree_size: size,
            ..Default::default()
        };
        let started = Instant::now();
        client
            .get_inclusion_proof(request)
            .await
            .map_err(status_error)?;
        if i >= 10 {
            samples.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    samples.sort_by(f64::total_cmp);
    let rank = super::bench_search::rank;
    println!(
        "{}",
        serde_json::json!({
            "tree_size": size,
            "proofs": samples.len(),
            "p50_ms": rank(&samples, 0.5),
            "p99_ms": rank(&samples, 0.99),
            "max_ms": samples[samples.len() - 1],
        })
    );
    Ok(())
}

/// A key given as text, or the path of a file holding it.
pub(crate) fn read_key(key: &str) -> anyhow::Result<String> {
    let path = Path::new(key);
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the key from {}", path.display()))?;
        return Ok(text.trim().to_owned());
    }
    Ok(key.trim().to_owned())
}

pub async fn receipt(mut client: IntegrityClient, args: ReceiptArgs) -> anyhow::Result<()> {
    let request = GetInclusionProofRequest {
        id: args.id.clone().unwrap_or_default(),
        seq: args.seq,
        tree_size: args.tree_size,
    };
    if request.id.is_empty() && request.seq.is_none() {
        bail!("give the event's id (or --seq)");
    }
    let started = Instant::now();
    let proof = loop {
        match client.get_inclusion_proof(request.clone()).await {
            Ok(proof) => break proof.into_inner(),
            // Not in a signed checkpoint yet: one comes within the interval.
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    && started.elapsed() < RECEIPT_WAIT =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => return Err(status_error(status)),
        }
    };
    print!("{}", proof.tlog_proof);
    Ok(())
}

pub fn verify_receipt_file(args: &VerifyReceiptArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.receipt)
        .with_context(|| format!("reading {}", args.receipt.display()))?;
    let receipt = Receipt::parse(&text)?;
    let key = read_key(&args.key)?;
    let event = match &args.event {
        None => None,
        Some(path) => {
            let line = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let event = JsonEvent::parse(line.trim())
                .and_then(JsonEvent::into_stored)
                .with_context(|| format!("{} is not an event as JSON", path.display()))?;
            Some(event)
        }
    };
    let verified = verify_receipt(&receipt, &key, event.as_ref())?;
    println!(
        "ok: leaf {} is in the tree of {} leaves signed by {}{}",
        verified.index,
        verified.tree_size,
        verified.origin,
        if verified.event_matched {
            ", and it is this event"
        } else {
            " (no --event: the event itself was not checked)"
        }
    );
    Ok(())
}

pub async fn verify_log(
    mut client: IntegrityClient,
    data_dir: &Path,
    args: &VerifyArgs,
) -> anyhow::Result<()> {
    if args.since.is_none() && !args.full {
        bail!("say what to verify: --since FILE, --full, or both");
    }
    if let Some(saved) = &args.since {
        let key = match &args.key {
            Some(key) => read_key(key)?,
            None => read_key(&data_dir.join("integrity.pub").display().to_string())
                .context("no --key, and no integrity.pub in the data directory")?,
        };
        since(&mut client, saved, &key).await?;
    }
    if args.full {
        full(&mut client).await?;
    }
    Ok(())
}

/// The latest checkpoint must be signed, and consistent with the saved
/// one; it then replaces it. On a cluster of several partitions both are
/// combined checkpoints, and each partition's tree must extend its saved
/// head.
async fn since(client: &mut IntegrityClient, saved: &Path, key: &str) -> anyhow::Result<()> {
    let latest: Checkpoint = client
        .get_checkpoint(GetCheckpointRequest::default())
        .await
        .map_err(status_error)?
        .into_inner();
    let body = verify(&latest.note, key).context("the latest checkpoint")?;
    let old = match std::fs::read_to_string(saved) {
        Ok(old) => old,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            save(saved, &latest.note)?;
            println!(
                "first use: saved the checkpoint of {} leaves to {}",
                latest.size,
                saved.display()
            );
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", saved.display())),
    };
    let old_body = verify(&old, key).context("the saved checkpoint")?;
    let (old_size, size) = match (is_combined(old_body), is_combined(body)) {
        (false, false) => one_tree_since(client, old_body, body).await?,
        (true, true) => partitions_since(client, old_body, body).await?,
        _ => bail!(
            "the saved checkpoint and the log's latest are not of the same kind (one tree, or a \
             cluster's combined checkpoint)"
        ),
    };
    save(saved, &latest.note)?;
    println!("ok: {old_size} → {size} leaves, consistent; saved the newer checkpoint");
    Ok(())
}

/// One tree: the latest extends the saved one. Returns both sizes.
async fn one_tree_since(
    client: &mut IntegrityClient,
    old_body: &str,
    body: &str,
) -> anyhow::Result<(u64, u64)> {
    let (old_origin, old_size, old_root) = parse_checkpoint(old_body)?;
    let (origin, size, root) = parse_checkpoint(body)?;
    if origin != old_origin {
        bail!("the log's origin is {origin}, the saved checkpoint's {old_origin}");
    }
    extends(client, None, (old_size, old_root), (size, root)).await?;
    Ok((old_size, size))
}

/// A cluster's combined checkpoints: every partition's tree extends its
/// saved head. Returns the total sizes.
async fn partitions_since(
    client: &mut IntegrityClient,
    old_body: &str,
    body: &str,
) -> anyhow::Result<(u64, u64)> {
    let (old, new) = (parse_combined(old_body)?, parse_combined(body)?);
    if old.origin != new.origin {
        bail!(
            "the log's origin is {}, the saved checkpoint's {}",
            new.origin,
            old.origin
        );
    }
    if old.heads.len() != new.heads.len() {
        bail!(
            "the log has {} partitions, the saved checkpoint {}",
            new.heads.len(),
            old.heads.len()
        );
    }
    for (p, (old_head, head)) in old.heads.iter().zip(&new.heads).enumerate() {
        extends(client, Some(p as u32), *old_head, *head)
            .await
            .with_context(|| format!("partition {p}"))?;
    }
    let total = |heads: &[(u64, Hash)]| heads.iter().map(|(size, _)| size).sum::<u64>();
    Ok((total(&old.heads), total(&new.heads)))
}

/// The tree of `new` (size, root) extends that of `old`, by a consistency
/// proof from the log (of `partition`'s tree on a cluster).
async fn extends(
    client: &mut IntegrityClient,
    partition: Option<u32>,
    (old_size, old_root): (u64, Hash),
    (size, root): (u64, Hash),
) -> anyhow::Result<()> {
    if size < old_size {
        bail!(
            "ROLLED BACK: the log holds {size} leaves, fewer than the {old_size} of the saved checkpoint"
        );
    }
    if old_size == 0 {
        return Ok(());
    }
    let proof = client
        .get_consistency_proof(GetConsistencyProofRequest {
            first: old_size,
            second: size,
            partition,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let hashes: Vec<Hash> = proof
        .hashes
        .iter()
        .map(|h| h.as_slice().try_into())
        .collect::<Result<_, _>>()
        .context("a proof hash is not 32 bytes")?;
    if verify_consistency(old_size, size, &old_root, &root, &hashes).is_err() {
        bail!(
            "FORKED OR ROLLED BACK: the log of {size} leaves does not extend the saved one of \
             {old_size} (the saved checkpoint is kept)"
        );
    }
    Ok(())
}

fn save(path: &Path, note: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, note).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// The full audit, with a progress bar; fails when it finds anything.
async fn full(client: &mut IntegrityClient) -> anyhow::Result<()> {
    let mut stream = client
        .audit_log(AuditLogRequest::default())
        .await
        .map_err(status_error)?
        .into_inner();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} events checked ({per_sec}, {eta} left)",
        )
        .expect("a valid template"),
    );
    let mut problems = 0u64;
    // Runs of lawfully removed events (expired, erased): reported, not faults.
    let mut lawful = 0u64;
    let mut done = false;
    let mut checked = 0;
    while let Some(progress) = stream.message().await.map_err(status_error)? {
        bar.set_length(progress.total);
        bar.set_position(progress.checked);
        checked = progress.checked;
        for p in &progress.problems {
            if LAWFUL.contains(&p.kind.as_str()) {
                lawful += 1;
            } else {
                problems += 1;
            }
            // Printed whether or not the bar shows (a pipe hides it).
            let at = match p.partition {
                Some(partition) => format!("partition {partition} seq {}", p.seq),
                None => format!("seq {}", p.seq),
            };
            bar.suspend(|| println!("{at}: {}: {}", p.kind, p.detail));
        }
        done = progress.done;
    }
    bar.finish_and_clear();
    if !done {
        bail!("the audit ended before it was done");
    }
    if problems > 0 {
        bail!("{problems} problem(s) found");
    }
    println!(
        "ok: {checked} events checked: every leaf matches its stored event, and the tree its signed checkpoint"
    );
    if lawful > 0 {
        println!("({lawful} run(s) of events lawfully removed, listed above)");
    }
    Ok(())
}
