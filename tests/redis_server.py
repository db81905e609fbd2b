"""Debian's redis-server for the tests, started on a free loopback port without persistence, and a
minimal RESP client to look into it. Shared by every suite that needs a real Redis.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness import PROCESS_LOGS, stop_process, wait_until

READY_TIMEOUT_S = 10.0


def _read_reply(reader):
    line = reader.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise AssertionError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        length = int(rest)
        return None if length < 0 else reader.read(length + 2)[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(reader) for _ in range(count)]
    raise AssertionError(f"not a RESP reply: {line!r}")


@dataclass
class RedisServer:
    """Debian's redis-server on a loopback port: no snapshot, no append-only file."""

    port: int
    workdir: Path
    process: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "redis.log"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        PROCESS_LOGS[f"redis-{self.port}"] = self.log
        wait_until(self.answers, READY_TIMEOUT_S, "redis-server", self.process, self.log)
        return self

    def stop(self) -> None:
        if self.process is not None:
            assert stop_process(self.process) == 0
            self.process = None

    def answers(self) -> bool:
        try:
            return self.command("PING") == "PONG"
        except OSError:
            return False

    def command(self, *args: str | bytes):
        """One command in RESP, its reply decoded (bulk strings stay bytes)."""
        parts = [arg.encode() if isinstance(arg, str) else arg for arg in args]
        request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(request)
            return _read_reply(sock.makefile("rb"))
