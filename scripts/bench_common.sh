# Sourced by the bench scripts: release binaries and the NDJSON workload.

AUDITD=target/release/auditd
AUDITCTL=target/release/auditctl

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
