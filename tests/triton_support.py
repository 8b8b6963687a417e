"""A real Triton server for the tests (tests/triton_server.py), started in its own venv.

The venv comes from `make triton-server` (nvidia-pytriton 0.7 and ONNX Runtime, numpy < 2
as that wheel requires); EDGEAS_TRITON_PYTHON may name another interpreter that has them.
Where neither is present the tests that need a server skip, saying so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVER_SCRIPT = Path(__file__).with_name("triton_server.py")
START_TIMEOUT_S = 120  # a cold start on 2 busy cores: ~5 s seen, model load included


def server_python() -> Path | None:
    given = os.environ.get("EDGEAS_TRITON_PYTHON")
    path = Path(given) if given else REPO / ".venv-tritonserver" / "bin" / "python"
    return path if path.is_file() else None


def free_ports(n: int) -> list[int]:
    """n ports the kernel had free a moment ago (bound together, so distinct)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class TritonProcess:
    repo: Path
    name: str
    plain_name: str | None = None
    log: Path | None = None
    ports: list[int] = field(default_factory=lambda: free_ports(3))
    proc: subprocess.Popen | None = None
    nice: int = 19  # the tests' server yields the cores; a benchmark's competes evenly

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.ports[1]}"

    def start(self) -> None:
        python = server_python()
        assert python is not None
        cmd = [str(python), str(SERVER_SCRIPT), "--repo", str(self.repo), "--name", self.name,
               "--grpc-port", str(self.ports[0]), "--http-port", str(self.ports[1]),
               "--metrics-port", str(self.ports[2])]
        if self.plain_name:
            cmd += ["--plain-name", self.plain_name]
        log = self.log or self.repo.parent / "triton.log"
        handle = log.open("a")
        # its own process group: stop() ends the server and its Python-backend stubs
        self.proc = subprocess.Popen(["nice", "-n", str(self.nice), *cmd], stdout=handle,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        handle.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Triton server exited ({self.proc.returncode}); "
                                   f"log: {log}\n{log.read_text()[-3000:]}")
            if self._ready():
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Triton server was not ready in {START_TIMEOUT_S} s; log: {log}")

    def _ready(self) -> bool:
        import tritonclient.http as http

        try:
            client = http.InferenceServerClient(self.http, connection_timeout=2.0)
            try:
                return all(client.is_model_ready(n) for n in (self.name, self.plain_name) if n)
            finally:
                client.close()
        except Exception:  # not up yet
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGINT)  # PyTriton's own clean shutdown
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)  # stubs left behind by an unclean exit


@contextlib.contextmanager
def triton_server(repo: Path, name: str, plain_name: str | None = None, nice: int = 19
                  ) -> Iterator[TritonProcess]:
    server = TritonProcess(repo, name, plain_name, nice=nice)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def python_version_matches(python: Path) -> bool:
    """The server's stub is built per Python minor version; the venv's must be one PyTriton
    ships (3.8 .. 3.13), which `make triton-server` ensures by using this Python."""
    out = subprocess.run([str(python), "-c", "import sys; print(sys.version_info[:2])"],
                         capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and str(sys.version_info[:2]) == out.stdout.strip()
