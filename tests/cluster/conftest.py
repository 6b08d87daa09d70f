# The Ray fixtures, defined once for every module here: a session-scoped fixture imported into two test
# modules would be two fixtures, and start two clusters.
from tests.cluster.ray_cluster import ray_cluster_fixture, ray_driver_fixture  # noqa: F401
