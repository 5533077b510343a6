# The compose stack's MLflow tracking server: MLflow and a PostgreSQL driver, nothing else
# (no torch). The same MLflow release range as the mnist-search package.
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow>=3.4,<4" "psycopg[binary]>=3.2"
COPY docker/secrets-entrypoint.sh /usr/local/bin/secrets-entrypoint.sh
ENV MLFLOW_DISABLE_TELEMETRY=true \
    GIT_PYTHON_REFRESH=quiet
EXPOSE 5000
ENTRYPOINT ["secrets-entrypoint.sh", "mlflow"]
CMD ["server", "--help"]
