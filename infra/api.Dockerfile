# API image: the base install only, so it carries no torch/diffusers.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml constraints.txt README.md ./
COPY api ./api
COPY background ./background
COPY common ./common
COPY cli ./cli
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install -c constraints.txt .
USER nobody
EXPOSE 8000
# On SIGTERM uvicorn closes its socket at once and waits for requests in flight (a v1
# call may wait SYNC_WAIT_TIMEOUT_SECONDS, 300 s) up to this long; give the container a
# longer stop grace period (docker-compose.yml). docs/reliability.md.
CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", \
     "--timeout-graceful-shutdown", "330"]
