"""`vary serve --ray ADDRESS`: vary as the Ray Serve application "vary" on an existing Ray cluster.

It connects, starts Serve's HTTP proxy on --host/--port, runs the application (ray_app.py) and waits
until it is deployed, then blocks. SIGTERM or Ctrl-C deletes the application and disconnects, so the
command's exit stops the serving, as with `vary serve`. An address nothing answers on ends the command
with one line and exit status 1 (ray.init would wait minutes for it).
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from types import FrameType

from vary.settings import Settings

log = logging.getLogger("vary")

CONNECT_TIMEOUT_SECONDS = 5.0
MISSING_RAY = 'vary: --ray needs Ray Serve, which is not installed: pip install "vary[cluster]"'


class _Stop(BaseException):
    """SIGTERM or SIGINT: leave the wait (or a deployment still starting) and clean up."""


def serve_on_ray(settings: Settings, on_ready: str | None) -> None:
    try:
        import ray
        from ray import serve
    except ImportError:
        sys.exit(MISSING_RAY)
    from vary.cluster.deployments import APP_NAME, application
    from vary.service.catalogue import CatalogueError

    address = settings.ray_address or "auto"
    reason = _unreachable(address)
    if reason:
        sys.exit(f"vary: no Ray cluster answers at {address}: {reason}")
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)

    def stop(signum: int, _: FrameType | None) -> None:
        raise _Stop(signum)

    # After ray.init, which installs its own SIGTERM handler (a bare exit) on the driver.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    deployed = False
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        log.info("deploying the application %r on the Ray cluster at %s", APP_NAME, address)
        serve.run(application(settings), name=APP_NAME, route_prefix="/")
        deployed = True
        log.info("vary is served by Ray Serve on http://%s:%d", settings.host, settings.port)
        if on_ready:
            print(on_ready, flush=True)
        while True:
            signal.pause()  # until a signal: the handler's exception leaves the wait
    except _Stop:
        log.info("stopping: deleting the application %r", APP_NAME)
    except CatalogueError as exc:  # Serve refused a [models.ray] or [ray.edge] table
        sys.exit(f"vary: {exc}")
    except RuntimeError as exc:  # Serve's word for an application that failed to deploy
        log.error("the application could not be deployed: %s", exc)
        sys.exit(1)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second signal ends the clean-up at once
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            serve.delete(APP_NAME)
        finally:
            ray.shutdown()
    if not deployed:
        sys.exit(130)


def _unreachable(address: str) -> str | None:
    """Why nothing answers at a host:port address, or None (other forms, e.g. "auto", are left to Ray)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_SECONDS):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__
