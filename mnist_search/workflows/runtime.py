"""Where and how the work runs: the torch device, thread counts, local worker processes, signals.

Nothing here knows about studies or MLflow: callers hand in what a worker needs (its command and a
payload for its standard input) and get exit codes back. torch is imported by the functions that use
it: the CLI imports this module to install its signal handler and count cores before any command
has asked for torch (`--help` and usage errors answer without it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
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


INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


def raise_interrupt(signum, frame) -> NoReturn:
    """Ctrl-C or SIGTERM: the first one raises KeyboardInterrupt (runs end FAILED, exit 130), and
    the ones after it are ignored until `handle_interrupts()` arms them again, so the cleanup it
    starts (runs closed FAILED, trials marked interrupted) is never cut short: a second Ctrl-C
    printed a traceback, and a worker hit by the terminal's SIGINT and its parent's forwarded one
    left its run without its reason. SIGKILL still ends anything at once."""
    for sig in INTERRUPTS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


_armed: set[int] = set()  # the signals this process's command armed (handle_interrupts)


def handle_interrupts() -> None:
    """Arm SIGTERM, and Ctrl-C unless this process started with it ignored (a script's background
    job, a `--jobs` worker): the next one interrupts the work (see `raise_interrupt`)."""
    armed = {signal.SIGTERM} | (
        {signal.SIGINT} if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else set()
    )
    for sig in armed:
        signal.signal(sig, raise_interrupt)
    _armed.update(armed)


def rearm_interrupts() -> None:
    """After an interrupt's cleanup, before the next piece of work (the verify that follows an
    interrupted study): the signals the command armed interrupt again."""
    for sig in _armed:
        signal.signal(sig, raise_interrupt)


def worker_interrupts() -> None:
    """A worker process of `run_workers`: Ctrl-C is its parent's to act on (it reaches the whole
    process group); the SIGTERM its parent then sends interrupts the work, once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, raise_interrupt)


def cuda_out_of_memory() -> type[BaseException]:
    import torch

    return torch.cuda.OutOfMemoryError


@dataclass(frozen=True)
class WorkerExit:
    index: int  # 1-based, as the user counts them
    pid: int
    code: int  # the exit code, or -N when killed by signal N
    said: str = ""  # what it wrote to stderr: told by the command once its display has stopped

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
    line (`ps` shows command lines to every local user) travel there. A worker ignores Ctrl-C
    (`worker_interrupts`: the terminal sends it to the whole process group); the first Ctrl-C
    or SIGTERM here is sent on to every worker once, as SIGTERM, and each ends its run cleanly."""
    # A worker's stderr (its error line, a warning) goes to a file, not to the terminal, where it
    # would land in the middle of the live display; the command says it after (`WorkerExit.said`).
    with contextlib.ExitStack() as stack:
        said = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(jobs)]
        procs = _start_and_wait(args, jobs, stdin, said)
        exits = []
        for i, (p, file) in enumerate(zip(procs, said), start=1):
            file.seek(0)
            exits.append(WorkerExit(i, p.pid, p.returncode, file.read()))
        return exits


def _start_and_wait(args: list[str], jobs: int, stdin: str, said: list) -> list[subprocess.Popen]:
    import torch

    cores = available_cores()
    gpus = torch.cuda.device_count()
    procs: list[subprocess.Popen] = []
    received: list[int] = []  # signals forwarded so far: a worker started after one gets it too

    def forward(signum, frame):
        if received:  # the workers are ending their runs already
            return
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    # Installed before the workers start: an interrupt while they start reaches each of them too.
    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for index in range(jobs):
            env = os.environ | {"MNIST_SEARCH_THREADS": str(max(1, cores // jobs))}  # N x threads <= cores
            if gpus > 1:
                env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
            # Started with Ctrl-C ignored (inherited, unlike a handler): a Ctrl-C while it imports
            # is its parent's alone, as it is afterwards (`worker_interrupts`).
            forwarding = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "mnist_search", *args],
                    env=env, stdin=subprocess.PIPE, stderr=said[index], text=True,
                )  # fmt: skip
            finally:
                signal.signal(signal.SIGINT, forwarding)
            proc.stdin.write(stdin)
            proc.stdin.close()
            procs.append(proc)
            if received:
                proc.send_signal(signal.SIGTERM)
        # Reap each worker as it ends (not in start order), so a dead one is never left a zombie
        # that its siblings would take for alive.
        while any(p.poll() is None for p in procs):
            time.sleep(0.2)
    finally:
        for sig, handler in old.items():  # after an interrupt, still ignored while the caller cleans up
            signal.signal(sig, signal.SIG_IGN if received else handler)
    return procs
