"""How long the command takes to answer when it has nothing to train: `--help`, a subcommand's
help, a usage error, a missing experiment file. Each is a fresh `python -c "from mnist_search.cli import main; main()" ARGS`
process (the console script's own code), timed from start to exit, interleaved over repeats; the
baseline, run in the same loop, is a process that imports what the CLI imported before it deferred
them (torch, MLflow, Optuna, the tracking, export and progress modules) and exits. Prints the
median per case and its speed-up against the baseline.

    python benchmarks/cli_start.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

MAIN = "from mnist_search.cli import main; main()"
BASELINE = "import mnist_search.cli, mnist_search.tracking.client, mnist_search.workflows.export, mnist_search.progress"
CASES = {
    "mnist-search --help": [MAIN, "--help"],
    "mnist-search study --help": [MAIN, "study", "--help"],
    "mnist-search study --budget 0 (usage error)": [MAIN, "study", "--budget", "0"],
    "mnist-search study --experiment budget-9k": [MAIN, "study", "--experiment", "budget-9k"],
    "baseline: import what the CLI used to": [BASELINE],
}


def seconds(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", *args], capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    seconds(CASES["mnist-search --help"])  # warm the file cache and the bytecode
    times: dict[str, list[float]] = {case: [] for case in CASES}
    for _ in range(repeats):
        for case, args in CASES.items():
            times[case].append(seconds(args))
    medians = {case: statistics.median(t) for case, t in times.items()}
    base = medians["baseline: import what the CLI used to"]
    for case, median in medians.items():
        print(f"{case:<46} {median:6.2f} s (median of {repeats})")
    ratios = ", ".join(f"{base / medians[c]:.1f}x" for c in list(CASES)[:4])
    print(f"speed-up against the baseline (--help, study --help, usage error, missing experiment): {ratios}")


if __name__ == "__main__":
    main()
