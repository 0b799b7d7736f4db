# GPU worker image: CUDA build of torch, then the worker extra.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HOME=/models/hf
COPY pyproject.toml constraints.txt README.md ./
COPY api ./api
COPY common ./common
COPY cli ./cli
COPY worker ./worker
# torch comes from the base image; constraints pin everything else.
RUN grep -v '^torch==' constraints.txt > /tmp/constraints.txt \
    && pip install -c /tmp/constraints.txt '.[worker]'
CMD ["python", "-m", "worker"]
