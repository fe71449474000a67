# The prodsearch service image: `serve`, `worker`, `migrate`, `reindex`, ... (the entrypoint
# runs `prodsearch <command>`). No secret is baked in: database URL and keys come from the
# environment or from secret files at run time (PRODSEARCH_<NAME>_FILE, see deploy/entrypoint.sh).
FROM python:3.11-slim

# cu128 wheels run on a GPU and on a CPU; for a smaller CPU-only image build with
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# 1: install Debian's openclipart-png (real images for `prodsearch demo`); not needed to serve.
ARG WITH_DEMO_IMAGES=0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PRODSEARCH_DATA_DIR=/data

RUN if [ "$WITH_DEMO_IMAGES" = "1" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends openclipart-png \
        && rm -rf /var/lib/apt/lists/*; \
    fi

WORKDIR /app
# The pinned torch first (its own index), so `pip install .` finds it satisfied.
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" torch==2.14.1 torchvision==0.29.1

COPY pyproject.toml README.md ./
COPY backend ./backend
COPY encoders ./encoders
COPY migrations ./migrations
COPY proto ./proto
RUN pip install --no-cache-dir . && rm -rf /root/.cache

COPY deploy/entrypoint.sh deploy/grpc_health.py /app/deploy/
RUN useradd --system --uid 10001 --home-dir /data prodsearch \
    && mkdir -p /data && chown prodsearch /data
USER prodsearch
VOLUME ["/data"]
EXPOSE 50051 50061 9100

ENTRYPOINT ["/app/deploy/entrypoint.sh"]
CMD ["serve"]
