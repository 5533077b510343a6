# The mnist-search image: used by the compose stack for the `mlflow` tracking server and the
# `worker` service (`mnist-search study`). CPU or GPU: torch picks CUDA when the host provides it.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mnist_search ./mnist_search
COPY experiments ./experiments
RUN pip install --no-cache-dir -e .
ENV MLFLOW_DISABLE_TELEMETRY=true \
    MNIST_SEARCH_DATA_DIR=/data \
    MNIST_SEARCH_STORE=/work/mlruns
ENTRYPOINT ["mnist-search"]
CMD ["--help"]
