# GPU worker image: Python 3.11 (the version the project is tested with), the CUDA build
# of exactly the torch that constraints.txt pins, then the worker extra under the same
# constraints. The CUDA runtime comes with the torch wheels (nvidia-* packages); the
# host gives the driver (NVIDIA Container Toolkit). tests/test_packaging.py checks that
# nothing here can drift from constraints.txt.
FROM python:3.11-slim-bookworm
# The CUDA flavour of the wheel index: cu128 wheels run on drivers >= 570 (H100, H200).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
WORKDIR /app
# Model weights: a hub id is downloaded into (or read offline from) HF_HOME, a folder
# is read from wherever it is mounted; mount a volume at /models for both. The
# inductor cache (TORCH_COMPILE=true) lives there too, so compiled kernels outlive the
# container. expandable_segments: fewer fragmentation OOMs with varying image sizes.
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HF_HOME=/models/hf \
    TORCHINDUCTOR_CACHE_DIR=/models/inductor \
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
COPY pyproject.toml constraints.txt README.md ./
RUN pip install --index-url "${TORCH_INDEX_URL}" "$(grep '^torch==' constraints.txt)"
COPY api ./api
COPY common ./common
COPY cli ./cli
COPY worker ./worker
# The installed CUDA torch (2.x.y+cu128) satisfies the constraint torch==2.x.y.
RUN pip install -c constraints.txt '.[worker]'
CMD ["python", "-m", "worker"]
