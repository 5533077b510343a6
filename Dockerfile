# The mnist-search image: the compose stack's `worker` service (`mnist-search study`).
# torch from PyPI is its CUDA build on x86_64 (~6.8 GB image): it trains on the CPU, and on GPUs
# where the host has NVIDIA's container toolkit and the stack is started with
# docker-compose.gpu.yml (which reserves them for the workers).
FROM python:3.11-slim
WORKDIR /app
# Dependencies first, from pyproject.toml alone: a change to the code reuses this layer (torch).
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY README.md ./
COPY mnist_search ./mnist_search
COPY experiments ./experiments
RUN pip install --no-cache-dir --no-deps .
COPY docker/secrets-entrypoint.sh /usr/local/bin/secrets-entrypoint.sh
# GIT_PYTHON_REFRESH=quiet: there is no git in the image; MLflow need not warn about it.
ENV MLFLOW_DISABLE_TELEMETRY=true \
    GIT_PYTHON_REFRESH=quiet \
    MNIST_SEARCH_DATA_DIR=/data \
    MNIST_SEARCH_STORE=/work/mlruns
ENTRYPOINT ["secrets-entrypoint.sh", "mnist-search"]
CMD ["--help"]
