#!/usr/bin/env bash
# Fast compile check of the CUDA code paths (`cuda`, `cudnn`, `flash-attn`) without CUDA.
#
# WHAT IT PROVES: the Rust code behind `#[cfg(feature = "cuda")]` (ours and candle's) type-checks
# with every CUDA feature on. WHAT IT DOES NOT PROVE: nothing about kernels or linking. The nvcc
# used here is a stand-in (scripts/fake-nvcc/nvcc) that compiles nothing, so a kernel that does not
# compile, a missing CUDA library or a link error goes unnoticed. `scripts/check-cuda.sh` does the
# real build with NVIDIA's toolkit (cuda + cudnn; flash-attn is too slow to build on 2 cores).
#
# Needs: cargo, python3 with pip (downloads the 4 MB `nvidia-cutlass==3.5.0.0` wheel from PyPI
# once), git, unzip. About 5 minutes on 2 idle cores the first time, 1-2 minutes after that.
# It uses its own target dir (target/cuda-check) so the normal build cache stays valid.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}

# candle-flash-attn's build.rs (through cudaforge) git-clones CUTLASS at this commit unless
# cudaforge's cache already holds it. The PyPI wheel nvidia-cutlass 3.5.0.0 ships the same
# headers (byte-identical to the tag v3.5.0 = this commit), so we build the cache from it and
# write the commit id into .git/HEAD (`git rev-parse HEAD` is all cudaforge asks).
CUTLASS_COMMIT=7d49e6c7e2f8896c47f586706e67e1fb215529dc
CUTLASS_WHEEL_VERSION=3.5.0.0
export CUDAFORGE_HOME=$ROOT/.cuda/cudaforge
cutlass_dir=$CUDAFORGE_HOME/git/checkouts/cutlass-${CUTLASS_COMMIT:0:16}

if [ ! -f "$cutlass_dir/include/cutlass/cutlass.h" ] || [ "$(cat "$cutlass_dir/.git/HEAD" 2>/dev/null)" != "$CUTLASS_COMMIT" ]; then
  echo "check-cuda-fast: building the CUTLASS cache from PyPI nvidia-cutlass==$CUTLASS_WHEEL_VERSION"
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$scratch/wheel" "nvidia-cutlass==$CUTLASS_WHEEL_VERSION"
  unzip -q "$scratch"/wheel/nvidia_cutlass-"$CUTLASS_WHEEL_VERSION"-*.whl \
    'cutlass_library/source/include/*' 'cutlass_library/source/tools/util/include/*' -d "$scratch/unz"
  rm -rf "$cutlass_dir"
  mkdir -p "$cutlass_dir/tools/util"
  mv "$scratch/unz/cutlass_library/source/include" "$cutlass_dir/include"
  mv "$scratch/unz/cutlass_library/source/tools/util/include" "$cutlass_dir/tools/util/include"
  git init -q "$cutlass_dir"
  echo "$CUTLASS_COMMIT" > "$cutlass_dir/.git/HEAD"
fi

# The stand-in nvcc, found by cudaforge through $NVCC; cudarc skips its `nvcc --version` probe
# when CUDARC_CUDA_VERSION is set and then uses that version's bindings. No CUDA_HOME / CUDA_PATH:
# nothing is linked.
export NVCC=$ROOT/scripts/fake-nvcc/nvcc
export PATH=$ROOT/scripts/fake-nvcc:$PATH
export CUDA_COMPUTE_CAP=90
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-2}
unset CUDA_HOME CUDA_PATH CUDA_ROOT CUDA_TOOLKIT_ROOT_DIR CUDNN_LIB
export CARGO_TARGET_DIR=$ROOT/target/cuda-check

# Check against the cudarc bindings of both CUDA versions we build with: the Docker image's
# (ARG CUDA_VERSION in the Dockerfile, e.g. 12.4.1 -> 12040) and scripts/check-cuda.sh's 13.0
# (13000). CUDARC_CUDA_VERSION=NNNNN in the environment checks just that one.
docker_cuda=$(grep -oE '^ARG CUDA_VERSION=[0-9]+\.[0-9]+' Dockerfile | cut -d= -f2)
[ -n "$docker_cuda" ] || { echo "check-cuda-fast: no ARG CUDA_VERSION in Dockerfile" >&2; exit 1; }
docker_cudarc="${docker_cuda%%.*}0${docker_cuda#*.}0"
versions=${CUDARC_CUDA_VERSION:-"$docker_cudarc 13000"}

# In a virtual workspace the features are named per package; sdxl-worker's features chain to
# sdxl-pipeline's and from there to candle's.
for v in $versions; do
  echo "check-cuda-fast: cargo check with cuda,cudnn,flash-attn against CUDA bindings $v"
  CUDARC_CUDA_VERSION=$v cargo check --workspace --all-targets --locked \
    --features sdxl-worker/cuda,sdxl-worker/cudnn,sdxl-worker/flash-attn,sdxl-benches/cudnn,sdxl-benches/flash-attn
done
echo "check-cuda-fast: OK for CUDA $versions (type-check only; kernels and linking NOT checked)"
