"""Start the MLflow tracking server of infra/mlflow from environment variables alone.

The entrypoint of the image built from infra/mlflow/Dockerfile, used by both
docker-compose.yml and k8s.yaml. It

1. waits for PostgreSQL, then creates the database of MLflow's basic-auth app (users and
   permissions; kept apart from the run data) if it is missing;
2. creates the artifact bucket if MLFLOW_CREATE_BUCKET is true (the bundled MinIO; leave it
   false for a bucket that already exists, e.g. on AWS S3);
3. writes the basic-auth configuration to a private temporary file; and
4. replaces itself with ``mlflow server`` (PostgreSQL for run data, S3 for artifacts, served
   through the server, basic auth on).

Database URIs hold the password: they reach MLflow through environment variables
(MLFLOW_BACKEND_STORE_URI, which `mlflow server --backend-store-uri` reads, and the auth
file), never through the command line, which any process on the host can read.

Environment (required unless a default is shown):
  POSTGRES_USER, POSTGRES_PASSWORD       database login
  POSTGRES_HOST=postgres, POSTGRES_PORT=5432, POSTGRES_DB=mlflow, MLFLOW_AUTH_DB=mlflow_auth
  MLFLOW_ARTIFACTS_BUCKET                 bucket (and optional /prefix) for artifacts
  MLFLOW_CREATE_BUCKET=false
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, MLFLOW_S3_ENDPOINT_URL: read by boto3 / MLflow
  MLFLOW_AUTH_ADMIN_USERNAME, MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY:
                                          read by MLflow's basic-auth app
  MLFLOW_DEFAULT_PERMISSION=READ          what a user may do with others' experiments
  MLFLOW_PORT=5000, MLFLOW_WORKERS=2
  MLFLOW_SERVER_ALLOWED_HOSTS             read by MLflow (default: localhost, private IPs)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Mapping
from urllib.parse import quote

WAIT_SECONDS = 120


def _get(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    value = env.get(name) or default
    if not value:
        raise SystemExit(f"serve.py: environment variable {name} is required")
    return value


def database_uri(env: Mapping[str, str], database: str) -> str:
    """A SQLAlchemy URI for ``database``; user and password are percent-encoded, so any
    character is safe in them."""
    user = quote(_get(env, "POSTGRES_USER"), safe="")
    password = quote(_get(env, "POSTGRES_PASSWORD"), safe="")
    host = _get(env, "POSTGRES_HOST", "postgres")
    port = _get(env, "POSTGRES_PORT", "5432")
    return f"postgresql://{user}:{password}@{host}:{port}/{database}"


def backend_store_uri(env: Mapping[str, str]) -> str:
    return database_uri(env, _get(env, "POSTGRES_DB", "mlflow"))


def auth_database(env: Mapping[str, str]) -> str:
    return _get(env, "MLFLOW_AUTH_DB", "mlflow_auth")


def auth_config(env: Mapping[str, str]) -> str:
    """The basic-auth app's ini file. The admin user's name and password are not in it:
    MLflow reads MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD itself."""
    permission = _get(env, "MLFLOW_DEFAULT_PERMISSION", "READ")
    # configparser treats % as interpolation; a percent-encoded password must be escaped.
    uri = database_uri(env, auth_database(env)).replace("%", "%%")
    return (
        "[mlflow]\n"
        f"default_permission = {permission}\n"
        f"database_uri = {uri}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )


def artifacts_destination(env: Mapping[str, str]) -> str:
    return "s3://" + _get(env, "MLFLOW_ARTIFACTS_BUCKET").strip("/")


def server_command(env: Mapping[str, str]) -> list[str]:
    return [
        "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--host",
        "0.0.0.0",  # inside the container; docker-compose.yml / the Service decide exposure
        "--port",
        _get(env, "MLFLOW_PORT", "5000"),
        "--workers",
        _get(env, "MLFLOW_WORKERS", "2"),
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts_destination(env),
    ]


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def ensure_auth_database(env: Mapping[str, str]) -> None:
    """Wait for PostgreSQL, then create the auth database unless it exists.

    psycopg (version 3): the driver SQLAlchemy 2.1, and so MLflow, uses for postgresql://.
    """
    import psycopg
    from psycopg import sql

    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            # autocommit: CREATE DATABASE cannot run inside a transaction.
            conn = psycopg.connect(backend_store_uri(env), connect_timeout=5, autocommit=True)
            break
        except psycopg.OperationalError as e:
            if time.monotonic() > deadline:
                raise SystemExit(f"serve.py: PostgreSQL unreachable: {e}") from e
            print("serve.py: waiting for PostgreSQL ...", file=sys.stderr)
            time.sleep(3)
    name = auth_database(env)
    with conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            print(f"serve.py: created database {name}", file=sys.stderr)


def ensure_bucket(env: Mapping[str, str]) -> None:
    import boto3
    from botocore.exceptions import ClientError, EndpointConnectionError

    bucket = _get(env, "MLFLOW_ARTIFACTS_BUCKET").strip("/").split("/")[0]
    s3 = boto3.client("s3", endpoint_url=env.get("MLFLOW_S3_ENDPOINT_URL") or None)
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            s3.head_bucket(Bucket=bucket)
            return
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
                s3.create_bucket(Bucket=bucket)
                print(f"serve.py: created bucket {bucket}", file=sys.stderr)
                return
            raise
        except EndpointConnectionError as e:
            if time.monotonic() > deadline:
                raise SystemExit(f"serve.py: object store unreachable: {e}") from e
            print("serve.py: waiting for the object store ...", file=sys.stderr)
            time.sleep(3)


def main() -> None:
    env = dict(os.environ)
    ensure_auth_database(env)
    if _truthy(env.get("MLFLOW_CREATE_BUCKET")):
        ensure_bucket(env)
    fd, path = tempfile.mkstemp(prefix="mlflow-auth-", suffix=".ini")  # mode 0600
    with os.fdopen(fd, "w") as f:
        f.write(auth_config(env))
    env["MLFLOW_AUTH_CONFIG_PATH"] = path
    env["MLFLOW_BACKEND_STORE_URI"] = backend_store_uri(env)
    command = server_command(env)
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main()
