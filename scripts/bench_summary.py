#!/usr/bin/env python3
"""Formats the JSON files of scripts/bench_ingest.sh as the Markdown tables
of BENCHMARKS.md: per run, the raw-engine limit and auditd's durable ingest
measured back to back, their ratio, latency, peak RSS and disk; then the
medians with their spread, and the half-rate run's time to searchable."""

import json
import statistics
import sys
from pathlib import Path

out, runs = Path(sys.argv[1]), int(sys.argv[2])


def load(name):
    return json.loads((out / name).read_text())


rows = []
for r in range(1, runs + 1):
    raw, e2e, daemon = load(f"raw-{r}.json"), load(f"e2e-{r}.json"), load(f"e2e-{r}-daemon.json")
    rows.append({
        "raw": raw["events_per_sec"],
        "e2e": e2e["events_per_sec"],
        "ratio": e2e["events_per_sec"] / raw["events_per_sec"],
        "mbs": e2e["ndjson_mb_per_sec"],
        "p50": e2e["ack_latency_ms"]["p50"],
        "p99": e2e["ack_latency_ms"]["p99"],
        "p999": e2e["ack_latency_ms"]["p999"],
        "ts50": (e2e["searchable_ms"] or {}).get("p50", float("nan")),
        "ts99": (e2e["searchable_ms"] or {}).get("p99", float("nan")),
        "rss": daemon["peak_rss_kib"] / 1024,
        "index": daemon["index_bytes"] / daemon["ndjson_bytes"],
        "disk": (daemon["index_bytes"] + daemon["wal_bytes"]) / daemon["ndjson_bytes"],
        "events": e2e["events"],
        "retries": e2e["retries"],
        "tlog": daemon.get("tlog_bytes", 0) / daemon["index_bytes"],
    })
    off = out / f"off-{r}.json"
    if off.exists():
        o = json.loads(off.read_text())
        rows[-1].update({
            "off": o["events_per_sec"],
            "off_ratio": o["events_per_sec"] / raw["events_per_sec"],
            "on_off": e2e["events_per_sec"] / o["events_per_sec"],
        })
    http = out / f"http-{r}.json"
    if http.exists():
        h = json.loads(http.read_text())
        rows[-1].update({
            "http": h["events_per_sec"],
            "http_grpc": h["events_per_sec"] / e2e["events_per_sec"],
            "http_raw": h["events_per_sec"] / raw["events_per_sec"],
            "http_p99": h["ack_latency_ms"]["p99"],
        })

print(f"| run | raw engine (events/s) | auditd (events/s) | ratio | MB/s | ack p50 / p99 / p99.9 (ms) "
      f"| searchable p50 / p99 (ms) | peak RSS (MiB) | index / NDJSON | (index + WAL) / NDJSON |")
print("|---|---|---|---|---|---|---|---|---|---|")
for i, r in enumerate(rows, 1):
    print(f"| {i} | {r['raw']:,.0f} | {r['e2e']:,.0f} | {r['ratio']:.2f} | {r['mbs']:.1f} "
          f"| {r['p50']:.1f} / {r['p99']:.1f} / {r['p999']:.1f} | {r['ts50']:.0f} / {r['ts99']:.0f} "
          f"| {r['rss']:.0f} | {r['index']:.3f} | {r['disk']:.3f} |")


def summary(key, fmt):
    values = [r[key] for r in rows]
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


print()
print(f"median (spread) over {runs} runs: raw {summary('raw', '{:,.0f}')} events/s; "
      f"auditd {summary('e2e', '{:,.0f}')} events/s; ratio {summary('ratio', '{:.2f}')}; "
      f"ack p99 {summary('p99', '{:.1f}')} ms; peak RSS {summary('rss', '{:.0f}')} MiB; "
      f"(index + WAL) / NDJSON {summary('disk', '{:.3f}')}; "
      f"events {rows[0]['events']:,}, retries {sum(r['retries'] for r in rows)}")


def thread_ticks(name):
    """{tid: (thread name, ticks)} and the process's ticks, from a
    cpu_snapshot file of bench_ingest.sh."""
    threads, process = {}, 0
    for line in (out / name).read_text().splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue  # a thread that ended while it was read
        if fields[0] == "process":
            process = int(fields[2])
        else:
            threads[fields[0]] = (fields[1], int(fields[2]))
    return threads, process


def stage(thread):
    """The pipeline stage a daemon thread (by its name) works for."""
    for prefix, stage in [("tokio-rt-worker", "grpc"), ("auditd-indexer", "documents"),
                          ("merge_thread", "merges"), ("auditd-wal", "wal"),
                          ("thrd-tantivy", "tantivy"), ("docstore", "tantivy")]:
        if thread.startswith(prefix):
            return stage
    return "other"


def daemon_cpu(run, load="e2e"):
    """CPU seconds by stage over the load `load` ("e2e", or "off" with
    integrity off) of run `run`. Threads that ended during it (Tantivy's
    indexing workers end at each commit) are the process's CPU beyond its
    live threads', counted as `tantivy`."""
    before, start = thread_ticks(f"{load}-{run}-cpu-before.txt")
    after, end = thread_ticks(f"{load}-{run}-cpu-after.txt")
    stages = dict.fromkeys(["tantivy", "documents", "merges", "grpc", "wal", "other"], 0)
    live = 0
    for tid, (name, ticks) in after.items():
        used = ticks - before.get(tid, (name, 0))[1]
        stages[stage(name)] += used
        live += used
    stages["tantivy"] += (end - start) - live
    return {k: v / 100 for k, v in stages.items()}


