"""Whether `vary serve` can listen where it was told, checked before anything loads.

uvicorn binds only after the models have loaded and warmed up (minutes and gigabytes for a real model
on a CPU), then says `[Errno 98]`; this says it in one line at once. The socket is closed again, and
uvicorn binds its own.
"""

from __future__ import annotations

import errno
import socket


def address_problem(host: str, port: int) -> str | None:
    """Why vary could not listen on host:port, in one line; None when it can (the socket is closed again)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return f"cannot listen on {host!r}: no such host name or address (--host, VARY_HOST)"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds, so the answers agree
        try:
            sock.bind(address)
        except OSError as exc:
            where = f"{host}:{port}"
            if exc.errno == errno.EADDRINUSE:
                return (
                    f"{where} is already in use, by another vary serve or another server: stop it, "
                    "or choose another port with --port (VARY_PORT)"
                )
            if exc.errno == errno.EACCES:
                return f"{where}: ports below 1024 need privileges; choose another with --port (VARY_PORT)"
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"cannot listen on {host}: it is not an address of this machine (--host, VARY_HOST)"
            return f"cannot listen on {where}: {exc.strerror}"
    return None
