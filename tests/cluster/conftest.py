"""The real servers the cluster tests run on, each started by its fixture on free loopback ports in a temp
dir and stopped by its own process ids: PostgreSQL (postgres.py), SeaweedFS's S3 gateway (seaweedfs.py) and
a local Ray cluster (ray_cluster.py). They are defined here once: a session fixture imported into two test
modules would be two fixtures, and start two servers."""

from tests.cluster.postgres import postgres_server, postgres_url  # noqa: F401
from tests.cluster.ray_cluster import ray_cluster_fixture, ray_driver_fixture  # noqa: F401
from tests.cluster.seaweedfs import s3_bucket, s3_env, seaweedfs  # noqa: F401
