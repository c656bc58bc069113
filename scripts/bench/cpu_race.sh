#!/usr/bin/env bash
# CPU race of issue 17 (benches/README.md "CPU race vs diffusers"): `sdxl-worker render` against
# diffusers `StableDiffusionXLPipeline.from_single_file` + k-diffusion (cpu_race.py), full-size
# checkpoint, f32, 2 threads each, one fresh process per image, in alternating pairs
# (ours, theirs, ours, theirs, ...). Never runs both at once (each needs ~10.5 GB resident).
#
#   scripts/bench/cpu_race.sh [CASE ...]        CASE = a (256², 4 steps) | b (64², 2 steps); default: a b
#
# Environment (defaults in brackets):
#   CKPT     full-size single-file checkpoint [/work/bigdata-race/sdxl-fullsize-random.safetensors]
#            (write it with scripts/fixtures/reference/make_fullsize_checkpoint.py checkpoint --out ...
#            or `cargo run --release -p sdxl-benches --bin load_fullsize`)
#   CONFIG   diffusers SDXL base config dir, offline [/work/shared/reference/data/sdxl-base-config]
#   WORKER   release sdxl-worker binary [${CARGO_TARGET_DIR:-target}/release/sdxl-worker]
#   PY       Python with torch + diffusers + k-diffusion + accelerate [/work/refenv/bin/python]
#   PAIRS    pairs per case [3]
#   PAIR_START  number of the first pair [1] (to continue a results.tsv in a later invocation)
#   THREADS  threads per side [2]
#   OUT      output dir for PNGs, logs and results.tsv [/work/bigdata-race/race]
#   SIDES    the runs of one pair, in order [ours theirs]; "base" runs $WORKER_BASE (an older build
#            of the worker, for before/after timings in the same run) like "ours"
#   EXTRA    extra flags for the worker only, e.g. "--dtype f16" (the PNG then differs)
#   PERF     if set, wrap OUR runs in `perf record -g -F 199 -o $OUT/<run>.perf.data` (only pair
#            $PERF_PAIR when that is set; perf costs ~1 % at 199 Hz, against ours)
#
# One line per run goes to $OUT/results.tsv and stdout:
#   case pair side wall_png_s wall_exit_s load_ms encode_ms denoise_ms decode_ms peak_rss_kb
# wall_png_s = process start → PNG written (PNG mtime), wall_exit_s = process start → exit;
# phases come from each side's own timers (the worker's "load .. ms, encode .." line, the
# script's PHASES json). At the end: per pair ours/theirs ratios and the PSNR of ours vs theirs.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CKPT=${CKPT:-/work/bigdata-race/sdxl-fullsize-random.safetensors}
CONFIG=${CONFIG:-/work/shared/reference/data/sdxl-base-config}
WORKER=${WORKER:-${CARGO_TARGET_DIR:-$REPO/target}/release/sdxl-worker}
PY=${PY:-/work/refenv/bin/python}
PAIRS=${PAIRS:-3}
PAIR_START=${PAIR_START:-1}
THREADS=${THREADS:-2}
OUT=${OUT:-/work/bigdata-race/race}
EXTRA=${EXTRA:-}
SIDES=${SIDES:-ours theirs}
WORKER_BASE=${WORKER_BASE:-}
CASES=${*:-a b}
PROMPT="a photo of an astronaut riding a horse on mars, highly detailed"
NEGATIVE="blurry, low quality, watermark"
SEED=42
CFG=7

for f in "$CKPT" "$WORKER" "$PY"; do
  [ -e "$f" ] || { echo "missing: $f" >&2; exit 2; }
done
mkdir -p "$OUT"
RESULTS="$OUT/results.tsv"
[ -f "$RESULTS" ] || printf 'case\tpair\tside\twall_png_s\twall_exit_s\tload_ms\tencode_ms\tdenoise_ms\tdecode_ms\tpeak_rss_kb\n' > "$RESULTS"

# Same thread count on both sides: candle/gemm read RAYON_NUM_THREADS, torch OMP/MKL + set_num_threads.
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DIFFUSERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false

case_args() {  # -> width height steps
  case "$1" in
    a) echo "256 256 4" ;;
    b) echo "64 64 2" ;;
    *) echo "unknown case $1 (a or b)" >&2; exit 2 ;;
  esac
}

now() { date +%s.%N; }

