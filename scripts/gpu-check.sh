#!/usr/bin/env bash
# One-command speed check on a GPU machine (issue 17): writes the synthetic full-size SDXL
# checkpoint once (benches' load_fullsize writer, 6.9 GB in $SDXL_BENCH_DIR, default
# /tmp/sdxl-bench), then prints device-synchronised timings from benches/src/bin/gpu_check.rs —
# checkpoint to VRAM, text encode, UNet step 1024² batch 2 with and without flash attention,
# VAE decode 1024², a 30-step 1024² image, a nine-LoRA switch — plus the VRAM high-water mark
# (nvidia-smi, sampled every 100 ms) and the cold start of the worker binary (process start →
# first image written, `sdxl-worker render`).
#
# Usage: scripts/gpu-check.sh [--device cuda|cuda:N|cpu] [--dtype f16|bf16|f32] [--small]
#                             [--features LIST] [--cleanup]
#   --small     tiny fixture model, 64² images, 4 steps, dev profile: runs on a CPU in CI
#   --features  cargo features of the CUDA build (default cuda,cudnn,flash-attn on CUDA)
#   --cleanup   delete the synthetic checkpoint and LoRAs afterwards
# Env: SDXL_WORKER_BIN (a built sdxl-worker; default: built here with the same features),
#      SDXL_BENCH_DIR, CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda dtype="" small=0 features="" cleanup=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --dtype) dtype=$2; shift 2 ;;
    --small) small=1; shift ;;
    --features) features=$2; shift 2 ;;
    --cleanup) cleanup=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$device" in
  cpu) : "${dtype:=f32}"; features=${features:-} ;;
  *) : "${dtype:=f16}"; features=${features:-cuda,cudnn,flash-attn} ;;
esac
if [ "$small" = 1 ]; then profile=dev; else profile=release; fi
target=${CARGO_TARGET_DIR:-target}
bindir=$target/$([ "$profile" = dev ] && echo debug || echo release)
feat_args=()
[ -n "$features" ] && feat_args=(--features "$features")
worker_feats=()
[ -n "$features" ] && worker_feats=(--features "$(sed -E 's/(^|,)/\1sdxl-worker\//g' <<<"$features")")

scratch=$(mktemp -d)
poller=""
cleanup_all() {
  [ -n "$poller" ] && kill "$poller" 2>/dev/null || true
  rm -rf "$scratch"
}
trap cleanup_all EXIT

echo "== gpu-check: device $device, dtype $dtype, $([ "$small" = 1 ] && echo 'small (tiny model)' || echo 'full size'), features '${features}' =="
t0=$(date +%s.%N)
cargo build --locked --profile "$profile" -p sdxl-benches --bin gpu_check "${feat_args[@]}"
worker=${SDXL_WORKER_BIN:-}
if [ -z "$worker" ]; then
  cargo build --locked --profile "$profile" -p sdxl-worker --bin sdxl-worker "${worker_feats[@]}"
  worker=$bindir/sdxl-worker
fi
echo "build: $(awk "BEGIN{printf \"%.0f\", $(date +%s.%N) - $t0}") s"

# VRAM high-water: nvidia-smi polled in the background for the whole run.
if [ "$device" != cpu ] && command -v nvidia-smi >/dev/null; then
  gpu=${device#cuda}; gpu=${gpu#:}; gpu=${gpu:-0}
  nvidia-smi -i "$gpu" --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$scratch/vram.log" 2>/dev/null &
  poller=$!
fi

bench_dir=${SDXL_BENCH_DIR:-/tmp/sdxl-bench}
args=(--device "$device" --dtype "$dtype")
if [ "$small" = 1 ]; then
  args+=(--small --dir "$scratch")
else
  args+=(--dir "$bench_dir")
fi
"$bindir/gpu_check" "${args[@]}"

# Cold start: a fresh process renders one image (load + encode + denoise + decode + PNG).
if [ "$small" = 1 ]; then
  render=(--checkpoint tests/fixtures/tiny-sdxl-single-file.safetensors --config tests/fixtures/tiny-sdxl
          --width 64 --height 64 --steps 4)
else
  render=(--checkpoint "$bench_dir/sdxl-fullsize-synthetic-f16.safetensors" --width 1024 --height 1024 --steps 30)
fi
t1=$(date +%s.%N)
"$worker" render "${render[@]}" --device "$device" --dtype "$dtype" --sampler Euler \
  --prompt "a lighthouse at dusk" --out "$scratch/cold.png" >"$scratch/render.log" 2>&1 \
  || { cat "$scratch/render.log" >&2; exit 1; }
t2=$(date +%s.%N)
[ -s "$scratch/cold.png" ] || { echo "gpu-check: render wrote no image" >&2; exit 1; }
echo "cold start (process start -> first image written, sdxl-worker render): $(awk "BEGIN{printf \"%.2f\", $t2 - $t1}") s"

if [ -n "$poller" ]; then
  kill "$poller" 2>/dev/null || true
  poller=""
  echo "VRAM high-water (nvidia-smi, 100 ms samples): $(sort -n "$scratch/vram.log" | tail -n1) MiB"
fi
if [ "$cleanup" = 1 ] && [ "$small" = 0 ]; then
  rm -rf "$bench_dir/sdxl-fullsize-synthetic-f16.safetensors" "$bench_dir/gpu-check-loras"
  echo "removed the synthetic checkpoint and LoRAs from $bench_dir"
elif [ "$small" = 0 ]; then
  echo "note: $bench_dir holds the 6.9 GB synthetic checkpoint (delete it or pass --cleanup)"
fi
echo "== gpu-check: OK =="
