# syntax=docker/dockerfile:1
# mixdiff: Stable Diffusion on Xeon CPUs, served over HTTP.
#
#   docker build -t mixdiff .
#   docker run --cpuset-cpus 0-7 -e MIXDIFF_WORKERS=2 -p 8000:8000 mixdiff
#
# The default model (models/mixdiff-shapes) is inside the image. Other models, and quantized
# artifacts made for them (<model>/quantized/<name>/), are mounted at /models:
#   docker run -v /srv/models:/models:ro -e MIXDIFF_MODEL=/models/sd-1.5 mixdiff
# deploy/README.md explains the tuning (workers x cores, allocator, OpenMP).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtual environment with the CPU build of torch and mixdiff -------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from its CPU index: PyPI's default wheel carries CUDA libraries (several GB).
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# The sources are bind-mounted, not copied: the models in the build context stay out of
# this stage's layers (rw: setuptools writes its build files next to them, then they go).
WORKDIR /src
RUN --mount=type=bind,target=/src,rw pip install --no-cache-dir .

# kernels/ (fused attention), built here: the runtime image has no compiler. The runtime
# loads this build as it is, writing nothing (kernels/build.py).
ENV MIXDIFF_KERNELS_DIR=/opt/venv/share/mixdiff-kernels
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++=4:12.2.0-3 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt
RUN python -c "import kernels; kernels.load()"

# -- runtime: the environment, the default model, jemalloc, a non-root user ----------------
FROM ${PYTHON_IMAGE}

# jemalloc keeps freed activation buffers for reuse instead of returning them to the
# kernel after every step (glibc malloc does, and pays page faults on the next step).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libjemalloc2=5.3.0-1 \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "/usr/lib/$(uname -m)-linux-gnu/libjemalloc.so.2" /usr/local/lib/libjemalloc.so.2 \
    && useradd --no-log-init --create-home --uid 10001 --user-group mixdiff

COPY --from=build /opt/venv /opt/venv
WORKDIR /opt/mixdiff
# The default model only: other models are mounted at /models.
COPY models/mixdiff-shapes/ models/mixdiff-shapes/
COPY deploy/docker/entrypoint.py deploy/docker/healthcheck.py bin/

# Caches (torch, Hugging Face) go under /tmp: the root file system may be read-only.
# MALLOC_CONF (deploy/README.md, "Allocator"):
#   background_thread  purge unused pages in a background thread, off the request path
#   metadata_thp       allocator metadata on transparent huge pages (fewer TLB misses)
#   dirty/muzzy_decay  keep freed pages 30 s, so steady work reuses them; the memory of a
#                      burst goes back to the kernel half a minute after it
#   oversize_threshold:1  turns off the separate arena for allocations over 8 MiB, whose pages
#                      are returned at once: UNet activations are that large, and would be
#                      faulted in again on every step
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    XDG_CACHE_HOME=/tmp/.cache \
    LD_PRELOAD=/usr/local/lib/libjemalloc.so.2 \
    MALLOC_CONF=background_thread:true,metadata_thp:auto,dirty_decay_ms:30000,muzzy_decay_ms:30000,oversize_threshold:1 \
    MIXDIFF_KERNELS_DIR=/opt/venv/share/mixdiff-kernels \
    MIXDIFF_HOST=0.0.0.0 \
    MIXDIFF_PORT=8000 \
    MIXDIFF_MODEL=/opt/mixdiff/models/mixdiff-shapes

VOLUME ["/models"]
USER 10001:10001
EXPOSE 8000

# Loading the model and warming every variant up takes a while (minutes with MIXDIFF_COMPILE).
HEALTHCHECK --interval=15s --timeout=6s --start-period=300s --retries=3 \
    CMD ["python", "/opt/mixdiff/bin/healthcheck.py"]

ENTRYPOINT ["python", "/opt/mixdiff/bin/entrypoint.py"]
CMD ["mixdiff", "serve"]