run_one() {  # case pair side
  local c=$1 p=$2 side=$3 w h steps png log t0 t1 tpng rss phases
  read -r w h steps < <(case_args "$c")
  png="$OUT/$c-$p-$side.png"
  log="$OUT/$c-$p-$side.log"
  rm -f "$png"
  sync
  t0=$(now)
  if [ "$side" = ours ] || [ "$side" = base ]; then
    local bin=$WORKER
    [ "$side" = base ] && bin=$WORKER_BASE
    local cmd=("$bin" render --checkpoint "$CKPT" --config "$CONFIG" --device cpu
      --prompt "$PROMPT" --negative-prompt "$NEGATIVE" --sampler Euler --steps "$steps"
      --cfg-scale "$CFG" --seed "$SEED" --width "$w" --height "$h" --out "$png")
    # shellcheck disable=SC2206
    [ -n "$EXTRA" ] && cmd+=($EXTRA)
    if [ -n "${PERF:-}" ] && [ "$p" = "${PERF_PAIR:-$p}" ]; then
      cmd=(perf record -g -F 199 -o "$OUT/$c-$p-$side.perf.data" -- "${cmd[@]}")
    fi
    /usr/bin/time -f 'PEAK_RSS_KB %M' "${cmd[@]}" > "$log" 2>&1
  else
    /usr/bin/time -f 'PEAK_RSS_KB %M' "$PY" "$HERE/cpu_race.py" --checkpoint "$CKPT" --config "$CONFIG" \
      --prompt "$PROMPT" --negative-prompt "$NEGATIVE" --sampler Euler --steps "$steps" \
      --cfg-scale "$CFG" --seed "$SEED" --width "$w" --height "$h" --threads "$THREADS" \
      --out "$png" > "$log" 2>&1
  fi
  t1=$(now)
  [ -f "$png" ] || { echo "no PNG from $side (see $log)" >&2; tail -5 "$log" >&2; exit 1; }
  tpng=$(stat -c %.9Y "$png")
  rss=$(awk '/^PEAK_RSS_KB/ {print $2}' "$log" | tail -1)
  if [ "$side" != theirs ]; then
    # "load 1 ms, encode 2 ms, denoise 3 ms, decode 4 ms"
    phases=$(sed -n 's/^load \([0-9]*\) ms, encode \([0-9]*\) ms, denoise \([0-9]*\) ms, decode \([0-9]*\) ms$/\1\t\2\t\3\t\4/p' "$log" | tail -1)
  else
    phases=$("$PY" -c 'import json,sys
for l in open(sys.argv[1]):
    if l.startswith("PHASES "):
        d = json.loads(l[7:])
        print("\t".join(str(d[k]) for k in ("load_ms", "encode_ms", "denoise_ms", "decode_ms")))' "$log")
  fi
  local line
  line=$(printf '%s\t%s\t%s\t%.2f\t%.2f\t%s\t%s' "$c" "$p" "$side" \
    "$(echo "$tpng - $t0" | bc -l)" "$(echo "$t1 - $t0" | bc -l)" "$phases" "$rss")
  echo "$line" | tee -a "$RESULTS"
}

echo "# $(date -u +%FT%TZ) cases: $CASES, pairs: $PAIRS, threads: $THREADS, worker: $WORKER $EXTRA, load: $(cut -d' ' -f1-3 /proc/loadavg)"
for c in $CASES; do
  for p in $(seq "$PAIR_START" $((PAIR_START + PAIRS - 1))); do
    for side in $SIDES; do
      run_one "$c" "$p" "$side"
    done
  done
done

# Per pair: ours/theirs of the start→PNG wall time; PSNR of ours vs theirs (same work, same seed).
"$PY" - "$RESULTS" "$OUT" $CASES <<'PYEOF'
import csv, os, sys
import numpy as np
from PIL import Image
res, out, cases = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = list(csv.DictReader(open(res), delimiter="\t"))
for c in cases:
    pairs = {}
    for r in rows:
        if r["case"] == c:
            pairs.setdefault(r["pair"], {})[r["side"]] = r   # the last run of each (pair, side) wins
    ratios = []
    for p, d in sorted(pairs.items()):
        if "ours" in d and "theirs" in d:
            o, t = float(d["ours"]["wall_png_s"]), float(d["theirs"]["wall_png_s"])
            ratios.append(o / t)
            a = np.asarray(Image.open(f"{out}/{c}-{p}-ours.png").convert("RGB"), dtype=np.float64)
            b = np.asarray(Image.open(f"{out}/{c}-{p}-theirs.png").convert("RGB"), dtype=np.float64)
            mse = ((a - b) ** 2).mean()
            psnr = float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)
            print(f"case {c} pair {p}: ours {o:.1f} s / theirs {t:.1f} s = {o / t:.2f}x   PSNR ours vs theirs {psnr:.1f} dB")
        if "base" in d and "theirs" in d:
            bs = float(d["base"]["wall_png_s"])
            print(f"case {c} pair {p}: base {bs:.1f} s / theirs {float(d['theirs']['wall_png_s']):.1f} s = "
                  f"{bs / float(d['theirs']['wall_png_s']):.2f}x")
    if ratios:
        print(f"case {c}: ratio min {min(ratios):.2f} median {sorted(ratios)[len(ratios) // 2]:.2f} max {max(ratios):.2f}")
PYEOF
