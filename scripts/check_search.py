#!/usr/bin/env python3
"""Acceptance check: searches through a running auditd return exactly what the NDJSON says.

The daemon must hold exactly the events of the NDJSON file (ingest the file into an empty
daemon first). The checker then builds queries from values that occur in the file (with a
seed, so a run can be repeated), runs each through

    <auditctl> --addr ADDR search <flags> --all --format ids

and compares the ids printed (every page) with a brute-force answer computed from the file:

  * the SET of ids must be equal (no missing, no unexpected, no duplicated id);
  * the ORDER must be right: newest first (oldest first with --ascending). Events with equal
    times may come in any order among themselves, so what is compared is the sequence of
    event times of the returned ids against the expected sequence of times.

Semantics the expected answer assumes (the daemon's documented search contract): filters are
AND-ed, the values of one repeated flag are OR-ed; `--action X*` is a prefix match; `--ip`
takes an address (an IPv4 address equals its IPv4-mapped IPv6 form) or a CIDR block; status
ranges are inclusive and never match an event without a status; `--outcome success` is
0 < status < 400, `failure` is status >= 400; `--from` is inclusive and `--to` exclusive,
compared in whole microseconds; `--text` words (split on anything but [0-9A-Za-z],
case-insensitive) must all occur among the words of the event's text fields.

Run (from the repository root):

    target/release/auditctl gen --count 1000000 > events.ndjson
        # or: python3 ../shared/workload/gen_events.py --count 1000000 > events.ndjson
    # ... start auditd on an empty data directory and ingest events.ndjson ...
    python3 scripts/check_search.py --events events.ndjson --auditctl target/release/auditctl \\
        [--addr http://127.0.0.1:50051] [--queries 40] [--seed 3]

auditctl inherits this process's environment (e.g. the token variable it reads); global
auditctl options can also be passed with --auditctl-arg (repeatable, placed before `search`).
Prints one line per query, then "N passed, M failed"; exits 1 if any query failed.
"""
import argparse
import ipaddress
import json
import random
import re
import shlex
import subprocess
from collections import Counter
import sys
from array import array

TIMEOUT_S = 600
WORD_SPLIT = re.compile(r"[^0-9A-Za-z]+")


def words(text):
    """The lower-cased words of a string, split the way the daemon's text filter is specified."""
    return {w.lower() for w in WORD_SPLIT.split(text) if w}


def micros(seconds):
    """Times and bounds are compared in whole microseconds."""
    return int(round(float(seconds) * 1e6))


def event_words(e):
    """Word set of the text fields of one parsed event."""
    out = set()
    src = e.get("source") or {}
    for value in (e.get("id"), e.get("type"), e.get("action"), e.get("accessId"), e.get("subject"),
                  src.get("name"), e.get("resource"), e.get("errorId"), e.get("errorMessage"),
                  e.get("before"), e.get("after")):
        if isinstance(value, str):
            out |= words(value)
    for mapping in (e.get("query"), e.get("attributes")):
        if isinstance(mapping, dict):
            for value in mapping.values():
                if isinstance(value, str):
                    out |= words(value)
    return out


