# The proxy's image: `docker build -t vendor-auth-proxy .`, then run it with a config and
# its secrets mounted (README, "Deploy"). Everything it runs is checked without Docker by
# tests/test_deploy.py: the CMD and the HEALTHCHECK as written, hadolint, the pinned
# dependency set.
FROM python:3.11-slim-bookworm

# The image's version label; `--build-arg VERSION=...` for a release (tests hold the
# default to pyproject.toml's version).
ARG VERSION=0.1.0
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="vendor-auth-proxy" \
      org.opencontainers.image.description="Authenticating reverse proxy for token-protected vendor APIs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PROXY_CONFIG=/etc/proxy/routes.toml \
    PROXY_PORT=8080
WORKDIR /app

# The pinned dependency set first, in a layer of its own: a code change rebuilds only
# the layers below, and every build gets the same versions the tests ran with.
COPY constraints.txt ./
RUN pip install -r constraints.txt
COPY . ./
# -c: the package itself, its dependencies held to the pins (pip refuses a pin that does
# not satisfy pyproject.toml rather than installing another version).
RUN pip install -c constraints.txt . \
    && install -m 0755 deploy/docker/ready.py /usr/local/bin/proxy-ready \
    && groupadd --system --gid 10001 proxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin proxy \
    && install -d -m 0755 /etc/proxy \
    && cp routes.toml /etc/proxy/routes.toml

# Numeric, so Kubernetes' runAsNonRoot can tell it is not root without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
# Ready, not just alive: unhealthy while a credential has no valid token. PROXY_PORT is
# the port the CMD listens on; set it (not --port) to move both.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["proxy-ready"]
# exec: the proxy is PID 1 and gets SIGTERM itself (drain, then grace).
CMD ["sh", "-c", "exec python -m proxy serve --host 0.0.0.0 --port \"$PROXY_PORT\""]
