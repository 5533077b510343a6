"""Who trains a trial: its owner process (host, pid, start time), and whether that owner lives.

The PostgreSQL storage notices dead workers by their missing heartbeats. The journal file has no
heartbeats, so each trial records its owner; a RUNNING trial whose owner on this host is gone
(pid absent, or reused by a process that started at another time) belongs to a dead worker.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: float  # the process's start time, seconds since the epoch (psutil's create_time)

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.started:.2f}"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        host, _, rest = text.rpartition(":")
        host, _, pid = host.rpartition(":")
        try:
            return cls(host, int(pid), float(rest))
        except ValueError:
            return None  # an older record ("host:pid"): its liveness cannot be told

    @property
    def local(self) -> bool:
        return self.host == socket.gethostname()

    def alive(self) -> bool | None:
        """True or False for an owner on this host; None (unknown) for another host's."""
        if not self.local:
            return None
        try:
            process = psutil.Process(self.pid)
            # A zombie is dead: a killed --jobs worker stays one until the parent reaps it.
            same = abs(process.create_time() - self.started) < 0.05
            return same and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except psutil.Error:
            return True  # exists, but not ours to inspect: assume it lives


def this_process() -> Owner:
    pid = os.getpid()
    return Owner(socket.gethostname(), pid, psutil.Process(pid).create_time())
