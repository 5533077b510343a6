"""Where and how the work runs: the torch device, thread counts, local worker processes, signals.

Nothing here knows about studies or MLflow: callers hand in what a worker needs (its command and a
payload for its standard input) and get exit codes back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import NoReturn

import torch


class DeviceError(ValueError):
    """--device names a device that is unknown or not present; one line for the user."""


def resolve_device(name: str) -> torch.device:
    """auto -> CUDA when present, else CPU. Raises DeviceError for unknown or unavailable devices."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: no CUDA GPU is available on this machine")
        return torch.device(name)
    raise DeviceError(f"--device {name}: unknown device (use auto, cpu or cuda)")


def available_cores() -> int:
    """Cores this process may run on (its affinity: fewer than os.cpu_count() in a container)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def configure_threads(threads: int | None = None) -> int:
    """One intra-op thread per available core (the default can oversubscribe inside containers),
    or MNIST_SEARCH_THREADS (set for each of N local workers so that N x threads <= cores)."""
    threads = threads or int(os.environ.get("MNIST_SEARCH_THREADS", "0")) or available_cores()
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def setup_device(name: str) -> torch.device:
    """The device for --device, with torch's threads set for this machine's cores."""
    device = resolve_device(name)
    configure_threads()
    return device


def raise_interrupt(signum, frame) -> NoReturn:
    """A SIGTERM handler: take the same clean path as Ctrl-C (runs end FAILED, exit 130)."""
    raise KeyboardInterrupt


def interrupt_on_sigterm() -> None:
    signal.signal(signal.SIGTERM, raise_interrupt)


def cuda_out_of_memory() -> type[BaseException]:
    return torch.cuda.OutOfMemoryError


def run_workers(args: list[str], jobs: int, stdin: str = "") -> int:
    """Start `jobs` processes of this command (`python -m mnist_search ARGS`) and wait; returns
    their worst exit code. Each gets cores/N torch threads and, with several GPUs, one GPU.

    `stdin` is written to each worker's standard input: settings that must not appear on a command
    line (`ps` shows command lines to every local user) travel there. Ctrl-C and SIGTERM are
    forwarded to every worker, which end their runs cleanly."""
    cores = available_cores()
    gpus = torch.cuda.device_count()
    procs = []
    for index in range(jobs):
        env = os.environ | {"MNIST_SEARCH_THREADS": str(max(1, cores // jobs))}  # N x threads <= cores
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
        proc = subprocess.Popen(
            [sys.executable, "-m", "mnist_search", *args], env=env, stdin=subprocess.PIPE, text=True
        )
        proc.stdin.write(stdin)
        proc.stdin.close()
        procs.append(proc)

    def forward(signum, frame):
        for p in procs:
            p.send_signal(signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [p.wait() for p in procs]
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return max(codes, key=abs)
