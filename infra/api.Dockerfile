# API image: the base install only, so it carries no torch/diffusers.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml constraints.txt README.md ./
COPY api ./api
COPY common ./common
COPY cli ./cli
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install -c constraints.txt .
USER nobody
EXPOSE 8000
CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
