#!/bin/sh
# Start the MLflow tracking server: PostgreSQL backend store, artifacts proxied to S3, basic-auth on.
# Used as-is by the Kubernetes Deployment (mlflow.yaml) and docker-compose.yaml. Everything comes
# from the environment; secrets are never written anywhere but a 0600 file in the container:
#
#   POSTGRES_USER, POSTGRES_PASSWORD   (required; URL-safe characters only: they go into a URI)
#   POSTGRES_HOST=mlflow-postgres POSTGRES_PORT=5432 POSTGRES_DB=mlflow POSTGRES_AUTH_DB=mlflow_auth
#   MLFLOW_BACKEND_STORE_URI, MLFLOW_AUTH_DATABASE_URI   instead of POSTGRES_* (any SQLAlchemy URI,
#                                      e.g. sqlite:////srv/mlflow.db for a test server)
#   MLFLOW_ARTIFACTS_DESTINATION       (required) s3://bucket/prefix; AWS_* or an instance/pod role
#   MLFLOW_S3_ENDPOINT_URL             only for an S3-compatible server (MinIO, Ceph, moto)
#   MLFLOW_AUTH_ADMIN_USERNAME=admin, MLFLOW_AUTH_ADMIN_PASSWORD (12+ characters; required on the first start)
#   MLFLOW_FLASK_SERVER_SECRET_KEY     (required) CSRF key, the same for every replica
#   MLFLOW_AUTH_DEFAULT_PERMISSION=READ   what a signed-in user may do with others' experiments
#   MLFLOW_SERVER_ALLOWED_HOSTS        Host headers clients use (default: localhost and private IPs)
#   MLFLOW_WORKERS=2 MLFLOW_HOST=0.0.0.0 MLFLOW_PORT=5000
set -eu

: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION to s3://bucket/prefix}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY}"
# docker compose passes unset settings as empty strings; boto3 would take an empty endpoint literally.
for var in MLFLOW_S3_ENDPOINT_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN; do
  eval "[ -n \"\${$var:-}\" ]" || unset "$var"
done
if [ -z "${MLFLOW_BACKEND_STORE_URI:-}" ] || [ -z "${MLFLOW_AUTH_DATABASE_URI:-}" ]; then
  : "${POSTGRES_USER:?set POSTGRES_USER (or MLFLOW_BACKEND_STORE_URI and MLFLOW_AUTH_DATABASE_URI)}"
  : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
  DB="postgresql://${POSTGRES_USER}:${POSTGRES_PASSWORD}@${POSTGRES_HOST:-mlflow-postgres}:${POSTGRES_PORT:-5432}"
  MLFLOW_BACKEND_STORE_URI="${MLFLOW_BACKEND_STORE_URI:-${DB}/${POSTGRES_DB:-mlflow}}"
  MLFLOW_AUTH_DATABASE_URI="${MLFLOW_AUTH_DATABASE_URI:-${DB}/${POSTGRES_AUTH_DB:-mlflow_auth}}"
fi

# The auth app reads its user database URI only from this ini file, so write it here (not in an image).
umask 077
AUTH_INI="${TMPDIR:-/tmp}/mlflow-basic-auth.ini"
cat > "$AUTH_INI" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$AUTH_INI"

exec mlflow server \
  --host "${MLFLOW_HOST:-0.0.0.0}" \
  --port "${MLFLOW_PORT:-5000}" \
  --backend-store-uri "${MLFLOW_BACKEND_STORE_URI}" \
  --serve-artifacts \
  --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION}" \
  --app-name basic-auth \
  --workers "${MLFLOW_WORKERS:-2}"
