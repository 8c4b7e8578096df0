-- Runs once, on the first start of an empty PostgreSQL data directory: the tracking store uses
-- POSTGRES_DB (mlflow); basic-auth keeps its users and permissions in a database of its own.
CREATE DATABASE mlflow_auth;
