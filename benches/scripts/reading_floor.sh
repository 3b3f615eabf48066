#!/usr/bin/env bash
# Instructions per call of Tollgate's request inspection and response usage read, next to a
# validating pass over the same bytes that keeps nothing (sonic-rs and serde_json `IgnoredAny`,
# simd-json's tape, UTF-8 alone), counted by callgrind (`benches/examples/reading_floor.rs`):
# how much of the reading is the validation itself. Needs valgrind.
#   usage: benches/scripts/reading_floor.sh [ITERATIONS]   (default 2000)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
n=${1:-2000}
(cd "$root" && cargo build --quiet --release -p tollgate-benches --example reading_floor)
bin=$root/target/release/examples/reading_floor
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 |
    awk '/Collected/ {print $4}'
}
base=$(count none "$n")
printf '%-22s %s\n' mode "instructions per call"
for mode in inspect request_sonic request_serde_json request_simd_json request_utf8 \
  usage response_sonic response_serde_json response_simd_json; do
  printf '%-22s %d\n' "$mode" $(( ($(count "$mode" "$n") - base) / n ))
done
