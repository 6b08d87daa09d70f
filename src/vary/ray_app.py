"""Deprecated: the Ray Serve builder moved to `vary.cluster.deployments:build`. Kept for one release."""

import warnings

from vary.cluster.deployments import build

warnings.warn(
    "vary.ray_app is deprecated: use import_path 'vary.cluster.deployments:build'",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["build"]
