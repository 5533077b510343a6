"""Wall time from the start of `mnist-search study --budget 8000` to the first trial that meets
the target (test accuracy >= 99.4 % in each of its last 3 epochs), on this machine.

Runs the study as a user would, in a fresh temporary store, and watches its journal storage.

    python benchmarks/time_to_target.py [--limit-minutes 90] [--data-dir DIR] [-- extra study args]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend


def first_target(journal: Path) -> optuna.trial.FrozenTrial | None:
    if not journal.exists():
        return None
    storage = JournalStorage(JournalFileBackend(str(journal)))
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        met = [t for t in study.trials if t.user_attrs.get("target_met")]
        if met:
            return min(met, key=lambda t: t.datetime_complete)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit-minutes", type=float, default=90)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--store", default=None, help="store folder (default: a fresh temporary one)")
    ap.add_argument("extra", nargs="*", help="more `mnist-search study` arguments")
    args = ap.parse_args()
    store = Path(args.store or tempfile.mkdtemp(prefix="t2t-"))
    env = os.environ | {"MNIST_SEARCH_STORE": str(store)}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = ["mnist-search", "study", "--budget", "8000", "--trials", "1000", "--quiet", *args.extra]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found = None
    try:
        while time.monotonic() - start < args.limit_minutes * 60 and proc.poll() is None:
            time.sleep(15)
            found = first_target(store / "optuna-journal.log")
            if found:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    minutes = (time.monotonic() - start) / 60
    print(f"command: {' '.join(cmd)}  (store {store})")
    if found:
        a = found.user_attrs
        print(
            f"first target-meeting trial: #{found.number}, {a['params']:,} params, "
            f"test min(last 3) {a['test_acc_min_last3']:.4f}"
        )
        print(f"time to target: {minutes:.1f} min (goal <= 90 min): ratio to goal {minutes / 90:.2f}")
    else:
        print(f"no trial met the target within {minutes:.1f} min")
        sys.exit(1)


if __name__ == "__main__":
    main()
