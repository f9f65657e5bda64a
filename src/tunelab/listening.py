"""A listening socket for tunelab's servers (the API and the web UI), refused in one
sentence where the port is taken or the host cannot be listened on."""

from __future__ import annotations

import errno
import socket

from tunelab.errors import TunelabError


def listen_on(host: str, port: int) -> socket.socket:
    """A socket bound to host:port and listening (port 0: a free port the system picks)."""
    if not 0 <= port <= 65535:
        raise TunelabError(f"--port {port} is not a port; give one from 1 to 65535 (0: any free).")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise TunelabError(
                f"port {port} on {host} is in use; choose another with --port."
            ) from exc
        raise TunelabError(
            f"cannot listen on {host}:{port} ({exc.strerror}); check --host."
        ) from exc
    except socket.gaierror as exc:
        sock.close()
        raise TunelabError(f"--host {host} is not a host name or address ({exc}).") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
