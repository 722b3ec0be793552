"""uvicorn on a socket bound here: in the foreground (the CLI; SIGTERM shuts down gracefully) or in a thread.

On SIGTERM / SIGINT uvicorn stops accepting connections and the app's ``begin_shutdown`` runs: queued requests get
503 at once, running ones get the app's ``shutdown_timeout`` seconds to finish before the app stops them (they end
with 503 / an error event). Only a request still running ``BACKSTOP`` seconds later is cancelled by uvicorn itself.
Then the app's shutdown frees the engines.
"""

from __future__ import annotations

import socket
import threading

import uvicorn

from ..errors import InputError


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), so that a busy port is a one-line error before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port} ({err.strerror}): choose another --port or --host") from None
    sock.listen(2048)
    return sock


BACKSTOP = 5.0  # seconds past the app's shutdown timeout after which uvicorn cancels what still runs


class _Server(uvicorn.Server):
    async def shutdown(self, sockets=None) -> None:
        self.config.app.state.begin_shutdown()
        await super().shutdown(sockets)


def make_server(app, log_level: str = "info") -> uvicorn.Server:
    """A uvicorn server for ``app`` (made by ``app.create_app``: its settings give the shutdown timeout)."""
    config = uvicorn.Config(app, timeout_graceful_shutdown=app.state.settings.shutdown_timeout + BACKSTOP,
                            log_level=log_level, access_log=log_level == "debug", lifespan="on")
    return _Server(config)


class BackgroundServer:
    """``with BackgroundServer(app) as url:`` serves ``app`` on a free loopback port in a thread until the block ends."""

    def __init__(self, app, host: str = "127.0.0.1", log_level: str = "warning") -> None:
        self.sock = bind(host, 0)
        self.server = make_server(app, log_level)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="kangaroo-serve")

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server thread stopped before it started (see its log)")
            self.thread.join(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join()
        self.sock.close()
