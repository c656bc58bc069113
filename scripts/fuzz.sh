#!/usr/bin/env bash
# Runs every `cargo fuzz` target (fuzz/fuzz_targets) for SECONDS each (default 600) and prints,
# per target: runs, crashes (files libFuzzer wrote to fuzz/artifacts/<target>/) and peak RSS.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Limits (SPEC §12): an input that allocates more than 1 GB at once or in all (-malloc_limit_mb,
# -rss_limit_mb), or runs for more than 10 s (-timeout), counts as a crash. Not run in CI.
#
# Needs `cargo install cargo-fuzz`. libFuzzer needs nightly compiler flags: with only a stable
# toolchain this sets RUSTC_BOOTSTRAP=1. The sanitizer defaults to none (the targets are safe
# Rust over our parsers; the build is 2× faster); FUZZ_SANITIZER=address turns ASan on.
# The corpora in fuzz/corpus/<target>/ are the seeds kept in the repo; new inputs found during a
# run go to fuzz/target-corpus/<target>/ (not committed), so a run never rewrites the seeds.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${1:-600}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(safetensors_header lora_parser models_toml job_validation png_info)
fi
export RUSTC_BOOTSTRAP=${RUSTC_BOOTSTRAP:-1}
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$PWD/target}
SANITIZER=${FUZZ_SANITIZER:-none}

for t in "${TARGETS[@]}"; do
  cargo fuzz build --release --sanitizer "$SANITIZER" "$t"
done

summary=()
for t in "${TARGETS[@]}"; do
  work=target-corpus/$t
  mkdir -p "$work" "artifacts/$t"
  log=$(mktemp)
  echo "== $t: ${SECONDS_EACH}s"
  set +e
  cargo fuzz run --release --sanitizer "$SANITIZER" "$t" "$work" "corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=1024 -malloc_limit_mb=1024 -timeout=10 \
    -max_len=65536 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  peak=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  crashes=$(find "artifacts/$t" -type f | wc -l)
  tail -5 "$log"
  summary+=("$t: runs=${runs:-?} crashes=$crashes peak_rss_mb=${peak:-?} exit=$rc")
  rm -f "$log"
done
echo
printf '%s\n' "${summary[@]}"
