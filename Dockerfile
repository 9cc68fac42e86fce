# loopwatch worker image: the package installed the way users install it (`pip install .`).
#   docker build -t loopwatch .
FROM python:3.11-slim

# torch==2.13.0 is pinned in pyproject.toml; the PyTorch CPU index serves that version as
# 2.13.0+cpu, which pip prefers over PyPI's build with its CUDA libraries (several GB).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The whole build context (.dockerignore keeps out .venv, .git, data and caches), so every
# package pyproject.toml lists is there; the source is removed once installed.
COPY . /tmp/loopwatch-src
RUN pip install --extra-index-url "$TORCH_INDEX_URL" /tmp/loopwatch-src \
    && rm -rf /tmp/loopwatch-src

# A non-root user. Its state and dataset folders exist in the image, owned by it, so new
# named volumes mounted there start empty and writable by it.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/loopwatch --shell /usr/sbin/nologin loopwatch \
    && install -d -o loopwatch -g loopwatch /var/lib/loopwatch /var/lib/loopwatch-datasets
USER loopwatch
WORKDIR /var/lib/loopwatch

ENV LOOPWATCH_DATA_DIR=/var/lib/loopwatch \
    LOOPWATCH_DATASETS_ROOT=/var/lib/loopwatch-datasets \
    LOOPWATCH_WEB_HOST=0.0.0.0 \
    LOOPWATCH_WEB_PORT=6066
VOLUME ["/var/lib/loopwatch", "/var/lib/loopwatch-datasets"]
EXPOSE 6066
CMD ["loopwatch", "worker"]
