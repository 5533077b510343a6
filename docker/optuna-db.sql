-- Runs once, when the postgres volume is first created: a second database for Optuna's studies
-- (the first, mlflow, is POSTGRES_DB).
CREATE DATABASE optuna;
