# Sourced by the bench scripts: release binaries and the NDJSON workload.

# Overridable, to measure another build (e.g. the one before a change) in
# the same run set.
AUDITD=${AUDITD:-target/release/auditd}
AUDITCTL=${AUDITCTL:-target/release/auditctl}

# Writes $COUNT events to $1 unless it is already there: with
# ../shared/workload/gen_events.py when present (the workload the issues
# name), else `auditctl gen` (the same shape and skew, ported to Rust; not
# byte-identical).
ensure_ndjson() {
    local file=$1
    if [ -s "$file" ]; then return; fi
    if [ -f ../shared/workload/gen_events.py ]; then
        python3 ../shared/workload/gen_events.py --count "$COUNT" > "$file"
    else
        "$AUDITCTL" gen --count "$COUNT" > "$file"
    fi
}

# Waits until the index under $1 has stopped changing size (merges done,
# the idle partition compacted, merged-away files deleted): three equal
# readings of `du -sb`, five seconds apart (compaction starts after 10 s
# without events), or 180 s at most. Prints the seconds it waited.
wait_settled() {
    local dir=$1 last=-1 same=0 now waited=0
    while [ "$same" -lt 3 ] && [ "$waited" -lt 180 ]; do
        sleep 5
        waited=$((waited + 5))
        now=$(du -sb "$dir" | cut -f1)
        if [ "$now" = "$last" ]; then same=$((same + 1)); else same=0; fi
        last=$now
    done
    echo "$waited"
}
