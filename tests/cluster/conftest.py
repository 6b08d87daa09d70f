"""The real servers the cluster tests run on, each started by its fixture on free loopback ports in a temp
dir and stopped by its own process id: PostgreSQL (postgres.py), SeaweedFS's S3 gateway (seaweedfs.py)."""

from tests.cluster.postgres import postgres_server, postgres_url  # noqa: F401
from tests.cluster.seaweedfs import s3_bucket, s3_env, seaweedfs  # noqa: F401