# CPU seconds per million events, stage by stage: the raw engine's
# document-building thread and Tantivy's threads, beside the daemon's.
per_m = []
for r in range(1, runs + 1):
    raw, e2e = load(f"raw-{r}.json"), load(f"e2e-{r}.json")
    if "cpu_seconds" not in raw or not (out / f"e2e-{r}-cpu-after.txt").exists():
        break
    m_raw, m_e2e = 1e6 / raw["events"], 1e6 / e2e["events"]
    cpu = {k: v * m_e2e for k, v in daemon_cpu(r).items()}
    cpu["daemon"] = sum(cpu.values())
    cpu["client"] = (e2e.get("cpu_seconds") or float("nan")) * m_e2e
    cpu["raw_documents"] = raw["main_thread_cpu_seconds"] * m_raw
    cpu["raw_tantivy"] = (raw["cpu_seconds"] - raw["main_thread_cpu_seconds"]) * m_raw
    cpu["raw"] = raw["cpu_seconds"] * m_raw
    if (out / f"off-{r}-cpu-after.txt").exists():
        m_off = 1e6 / load(f"off-{r}.json")["events"]
        cpu["daemon_off"] = sum(daemon_cpu(r, "off").values()) * m_off
        # A closed loop on a busy machine is bound by CPU: the throughput
        # integrity leaves, judged by the daemon's CPU an event.
        cpu["off_on"] = cpu["daemon_off"] / cpu["daemon"]
    per_m.append(cpu)
if len(per_m) == runs:
    def cpu(key, digits=2):
        values = [c[key] for c in per_m]
        return (f"{statistics.median(values):.{digits}f} "
                f"({min(values):.{digits}f}–{max(values):.{digits}f})")

    print()
    print(f"CPU seconds per million events, median (spread) over {runs} runs:")
    print()
    print("| where | raw engine | auditd |")
    print("|---|---|---|")
    print(f"| Tantivy's indexing threads (postings, doc store, segment files) | {cpu('raw_tantivy')} | {cpu('tantivy')} |")
    print(f"| document building (raw: its main thread; auditd: `auditd-indexer`, with commits) | {cpu('raw_documents')} | {cpu('documents')} |")
    print(f"| merges (Tantivy's merge threads) | — | {cpu('merges')} |")
    print(f"| gRPC, protobuf decode, validation, WAL record encoding (tokio workers) | — | {cpu('grpc')} |")
    print(f"| WAL writes and fsync (`auditd-wal`) | — | {cpu('wal')} |")
    print(f"| other daemon threads | — | {cpu('other')} |")
    print(f"| **total** | {cpu('raw')} | {cpu('daemon')} |")
    print(f"| load generator (`auditctl load`, same machine) | — | {cpu('client')} |")
    if all("off_on" in c for c in per_m):
        print()
        print(f"daemon CPU seconds per million events, integrity on {cpu('daemon')}, off "
              f"{cpu('daemon_off')}; off / on {cpu('off_on', 3)} (what integrity leaves of a "
              f"CPU-bound throughput)")

half, daemon = load("half.json"), load("half-daemon.json")
s = half["searchable_ms"] or {}
print()
print(f"half rate: target {half['target_rate']:,.0f} events/s, achieved {half['events_per_sec']:,.0f}; "
      f"time to searchable p50 {s.get('p50', float('nan')):.0f} ms, p99 {s.get('p99', float('nan')):.0f} ms, "
      f"max {s.get('max', float('nan')):.0f} ms ({half['markers_found']} markers, {half['markers_missing']} missing); "
      f"ack p50 {half['ack_latency_ms']['p50']:.1f} ms, p99 {half['ack_latency_ms']['p99']:.1f} ms; "
      f"peak RSS {daemon['peak_rss_kib'] / 1024:.0f} MiB")

startup = load("startup.json")
print()
print(f"start-up with {rows[0]['events']:,} acknowledged events only in the WAL (SIGKILL, no commit): "
      f"serving after {startup['seconds_to_serving']:.2f} s, {startup['events_searchable']:,} events searchable")

if all("off" in r for r in rows):
    print()
    print("| run | integrity on (events/s) | ratio to raw | integrity off (events/s) | ratio to raw | on / off | tree + checkpoints / index |")
    print("|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows, 1):
        print(f"| {i} | {r['e2e']:,.0f} | {r['ratio']:.2f} | {r['off']:,.0f} | {r['off_ratio']:.2f} "
              f"| {r['on_off']:.3f} | {r['tlog']:.3f} |")
    print()
    print(f"median (spread): on / off {summary('on_off', '{:.3f}')}; ratio on {summary('ratio', '{:.2f}')}, "
          f"off {summary('off_ratio', '{:.2f}')}; tree + checkpoints / index {summary('tlog', '{:.3f}')}")

if all("http" in r for r in rows):
    print()
    print("| run | gRPC (events/s) | HTTP NDJSON (events/s) | HTTP / gRPC | HTTP / raw engine | HTTP ack p99 (ms) |")
    print("|---|---|---|---|---|---|")
    for i, r in enumerate(rows, 1):
        print(f"| {i} | {r['e2e']:,.0f} | {r['http']:,.0f} | {r['http_grpc']:.2f} | {r['http_raw']:.2f} "
              f"| {r['http_p99']:.1f} |")
    print()
    print(f"median (spread): HTTP {summary('http', '{:,.0f}')} events/s; "
          f"HTTP / gRPC {summary('http_grpc', '{:.2f}')}; HTTP / raw {summary('http_raw', '{:.2f}')}")
