# Tubelet: one aiohttp process per container (scale with WORKERS or replicas);
# the same image runs `python -m server worker` for processing jobs.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    STORAGE_DIR=/data/storage

# ffmpeg and ffprobe: probing, remuxing, transcoding, posters and storyboards.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 tubelet \
    && useradd --system --uid 10001 --gid tubelet --home-dir /app --shell /usr/sbin/nologin tubelet

WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY server ./server
COPY sql ./sql
COPY templates ./templates
COPY static ./static
# Editable: the package keeps reading sql/, templates/ and static/ from /app.
# This brings the S3 client (aiobotocore) too; the base image has the CA
# certificates for an https endpoint.
RUN pip install -e .

# /data/storage: the media with file:// storage; with S3 storage only this node's
# scratch space (uploads in progress, processing work files). /data/cache: the
# read-through cache of media fetched from the bucket (CACHE_DIR). Both belong to
# the app user, so a volume mounted on either starts out writable for it. The cache
# is disposable and left without a VOLUME: mount one where it should outlive the
# container (deploy/compose.scaled.yml does, per replica).
RUN mkdir -p /data/storage /data/cache && chown -R tubelet:tubelet /data
USER tubelet
VOLUME ["/data/storage"]
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"

CMD ["python", "-m", "server"]
