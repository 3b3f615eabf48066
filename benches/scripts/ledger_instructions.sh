#!/usr/bin/env bash
# User-space instructions per ledger row of the writer's insert (`ledger::insert`: binding,
# SQLite's inserts, rollup sums, the commit), counted by callgrind over the criterion bench's
# 2,048-row commits (`benches/benches/ledger.rs`, GROUP: bench_shape or teams). Deterministic
# where the writer's CPU time on a shared VM is not; prints the total, the rows and the
# largest parts (inclusive) per row.
#   usage: [KEEP=1] benches/scripts/ledger_instructions.sh [bench_shape|teams]   (KEEP=1 keeps the callgrind file)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
group=${1:-bench_shape}
bench=$(cd "$root" && cargo bench -p tollgate-benches --bench ledger --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "ledger" and m.get("executable"):
        print(m["executable"])')
out=$(mktemp)
[ -n "${KEEP:-}" ] && echo "callgrind file: $out" || trap 'rm -f "$out"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$out" --toggle-collect='tollgate::ledger::insert' \
  "$bench" --bench --profile-time 3 "ledger_commit_2048/$group" >/dev/null 2>&1
total=$(awk '/^(summary|totals):/ {print $2; exit}' "$out")
commits=$(callgrind_annotate --tree=calling --auto=no "$out" 2>/dev/null |
  grep -oE 'Transaction::commit \(([0-9,]+)x\)' | head -1 | grep -oE '[0-9,]+x' | tr -d ',x')
rows=$((commits * 2048))
echo "ledger insert: $((total / rows)) instructions per row ($rows rows in $commits commits)"
callgrind_annotate --inclusive=yes --auto=no "$out" 2>/dev/null |
  grep -E '(sqlite3_step|sqlite3BtreeInsert|sqlite3_bind_int64|sqlite3_bind_text64|sqlite3_clear_bindings|vdbeUnbind[^ ]*|Pending::add|Pending::write|ledger::distinct|sqlite3_prepare_v2|Transaction::commit) \[' |
  awk -v n="$rows" '{c=$1; gsub(",", "", c); f=$0; sub(/ \[.*/, "", f); sub(/.*:/, "", f); printf "  %7.0f  %s\n", c / n, f}'
