# syntax=docker/dockerfile:1.7
# sdxl-worker for RunPod serverless: a CUDA devel image compiles the binary, a slim CUDA image
# runs it. See README.md, "Deploy on RunPod", for the build arguments and why CUDA 12.4.
#
#   docker build -t sdxl-worker .                                   # H100 (sm_90), models on the volume
#   docker build --build-arg CUDA_COMPUTE_CAP=89 -t sdxl-worker .   # RTX 4090 / L40S / L4
#   docker build --build-arg CUDA_COMPUTE_CAP=80 -t sdxl-worker .   # A100 / A30
#   docker build --build-arg FLASH_ATTN=false -t sdxl-worker .      # without flash attention (fast build)
#   docker build --build-arg BAKE_MODELS=true \
#     --secret id=civitai_api_key,env=CIVITAI_API_KEY -t sdxl-worker .   # models inside the image
#
# The cargo build command below must use the same features as scripts/check-cuda.sh
# (checked in CI by scripts/check-docker-features.sh).

# CUDA of both images. The runtime image refuses to start on a driver older than this
# (NVIDIA_REQUIRE_CUDA), and the kernels' PTX needs a driver at least this new.
ARG CUDA_VERSION=12.4.1
ARG UBUNTU_VERSION=22.04
# "true" bakes the models of models.toml into the image (needs the civitai_api_key secret for
# CivitAI URLs); "false" leaves them to the network volume (/runpod-volume/sdxl-models).
ARG BAKE_MODELS=false

############################ build: compile sdxl-worker ############################
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG CUDA_VERSION
# Optional exact cuDNN package version (e.g. 9.21.1.3-1); empty = the newest cuDNN 9 for this CUDA.
# Must be >= 9.21: candle's `cudnn` feature uses cudarc's cuDNN 9.21 bindings.
ARG CUDNN_VERSION=""
# The CUDA packages come with the image (pinned by CUDA_VERSION) and cuDNN by CUDNN_VERSION;
# build tools follow the Ubuntu release.
# hadolint ignore=DL3008
RUN cuda_major=${CUDA_VERSION%%.*} \
 && cudnn_pin=${CUDNN_VERSION:+=${CUDNN_VERSION}} \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential ca-certificates curl git pkg-config \
      "libcudnn9-cuda-${cuda_major}${cudnn_pin}" "libcudnn9-dev-cuda-${cuda_major}${cudnn_pin}" \
 && rm -rf /var/lib/apt/lists/*

ARG RUST_VERSION=1.95.0
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --no-modify-path --profile minimal --default-toolchain "${RUST_VERSION}" \
 && rustc --version

# GPU architecture of the kernels: 90 = H100/H200 (cudaforge makes it sm_90a), 89 = RTX 4090 /
# L40S / L4, 86 = RTX 3090 / A40 / A10, 80 = A100 / A30. One image serves one architecture.
ARG CUDA_COMPUTE_CAP=90
# "true" (default) adds the flash-attn feature: the UNet's attention runs candle-flash-attn's
# kernels in f16/bf16 instead of materialising every score matrix. It needs sm_80 or newer
# (A100, Ada, H100) and costs build time (53 large kernels: about 30 min on 32 cores, hours on
# few; not measured on this project's machines). "false" builds without it (other GPUs, quick builds).
ARG FLASH_ATTN=true
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} CUDA_HOME=/usr/local/cuda

WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/root/.cudaforge \
    --mount=type=cache,target=/src/target \
    extra=""; if [ "${FLASH_ATTN}" = true ]; then extra=",flash-attn"; fi \
 && if [ -n "${extra}" ] && [ "${CUDA_COMPUTE_CAP}" -lt 80 ]; then \
      echo "FLASH_ATTN=true needs CUDA_COMPUTE_CAP >= 80; build with --build-arg FLASH_ATTN=false" >&2; exit 1; fi \
 && cargo build --release --locked -p sdxl-worker --features "cuda,cudnn${extra}" \
 && install -D -m 0755 target/release/sdxl-worker /out/sdxl-worker

############################ models: optional baked model cache ############################
# Built only when BAKE_MODELS=true: `sdxl-worker fetch` into /opt/sdxl-models. The CivitAI key
# comes from a build secret, readable only during this RUN and never stored in a layer or the
# image history. fetch does not touch the GPU, but the binary links libcuda.so.1, which belongs
# to the driver and is absent at build time: the toolkit's link stub stands in for this command
# only and never reaches the runtime image.
FROM build AS models
RUN --mount=type=secret,id=civitai_api_key,required=false \
    mkdir -p /opt/sdxl-models /tmp/cuda-stub \
 && ln -s /usr/local/cuda/lib64/stubs/libcuda.so /tmp/cuda-stub/libcuda.so.1 \
 && CIVITAI_API_KEY="$(cat /run/secrets/civitai_api_key 2>/dev/null || true)" \
    SDXL_CACHE_DIR=/opt/sdxl-models LD_LIBRARY_PATH=/tmp/cuda-stub \
    /out/sdxl-worker --models-toml /src/models.toml fetch \
 && rm -rf /tmp/cuda-stub

############################ runtime: what RunPod runs ############################
FROM nvidia/cuda:${CUDA_VERSION}-base-ubuntu${UBUNTU_VERSION} AS runtime-base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG CUDA_VERSION
ARG CUDNN_VERSION=""
# Only the CUDA libraries the binary loads (the base image already has cudart): cuBLAS(Lt),
# cuRAND, NVRTC (compiles candle's PTX), cuDNN; plus CA certificates for HTTPS downloads.
# CUDA packages are pinned by CUDA_VERSION (their names carry it), cuDNN by CUDNN_VERSION.
# hadolint ignore=DL3008
RUN cuda_pkg=$(echo "${CUDA_VERSION}" | cut -d. -f1,2 | tr . -) \
 && cuda_major=${CUDA_VERSION%%.*} \
 && cudnn_pin=${CUDNN_VERSION:+=${CUDNN_VERSION}} \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates "libcublas-${cuda_pkg}" "libcurand-${cuda_pkg}" "cuda-nvrtc-${cuda_pkg}" \
      "libcudnn9-cuda-${cuda_major}${cudnn_pin}" \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /out/sdxl-worker /usr/local/bin/sdxl-worker
COPY models.toml /app/models.toml
COPY test_input.json /app/test_input.json
ENV SDXL_MODELS_TOML=/app/models.toml

# BAKE_MODELS=false: models download on first use into /runpod-volume/sdxl-models.
FROM runtime-base AS runtime-false

# BAKE_MODELS=true: the fetched models, and the cache dir pointed at them (SDXL_CACHE_DIR wins
# over models.toml and over /runpod-volume).
FROM runtime-base AS runtime-true
COPY --from=models /opt/sdxl-models /opt/sdxl-models
ENV SDXL_CACHE_DIR=/opt/sdxl-models

# Picks one of the two stages above (not an image from a registry, so there is no tag to pin).
# hadolint ignore=DL3006
FROM runtime-${BAKE_MODELS} AS runtime
# No subcommand: with RUNPOD_WEBHOOK_GET_JOB set (as on RunPod) it runs the serverless loop.
CMD ["sdxl-worker"]
