#!/usr/bin/env bash
# Real CUDA build of sdxl-worker (features cuda,cudnn) on a machine without a GPU or a CUDA install.
#
# Installs NVIDIA's CUDA 13.0 toolkit wheels from PyPI into .cuda/toolkit (git-ignored, ~1.2 GB),
# adds the two link fix-ups the wheels lack (unversioned lib*.so symlinks; a libcuda.so stub built
# from the wheel's own cuda.h, since libcuda is part of the driver) plus libcudnn.so.9 taken from
# the cuDNN wheel, then runs the same cargo build as the Dockerfile (scripts/check-docker-features.sh
# keeps the two in step). Kernels are compiled for real (sm_90a), so kernel-compile and link errors
# show up here. The binary cannot run on this machine (no GPU; the stub libcuda must never be on a
# runtime library path). flash-attn is not built: its kernels take ~3.5 h on 2 cores.
#
# Usage: scripts/check-cuda.sh [--install-only]
#   --install-only   install and fix up the toolkit, print the environment, skip the cargo build.
# The build takes about 15 min from scratch on 2 cores (target dir: target/cuda-build).
#
# Versions are pinned: cudarc 0.19.10 refuses toolkits above 13.4, and PTX from an nvcc newer than
# the driver does not load, so 13.0.x it is.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
CUDA_TOOLKIT_VERSION=13.0.2
CUDNN_WHEEL_VERSION=9.21.1.3

install_only=false
case "${1:-}" in
  --install-only) install_only=true ;;
  "") ;;
  *) echo "usage: $0 [--install-only]" >&2; exit 2 ;;
esac

prefix=$ROOT/.cuda/toolkit
C=$prefix/nvidia/cu13
stamp=$prefix/.installed
want="cuda-toolkit=$CUDA_TOOLKIT_VERSION cudnn=$CUDNN_WHEEL_VERSION"

if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "check-cuda: installing CUDA $CUDA_TOOLKIT_VERSION wheels into $prefix"
  rm -rf "$prefix"
  mkdir -p "$prefix"
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  "$PYTHON" -m pip install -q --no-warn-script-location --root-user-action=ignore --target "$prefix" \
    "cuda-toolkit[nvcc,crt,nvvm,cudart,cccl,cublas,curand,nvrtc]==$CUDA_TOOLKIT_VERSION"

  # Fix-up 1: `-lfoo` needs an unversioned libfoo.so; the wheels ship only the sonames.
  for l in cudart cublas cublasLt nvrtc; do ln -sf "lib$l.so.13" "$C/lib/lib$l.so"; done
  ln -sf libcurand.so.10 "$C/lib/libcurand.so"

  # Fix-up 2: a link-time stub of the driver library, one empty function per cu* symbol that
  # cuda.h declares. Lives in lib/stubs, which cudarc searches at link time only.
  mkdir -p "$C/lib/stubs"
  gcc -E -P -I"$C/include" -D__CUDA_API_VERSION_INTERNAL "$C/include/cuda.h" \
    | grep -oP '\bcu[A-Z]\w*(?=\s*\()' | sort -u | sed 's/.*/void &(void){}/' > "$scratch/cuda_stub.c"
  gcc -shared -fPIC -w -Wl,-soname,libcuda.so.1 -o "$C/lib/stubs/libcuda.so" "$scratch/cuda_stub.c"

  # cuDNN: only libcudnn.so.9 (the dispatcher, 129 KB) is needed to link; take it from the wheel.
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$scratch/wheel" "nvidia-cudnn-cu13==$CUDNN_WHEEL_VERSION"
  unzip -q -j "$scratch"/wheel/nvidia_cudnn_cu13-*.whl nvidia/cudnn/lib/libcudnn.so.9 -d "$C/lib"
  ln -sf libcudnn.so.9 "$C/lib/libcudnn.so"

  echo "$want" > "$stamp"
fi

for f in bin/nvcc lib/libcudart.so lib/libcublas.so lib/libcublasLt.so lib/libcurand.so lib/libnvrtc.so \
         lib/libcudnn.so lib/stubs/libcuda.so include/cuda.h; do
  [ -e "$C/$f" ] || { echo "check-cuda: missing $C/$f (delete .cuda/toolkit and rerun)" >&2; exit 1; }
done

# Only the real toolkit: no fake nvcc, no version override, no other CUDA roots (cudarc stops
# searching its defaults when any of CUDA_PATH/CUDA_ROOT/... is set).
unset NVCC CUDARC_CUDA_VERSION CUDA_PATH CUDA_ROOT CUDA_TOOLKIT_ROOT_DIR CUDNN_LIB
export CUDA_HOME=$C
export PATH=$C/bin:$PATH
export NVCC=$C/bin/nvcc
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-2}
export CARGO_TARGET_DIR=$ROOT/target/cuda-build

nvcc --version | tail -n 2
# Smoke test of the toolchain (nvcc, cicc, ptxas): one tiny kernel to PTX and to SASS for the
# chosen architecture (cudaforge asks for the `a` variant from 90 up, as here).
smoke=$(mktemp -d)
arch=$CUDA_COMPUTE_CAP; [ "$arch" -ge 90 ] && arch=${arch}a
printf '__global__ void k(float *x) { x[threadIdx.x] *= 2.0f; }\n' > "$smoke/k.cu"
nvcc --ptx -arch="compute_$arch" -o "$smoke/k.ptx" "$smoke/k.cu"
nvcc -c -gencode="arch=compute_$arch,code=sm_$arch" -o "$smoke/k.o" "$smoke/k.cu"
grep -q '^\.entry\|\.visible \.entry' "$smoke/k.ptx" || { echo "check-cuda: nvcc produced no kernel" >&2; exit 1; }
rm -rf "$smoke"
echo "check-cuda: nvcc smoke test passed (compute_$arch PTX and sm_$arch object)"
echo "check-cuda: CUDA_HOME=$CUDA_HOME CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CUDAFORGE_THREADS=$CUDAFORGE_THREADS"
if [ "$install_only" = true ]; then
  echo "check-cuda: toolkit ready; build skipped (--install-only)"
  exit 0
fi

# Keep this command in step with the Dockerfile (checked by scripts/check-docker-features.sh).
cargo build --release --locked -p sdxl-worker --features "cuda,cudnn"

bin=$CARGO_TARGET_DIR/release/sdxl-worker
echo "check-cuda: built $bin; the CUDA libraries it loads at run time (the Docker runtime image must have them):"
readelf -d "$bin" | grep -E 'NEEDED.*(cuda|cublas|curand|nvrtc|cudnn)' || true
echo "check-cuda: OK"
