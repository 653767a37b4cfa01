FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY proxy ./proxy
RUN pip install . && useradd --system --uid 10001 --no-create-home proxy
COPY routes.toml /etc/proxy/routes.toml

USER proxy
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/-/health', timeout=2).status != 200)"
CMD ["python", "-m", "proxy", "serve", "--config", "/etc/proxy/routes.toml", "--host", "0.0.0.0"]
