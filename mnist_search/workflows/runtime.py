"""Where and how the work runs: the torch device, thread counts, local worker processes, signals.

Nothing here knows about studies or MLflow: callers hand in what a worker needs (its command and a
payload for its standard input) and get exit codes back. torch is imported by the functions that use
it: the CLI imports this module to install its signal handler and count cores before any command
has asked for torch (`--help` and usage errors answer without it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from mnist_search.core.errors import DeviceError

if TYPE_CHECKING:
    import torch


def check_device_name(name: str) -> None:
    """Refuse an unknown --device name before torch is imported (seconds) to look at the devices."""
    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise DeviceError(f"--device {name}: unknown device (use auto, cpu or cuda)")


def resolve_device(name: str) -> torch.device:
    """auto -> CUDA when present, else CPU. Raises DeviceError for unknown or unavailable devices."""
    check_device_name(name)
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: no CUDA GPU is available on this machine")
    return torch.device(name)


def available_cores() -> int:
    """Cores this process may run on (its affinity: fewer than os.cpu_count() in a container)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def configure_threads(threads: int | None = None) -> int:
    """One intra-op thread per available core (the default can oversubscribe inside containers),
    or MNIST_SEARCH_THREADS (set for each of N local workers so that N x threads <= cores)."""
    import torch

    threads = threads or int(os.environ.get("MNIST_SEARCH_THREADS", "0")) or available_cores()
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def setup_device(name: str) -> torch.device:
    """The device for --device, with torch's threads set for this machine's cores."""
    from mnist_search.speed.layout import LayoutError, layout_setting

    device = resolve_device(name)
    try:
        layout_setting()  # checked before anything is written; read again where packs are laid out
    except LayoutError as exc:
        raise DeviceError(str(exc)) from None
    configure_threads()
    return device


def raise_interrupt(signum, frame) -> NoReturn:
    """A SIGTERM handler: take the same clean path as Ctrl-C (runs end FAILED, exit 130)."""
    raise KeyboardInterrupt


def interrupt_on_sigterm() -> None:
    signal.signal(signal.SIGTERM, raise_interrupt)


def cuda_out_of_memory() -> type[BaseException]:
    import torch

    return torch.cuda.OutOfMemoryError


@dataclass(frozen=True)
class WorkerExit:
    index: int  # 1-based, as the user counts them
    pid: int
    code: int  # the exit code, or -N when killed by signal N

    @property
    def how(self) -> str:
        if self.code < 0:
            try:
                return f"was killed by {signal.Signals(-self.code).name}"
            except ValueError:
                return f"was killed by signal {-self.code}"
        return f"exited with code {self.code}"


WORKER_GIB = 0.9  # resident memory of one worker process (measured ~860 MB)


def default_jobs(device: str) -> int:
    """How many local worker processes `study` runs when --jobs is not given: on the CPU, one per
    core with one torch thread each (two 1-thread processes trained 2.09x the images per second of
    one 2-thread process on 2 cores: small convolutions barely use a second thread), as many as
    free memory holds; on a GPU, one (it packs replicas instead)."""
    if resolve_device(device).type == "cuda":
        return 1
    import psutil

    free_gib = psutil.virtual_memory().available / 2**30
    return max(1, min(available_cores(), int(free_gib / WORKER_GIB)))


def check_jobs(jobs: int, option: str = "--jobs") -> None:
    """Refuse more workers than this machine can run: one per core at most, and each worker holds
    its own copy of torch, MNIST and MLflow (~0.9 GiB measured) in memory that must be free."""
    import psutil

    cores = available_cores()
    free_gib = psutil.virtual_memory().available / 2**30
    fit = max(1, min(cores, int(free_gib / WORKER_GIB)))
    if jobs > fit:
        raise DeviceError(
            f"{option} {jobs}: this machine runs at most {fit} workers ({cores} cores, "
            f"{free_gib:.1f} GiB free memory, ~{WORKER_GIB} GiB per worker)"
        )


def run_workers(args: list[str], jobs: int, stdin: str = "") -> list[WorkerExit]:
    """Start `jobs` processes of this command (`python -m mnist_search ARGS`) and wait for all.
    Each gets cores/N torch threads and, with several GPUs, one GPU.

    `stdin` is written to each worker's standard input: settings that must not appear on a command
    line (`ps` shows command lines to every local user) travel there. Ctrl-C and SIGTERM are
    forwarded to every worker, which end their runs cleanly."""
    import torch

    cores = available_cores()
    gpus = torch.cuda.device_count()
    procs: list[subprocess.Popen] = []
    received: list[int] = []  # signals forwarded so far: a worker started after one gets it too

    def forward(signum, frame):
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    # Installed before the workers start: a handler (unlike an ignored signal) is reset to the
    # default in a started program, so every worker takes a forwarded SIGINT as Ctrl-C even when
    # this process was started with SIGINT ignored (`nohup mnist-search study ... &` in a script).
    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
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
            if received:
                proc.send_signal(received[-1])
        # Reap each worker as it ends (not in start order), so a dead one is never left a zombie
        # that its siblings would take for alive.
        while any(p.poll() is None for p in procs):
            time.sleep(0.2)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return [WorkerExit(i, p.pid, p.returncode) for i, p in enumerate(procs, start=1)]