def parse_ip(text):
    """An address, IPv4-mapped IPv6 folded to IPv4 so the two forms compare equal; None if invalid."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class Events:
    """The NDJSON file, column-wise and with pooled strings, so a million events fit in little memory.

    Only what the structured filters need is kept; text filters re-read the file (see text_matches).
    """

    def __init__(self, path):
        self.path = path
        self.ids, self.actions, self.access_ids, self.subjects = [], [], [], []
        self.types, self.source_names, self.ips = [], [], []
        self.times = array("q")      # microseconds
        self.statuses = array("q")   # 0 when absent
        self.error_messages = {}     # index -> errorMessage, for picking text queries
        pool = {}
        intern = lambda s: pool.setdefault(s, s) if isinstance(s, str) else ""
        for i, e in enumerate(self._parsed()):
            src = e.get("source") or {}
            self.ids.append(e.get("id", ""))
            self.times.append(micros(e.get("time", 0)))
            self.actions.append(intern(e.get("action")))
            self.access_ids.append(intern(e.get("accessId")))
            self.subjects.append(intern(e.get("subject")))
            self.types.append(intern(e.get("type")))
            self.source_names.append(intern(src.get("name")))
            self.ips.append(intern(src.get("ip")))
            self.statuses.append(int(e.get("status") or 0))
            if isinstance(e.get("errorMessage"), str):
                self.error_messages[i] = e["errorMessage"]
        self.n = len(self.ids)

    def lines(self):
        """Non-blank lines; their position is the event index (file order)."""
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield line

    def _parsed(self):
        for number, line in enumerate(self.lines(), 1):
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                sys.exit(f"{self.path}: event {number} is not JSON: {err}")

    def text_matches(self, candidates, query_words):
        """Indices among `candidates` whose text fields hold every query word.

        A word is made of ASCII letters and digits, which JSON never escapes, so a cheap
        substring test on the raw line rules out almost every event before parsing it.
        """
        wanted = None if isinstance(candidates, range) else set(candidates)   # None: every event
        out = []
        for i, line in enumerate(self.lines()):
            if wanted is None or i in wanted:
                low = line.lower()
                if all(w in low for w in query_words) and query_words <= event_words(json.loads(line)):
                    out.append(i)
        return out


def column_filter(column, match):
    """Predicate on an index from a predicate on a (pooled, few-valued) column value, memoised."""
    memo = {}

    def pred(i):
        v = column[i]
        if v not in memo:
            memo[v] = match(v)
        return memo[v]
    return pred


def ip_matcher(values):
    targets = []
    for v in values:
        if "/" in v:
            net = ipaddress.ip_network(v, strict=False)
            targets.append(lambda ip, net=net: ip.version == net.version and ip in net)
        else:
            want = parse_ip(v)
            targets.append(lambda ip, want=want: ip == want)
    return lambda s: (lambda ip: ip is not None and any(t(ip) for t in targets))(parse_ip(s))


def expected_ids(ev, q):
    """Brute-force answer for query `q` (a dict of filters), in the expected result order."""
    preds = []
    if "action" in q:
        exact = {a for a in q["action"] if not a.endswith("*")}
        prefixes = tuple(a[:-1] for a in q["action"] if a.endswith("*"))
        preds.append(column_filter(ev.actions, lambda a: a in exact or (bool(prefixes) and a.startswith(prefixes))))
    for key, column in (("access_id", ev.access_ids), ("subject", ev.subjects),
                        ("type", ev.types), ("source_name", ev.source_names)):
        if key in q:
            allowed = set(q[key])
            preds.append(column_filter(column, lambda v, allowed=allowed: v in allowed))
    if "ip" in q:
        preds.append(column_filter(ev.ips, ip_matcher(q["ip"])))
    if "status_min" in q or "status_max" in q:
        lo, hi = q.get("status_min", 0), q.get("status_max", float("inf"))
        preds.append(lambda i: ev.statuses[i] != 0 and lo <= ev.statuses[i] <= hi)
    if q.get("outcome") == "success":
        preds.append(lambda i: 0 < ev.statuses[i] < 400)
    elif q.get("outcome") == "failure":
        preds.append(lambda i: ev.statuses[i] >= 400)
    if "from" in q:
        lo_us = micros(q["from"])
        preds.append(lambda i: ev.times[i] >= lo_us)
    if "to" in q:
        hi_us = micros(q["to"])
        preds.append(lambda i: ev.times[i] < hi_us)
    candidates = range(ev.n)
    for p in preds:
        candidates = [i for i in candidates if p(i)]
    if "text" in q:
        candidates = ev.text_matches(candidates, words(q["text"]))
    # Newest first, ties later line first; --ascending flips both.
    asc = q.get("ascending", False)
    return sorted(candidates, key=lambda i: (ev.times[i], i), reverse=not asc)


FLAGS = {"action": "--action", "access_id": "--access-id", "subject": "--subject", "ip": "--ip",
         "type": "--type", "source_name": "--source-name", "status_min": "--status-min",
         "status_max": "--status-max", "outcome": "--outcome", "from": "--from", "to": "--to",
         "text": "--text"}


def search_flags(q):
    argv = []
    for key, flag in FLAGS.items():
        if key in q:
            for v in (q[key] if isinstance(q[key], list) else [q[key]]):
                argv += [flag, repr(v) if isinstance(v, float) else str(v)]
    if q.get("ascending"):
        argv.append("--ascending")
    return argv


def build_queries(ev, count, seed):
    """`count` queries cycling through kinds of filter, with values picked from the data."""
    rng = random.Random(seed)
    n = ev.n
    any_event = lambda: rng.randrange(n)
    distinct_actions = sorted(set(ev.actions))
    dotted = [a for a in distinct_actions if "." in a]   # those have a prefix such as `events.*`
    v4 = [i for i in range(0, n, max(1, n // 5000)) if (ip := parse_ip(ev.ips[i])) and ip.version == 4]
    v6 = [i for i in range(0, n, max(1, n // 5000)) if (ip := parse_ip(ev.ips[i])) and ip.version == 6]
    errors = sorted(ev.error_messages)

    def time_window(span_events):
        """[time of event i, time of event j): both bounds are real event times, to probe inclusivity."""
        i = rng.randrange(n)
        j = min(n - 1, i + rng.randrange(1, span_events))
        lo, hi = sorted((ev.times[i], ev.times[j]))
        return {"from": lo / 1e6, "to": hi / 1e6}

    def error_words(k):
        if not errors:
            return None
        ws = sorted(words(ev.error_messages[rng.choice(errors)]))
        # Prefer real words ("expired") to "a" or "is": they say more, and filter the scan better.
        ws = [w for w in ws if len(w) >= 4] or ws
        return " ".join(rng.sample(ws, min(k, len(ws))))

    def cidr(pool, prefix):
        if not pool:
            return None
        net = ipaddress.ip_network(f"{ev.ips[rng.choice(pool)]}/{prefix}", strict=False)
        return {"ip": [str(net)]}

    kinds = [
        lambda: {"action": [rng.choice(distinct_actions)]},
        lambda: {"action": [rng.choice(dotted).split(".")[0] + ".*"]} if dotted else None,
        lambda: {"access_id": [ev.access_ids[any_event()]]},
        lambda: {"subject": [ev.subjects[any_event()]]},
        lambda: {"ip": [ev.ips[rng.choice(v4)]]} if v4 else None,
        lambda: {"ip": [ev.ips[rng.choice(v6)]]} if v6 else None,
        lambda: cidr(v4, 16),
        lambda: cidr(v6, 48),
        lambda: {"status_min": 400, "status_max": 499},
        lambda: {"outcome": "failure"},
        lambda: time_window(3000),
        lambda: {"text": error_words(1)} if errors else None,
        lambda: {"text": error_words(2)} if errors else None,
        lambda: {"action": [rng.choice(distinct_actions)], **time_window(20000)},
        lambda: {"subject": [ev.subjects[any_event()]], "outcome": "failure"},
        # Two values of one flag are OR-ed.
        lambda: {"access_id": [ev.access_ids[any_event()], ev.access_ids[any_event()]]},
        lambda: {"action": rng.sample(distinct_actions, min(2, len(distinct_actions)))},
        # An IPv4 address also matches when asked for in its IPv4-mapped IPv6 form.
        lambda: {"ip": ["::ffff:" + ev.ips[rng.choice(v4)]]} if v4 else None,
        lambda: {"status_min": 500},
        lambda: {"source_name": [ev.source_names[any_event()]], "status_max": 299},
        lambda: {**time_window(3000), "ascending": True},
        # A bound between two milliseconds: compared in microseconds, not rounded to events.
        lambda: {"from": ev.times[any_event()] / 1e6 + 0.0005, "to": ev.times[n - 1] / 1e6},
        lambda: {"text": ev.ids[any_event()]},
        lambda: {"type": [ev.types[any_event()]], "outcome": "failure", **time_window(50000)},
        lambda: {"subject": [ev.subjects[any_event()]], "outcome": "success", "ascending": True},
    ]
    queries, k, misses_in_a_row = [], 0, 0
    # A kind yields None when the data has nothing for it (e.g. no IPv6 at all); stop only
    # when a whole round of kinds yields nothing.
    while len(queries) < count and misses_in_a_row < len(kinds):
        q = kinds[k % len(kinds)]()
        k += 1
        if q and all(v not in (None, [], "") for v in q.values()):
            queries.append(q)
            misses_in_a_row = 0
        else:
            misses_in_a_row += 1
    return queries


def run_search(auditctl, addr, extra, flags):
    argv = [auditctl, "--addr", addr, *extra, "search", *flags, "--limit", "10000", "--all", "--format", "ids"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"auditctl exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def check(ev, q, got):
    """None if `got` is right for `q`, else why not."""
    want = expected_ids(ev, q)
    want_ids = [ev.ids[i] for i in want]
    want_set, got_set = set(want_ids), set(got)
    if want_set != got_set or len(got) != len(got_set):
        missing = [x for x in want_ids if x not in got_set][:5]
        unexpected = [x for x in got if x not in want_set][:5]
        dupes = sorted(x for x, c in Counter(got).items() if c > 1)[:5]
        msg = f"expected {len(want_ids)} got {len(got)}, missing {missing}, unexpected {unexpected}"
        return msg + (f", duplicated {dupes}" if dupes else ""), len(got)
    time_of = {ev.ids[i]: ev.times[i] for i in want}
    got_times = [time_of[x] for x in got]
    want_times = [ev.times[i] for i in want]
    if got_times != want_times:
        k = next(k for k, (a, b) in enumerate(zip(want_times, got_times)) if a != b)
        return (f"expected {len(want_ids)} got {len(got)}, same ids but wrong order at position {k}: "
                f"expected time {want_times[k] / 1e6} got {got_times[k] / 1e6} ({got[k]})"), len(got)
    return None, len(got)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", required=True, help="the NDJSON file the daemon was loaded with")
    p.add_argument("--auditctl", required=True, help="path of the auditctl binary")
    p.add_argument("--addr", default="http://127.0.0.1:50051")
    p.add_argument("--queries", type=int, default=40)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--auditctl-arg", action="append", default=[], metavar="ARG",
                   help="extra global auditctl argument, before `search` (repeatable)")
    a = p.parse_args()

    ev = Events(a.events)
    if ev.n == 0:
        sys.exit(f"{a.events}: no events")
    print(f"loaded {ev.n} events from {a.events}", file=sys.stderr)
    passed = failed = 0
    for q in build_queries(ev, a.queries, a.seed):
        flags = search_flags(q)
        desc = shlex.join(flags)
        try:
            problem, hits = check(ev, q, run_search(a.auditctl, a.addr, a.auditctl_arg, flags))
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
            problem, hits = str(err), 0
        if problem:
            failed += 1
            print(f"FAIL {desc}: {problem}", flush=True)
        else:
            passed += 1
            print(f"ok   {hits} hits  {desc}", flush=True)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
