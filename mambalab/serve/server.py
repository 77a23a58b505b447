"""Running the app: `serve` (the `mambalab serve` command, blocking, stopped by SIGINT/SIGTERM) and
`ServerThread` (a server on a background thread, for tests and benchmarks).

Shutdown on SIGINT or SIGTERM: uvicorn stops accepting connections and the scheduler new requests; in-flight
requests may finish for `drain_timeout` s (streams keep flowing), then the scheduler cancels the rest (their
streams end with an error event and `data: [DONE]`, non-streamed ones get 503); uvicorn closes the
connections, the app's lifespan stops the scheduler thread, and `serve` returns normally: exit status 0.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from pathlib import Path

from mambalab.errors import MambalabError
from mambalab.serve import require_serve_dependencies
from mambalab.serve.scheduler import Limits

logger = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one (see `.getsockname()`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


STREAM_INTERVAL_S = 0.01  # a stream's text events after its first token are at least this far apart (create_app)


def _uvicorn_server(app, drain_timeout: float, log_level: str = "info", on_exit=None):
    """A uvicorn server for `app`; `on_exit()` runs when it receives SIGINT/SIGTERM."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if on_exit is not None:
                on_exit()
            super().handle_exit(sig, frame)

    # uvicorn's own grace period is a backstop: the scheduler ends the streams at drain_timeout
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=drain_timeout + 5, lifespan="on",
                            access_log=False, h11_max_incomplete_event_size=64 * 1024)
    return Server(config)


def serve(
    model_dir: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    system_prompt: str | None = None,
    device=None,
    dtype=None,
    cache_dir: str | None = None,
    cache_bytes: int = 1 << 30,
    served_model_name: str | None = None,
    api_key: str | None = None,
    limits: Limits | None = None,
    drain_timeout: float = 10.0,
    on_listening=None,
    stream_interval: float = STREAM_INTERVAL_S,
    state_dtype=None,
) -> None:
    """Load `model_dir` and serve it on host:port until SIGINT/SIGTERM. `on_listening(url)` is called once
    the model is loaded and the socket bound. `cache_bytes` bounds the prefix states kept in memory;
    `stream_interval`: see `create_app`; `state_dtype`: the SSM state dtype of every request (see
    `LanguageModel.allocate_state`)."""
    require_serve_dependencies()
    from mambalab.serve.app import create_app
    from mambalab.serve.chat import ChatFormat
    from mambalab.serve.engine import Engine

    engine = Engine.from_dir(model_dir, device=device, dtype=dtype, cache_dir=cache_dir, cache_bytes=cache_bytes,
                             limits=limits, state_dtype=state_dtype)
    name = served_model_name or Path(model_dir).resolve().name
    app = create_app(engine, name, ChatFormat.from_dir(model_dir, engine.tokenizer), system_prompt, api_key,
                     drain_timeout=drain_timeout, stream_interval=stream_interval)
    server = _uvicorn_server(app, drain_timeout, on_exit=lambda: engine.scheduler.drain(drain_timeout))
    sock = bind(host, port)
    if on_listening is not None:
        bound_host, bound_port = sock.getsockname()[:2]
        on_listening(f"http://{bound_host}:{bound_port}")
    main = threading.current_thread() is threading.main_thread()
    # uvicorn re-raises the signal it caught once it has shut down; make SIGTERM a KeyboardInterrupt as well,
    # so both end here, after a clean shutdown.
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    interrupted = False
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        engine.stop()
        sock.close()
    if not (server.started or interrupted):
        raise MambalabError("the server failed to start (see the log above)")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


class ServerThread:
    """Serve `app` on host:port (0 = a free port) from a daemon thread: `start()` returns once it accepts
    connections, `url` is its base URL, `stop()` shuts it down gracefully."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, drain_timeout: float = 5.0,
                 log_level: str = "warning"):
        require_serve_dependencies()
        self.sock = bind(host, port)
        self.url = "http://{}:{}".format(*self.sock.getsockname()[:2])
        self.server = _uvicorn_server(app, drain_timeout, log_level)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, timeout: float = 60.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self.thread.is_alive():
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start in time")
            time.sleep(0.01)
        if not self.server.started:
            raise MambalabError("the server failed to start (see the log)")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()
