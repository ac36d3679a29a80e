"""Running the API on uvicorn: in the foreground for `gptbench serve`, or on a background thread for tests, benchmarks and the TUI.

uvicorn handles SIGINT/SIGTERM itself: it stops accepting, lets in-flight requests finish for
up to `GRACE_SECONDS`, then the app's lifespan stops the scheduler (rows still going end with
`abort`). Afterwards uvicorn re-raises the signal it caught; `serve_foreground` gives both
signals a no-op handler for that moment, so a signalled server exits 0.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette

GRACE_SECONDS = 10
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
_INSTALL_HINT = 'gptbench serve needs starlette and uvicorn: pip install "gptbench[serve]"'


def import_uvicorn() -> Any:
    from gptbench.errors import UserError

    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise UserError(_INSTALL_HINT) from None
    return uvicorn


def _server(app: "Starlette", host: str, port: int) -> Any:
    uvicorn = import_uvicorn()
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=GRACE_SECONDS)
    return uvicorn.Server(config)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), so the address is known before serving."""
    from gptbench.errors import UserError

    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port or --host") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve_foreground(app: "Starlette", sock: socket.socket) -> int:
    """Serve until SIGINT/SIGTERM; 0 after a graceful stop."""
    server = _server(app, "127.0.0.1", 0)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


class BackgroundServer:
    """The app served on its own thread at `url` until `stop()` (a context manager too)."""

    def __init__(self, app: "Starlette", host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = bind(host, port)
        self.url = address(self.sock)
        self._server = _server(app, host, port)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, timeout: float = 60.0) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + timeout  # only catches a server that never starts
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
