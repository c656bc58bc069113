#!/usr/bin/env bash
# Checks that the Dockerfile builds sdxl-worker the way scripts/check-cuda.sh does: same package,
# release profile, same cargo features (the Dockerfile adds `flash-attn` behind its FLASH_ATTN
# build arg, which must default to true, and nothing else) and the same default CUDA_COMPUTE_CAP; and that every feature exists
# in the package's Cargo.toml. Each file must hold exactly one `cargo build` command, on one line.
#
# Usage: scripts/check-docker-features.sh [DOCKERFILE [CHECK_CUDA_SCRIPT]]
#        scripts/check-docker-features.sh --self-test   # shows that each kind of mismatch fails
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --self-test ]; then
  t=$(mktemp -d)
  trap 'rm -rf "$t"' EXIT
  # name | file(s) to mutate (d = Dockerfile, c = check-cuda.sh, b = both) | sed expression
  # shellcheck disable=SC2016  # the sed expressions are literal on purpose
  cases=(
    'feature missing in Dockerfile|d|s/"cuda,cudnn\${extra}"/"cuda${extra}"/'
    'extra feature in check-cuda.sh|c|s/--features "cuda,cudnn"/--features "cuda,cudnn,flash-attn"/'
    'other package|d|s/-p sdxl-worker/-p sdxl-pipeline/'
    'debug build|d|s/cargo build --release/cargo build/'
    'undeclared feature on both sides|b|s/"cuda,cudnn/"cuda,cudnn,cudaa/'
    'FLASH_ATTN switch changed|d|s/extra=",flash-attn"/extra=",other"/'
    'compute capability default|d|s/^ARG CUDA_COMPUTE_CAP=90/ARG CUDA_COMPUTE_CAP=89/'
    'flash attention off by default|d|s/^ARG FLASH_ATTN=true/ARG FLASH_ATTN=false/'
  )
  "$0" Dockerfile scripts/check-cuda.sh >/dev/null || { echo "self-test: the real files do not pass" >&2; exit 1; }
  for c in "${cases[@]}"; do
    IFS='|' read -r name which expr <<<"$c"
    cp Dockerfile "$t/Dockerfile"; cp scripts/check-cuda.sh "$t/check-cuda.sh"
    [ "$which" = c ] || sed -i "$expr" "$t/Dockerfile"
    [ "$which" = d ] || sed -i "$expr" "$t/check-cuda.sh"
    if cmp -s "$t/Dockerfile" Dockerfile && cmp -s "$t/check-cuda.sh" scripts/check-cuda.sh; then
      echo "self-test: case '$name' changed nothing" >&2; exit 1
    fi
    if "$0" "$t/Dockerfile" "$t/check-cuda.sh" >/dev/null 2>&1; then
      echo "self-test: case '$name' was not detected" >&2; exit 1
    fi
    echo "self-test: detected: $name"
  done
  echo "check-docker-features: self-test OK"
  exit 0
fi
dockerfile=${1:-Dockerfile}
check_script=${2:-scripts/check-cuda.sh}
fail() { echo "check-docker-features: $*" >&2; exit 1; }

# The single `cargo build ...` command of a file, up to the next && ; | or end of line.
build_cmd() {
  local cmds
  cmds=$(grep -v '^[[:space:]]*#' "$1" | grep -oE 'cargo build[^&;|]*' || true)
  [ -n "$cmds" ] || fail "$1: no cargo build command found"
  [ "$(printf '%s\n' "$cmds" | wc -l)" -eq 1 ] || fail "$1: more than one cargo build command: $cmds"
  printf '%s\n' "$cmds" | sed 's/[[:space:]\\]*$//'
}
# Value of an option (`-p X`, `--features "a,b"`) in a command; quotes removed.
opt() { grep -oE -- "$2[ =]+(\"[^\"]*\"|[^ ]+)" <<<"$1" | head -n1 | sed -E "s/^$2[ =]+//; s/\"//g" || true; }
# A feature list as sorted lines.
feature_set() { tr ',' '\n' <<<"$1" | sed '/^$/d' | sort -u; }

docker_cmd=$(build_cmd "$dockerfile")
check_cmd=$(build_cmd "$check_script")
echo "Dockerfile:     $docker_cmd"
echo "check-cuda.sh:  $check_cmd"

docker_pkg=$(opt "$docker_cmd" -p); check_pkg=$(opt "$check_cmd" -p)
[ -n "$docker_pkg" ] || fail "$dockerfile: the cargo build names no package (-p)"
[ "$docker_pkg" = "$check_pkg" ] || fail "package differs: Dockerfile -p '$docker_pkg', check-cuda.sh -p '$check_pkg'"
for c in "$docker_cmd" "$check_cmd"; do
  grep -qE -- '--release( |$)' <<<"$c" || fail "not a --release build: $c"
done

# The Dockerfile's optional part: `${extra}`, which its FLASH_ATTN arg sets to ",flash-attn".
docker_features=$(opt "$docker_cmd" --features)
docker_base=$(sed -E 's/\$\{?extra\}?//' <<<"$docker_features")
if [ "$docker_base" != "$docker_features" ]; then
  grep -qE 'extra=",flash-attn"' "$dockerfile" || fail "$dockerfile: \${extra} in the features is not the FLASH_ATTN switch (extra=\",flash-attn\")"
fi
grep -q '\$' <<<"$docker_base" && fail "$dockerfile: features use a variable other than \${extra}: $docker_features"
check_features=$(opt "$check_cmd" --features)
grep -q '\$' <<<"$check_features" && fail "$check_script: features must be literal: $check_features"
if [ "$(feature_set "$docker_base")" != "$(feature_set "$check_features")" ]; then
  fail "features differ: Dockerfile '$docker_base' vs check-cuda.sh '$check_features'"
fi

manifest=crates/$docker_pkg/Cargo.toml
[ -f "$manifest" ] || fail "no $manifest for package $docker_pkg"
declared=$(sed -n '/^\[features\]/,/^\[/p' "$manifest" | grep -oE '^[A-Za-z0-9_-]+[[:space:]]*=' | sed -E 's/[[:space:]]*=$//')
for f in $(feature_set "$docker_base,flash-attn"); do
  grep -qx -- "$f" <<<"$declared" || fail "feature '$f' is not declared in $manifest"
done

# Flash attention is part of the default image (SPEC §11); FLASH_ATTN=false is the opt-out.
[ "$docker_base" != "$docker_features" ] || fail "$dockerfile: the cargo build has no \${extra} (FLASH_ATTN switch)"
flash_default=$(grep -oE '^ARG FLASH_ATTN=[A-Za-z]+' "$dockerfile" | cut -d= -f2 || true)
[ "$flash_default" = true ] || fail "$dockerfile: ARG FLASH_ATTN must default to true (got '$flash_default')"

docker_cap=$(grep -oE '^ARG CUDA_COMPUTE_CAP=[0-9]+' "$dockerfile" | cut -d= -f2 || true)
check_cap=$(grep -oE 'CUDA_COMPUTE_CAP:-[0-9]+' "$check_script" | cut -d- -f2 || true)
[ -n "$docker_cap" ] && [ "$docker_cap" = "$check_cap" ] \
  || fail "default CUDA_COMPUTE_CAP differs: Dockerfile '$docker_cap' vs check-cuda.sh '$check_cap'"

echo "check-docker-features: OK (package $docker_pkg, features $(feature_set "$docker_base" | paste -sd, -) + flash-attn by default, CUDA_COMPUTE_CAP $docker_cap)"
