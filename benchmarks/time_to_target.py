"""The main command's time to an answer, as a user sees it: the new behaviour against the old.

For each search seed, `mnist-search study --budget 8000 --seed S` runs under a pseudo-terminal
(`script` with a timing log) in a fresh store, as a user would start it; the screen's timeline and
the study's storage give five figures, minutes from the start:

    line    first live line with a trial number, an epoch and an ETA
    score   first comparable score on screen (a running trial's validation accuracy, or a trial's end)
    cand    first candidate whose 3-seed validation score is >= 99.4 % (from the study storage)
    verif   a verified model printed by the command (every seed >= 99.4 % in each of its last 3 epochs)
    best60  the best 3-seed validation score among the trials completed in the first 60 minutes

"old" is the same command run from another source tree (`--old-src`: a checkout of the commit
before staged fidelity, e.g. `git worktree add ../mnist-search-old 41cfd78`), its defaults being
the old search. Run it alone on the machine: anything beside it moves every figure.

    python benchmarks/time_to_target.py --which new,old --seeds 0,1,2 --old-src ../mnist-search-old \\
        --data-dir ../shared/datasets/mnist [--minutes 90] [--out benchmarks/time_to_target.jsonl]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = 0.994
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]|\x1b[()][0-9A-B]")
# What each figure waits for on screen (both displays: the old one wrote "eta 0:12:00").
SCREEN = {
    "line": [re.compile(r"^#\d+ [\d,]+p.*\bep \d+/\d+", re.MULTILINE), re.compile(r"\beta ~?\d+:\d\d:\d\d")],
    "score": [re.compile(r"^#\d+ .*\bval 0\.\d{4}|^trial \d+ (COMPLETE|PRUNED)|\| best #\d+ ", re.MULTILINE)],
    "verif": [re.compile(r"^verified trial .*held in every seed", re.MULTILINE)],
}


def timeline(screen: Path, timing: Path) -> dict[str, float]:
    """Seconds from the start at which each SCREEN figure's patterns had all appeared."""
    data = screen.read_bytes()
    if data.startswith(b"Script started"):
        data = data[data.index(b"\n") + 1 :]
    seen: dict[str, dict[int, float]] = {name: {} for name in SCREEN}
    clock, offset, tail = 0.0, 0, ""
    for row in timing.read_text().splitlines():
        delay, size = row.split()[:2]
        clock += float(delay)
        chunk = data[offset : offset + int(size)].decode(errors="replace")
        offset += int(size)
        text = tail + ANSI.sub("", chunk).replace("\r", "\n")
        for name, patterns in SCREEN.items():
            for i, pattern in enumerate(patterns):
                if i not in seen[name] and pattern.search(text):
                    seen[name][i] = clock
        tail = text[-4000:]
    return {name: max(found.values()) for name, found in seen.items() if len(found) == len(SCREEN[name])}


def from_storage(journal: Path, started: datetime.datetime, best_at: float) -> dict[str, float]:
    """`cand` (seconds) and `best60` (a score) from the study's journal."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if not journal.exists():
        return {}
    storage = JournalStorage(JournalFileBackend(str(journal)))
    out: dict[str, float] = {}
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        means = []
        for t in study.trials:
            seeds = t.user_attrs.get("seeds") or []
            planned = (t.user_attrs.get("recipe") or {}).get("replicas", 1)
            if t.state.name == "COMPLETE" and len(seeds) > 1 and len(seeds) >= planned:
                means.append(((t.datetime_complete - started).total_seconds(), t.value))
        hits = [s for s, v in means if v >= TARGET]
        if hits:
            out["cand"] = min(hits)
        early = [v for s, v in means if s <= best_at]
        if early:
            out["best60"] = max(early)
    return out


def run_one(which: str, src: Path, seed: int, args) -> dict:
    store = Path(tempfile.mkdtemp(prefix=f"t2t-{which}-{seed}-"))
    command = [sys.executable, "-m", "mnist_search", "study", "--budget", "8000", "--seed", str(seed),
               "--data-dir", str(args.data_dir), *shlex.split(args.extra)]  # fmt: skip
    env = os.environ | {"MNIST_SEARCH_STORE": str(store / "mlruns"), "PYTHONPATH": str(src), "COLUMNS": "160"}
    for name in ("MLFLOW_TRACKING_URI", "MNIST_SEARCH_JOBS", "MNIST_SEARCH_VERIFY", "MNIST_SEARCH_STORAGE"):
        env.pop(name, None)
    screen, timing = store / "screen.log", store / "timing.log"
    started = datetime.datetime.now()
    start = time.monotonic()
    proc = subprocess.Popen(
        ["script", "-q", "-f", "-e", "--log-out", str(screen), "--log-timing", str(timing),
         "-c", shlex.join(command)],
        cwd=store, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        proc.wait(timeout=args.minutes * 60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the limit: what it had shown and stored by then counts
        proc.wait()
    wall = time.monotonic() - start
    figures = timeline(screen, timing) | from_storage(
        store / "mlruns" / "optuna-journal.log", started, args.best_at * 60
    )
    return {"which": which, "seed": seed, "wall_minutes": round(wall / 60, 1), "store": str(store)} | {
        k: round(v / 60, 2) if k != "best60" else round(v, 4) for k, v in figures.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--which", default="new,old")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--old-src", type=Path, help="source tree of the old behaviour (a checkout)")
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=90, help="stop a run after this long")
    ap.add_argument("--best-at", type=float, default=60, help="minutes at which `best60` is read")
    ap.add_argument("--extra", default="", help="more study arguments for both (smoke runs)")
    ap.add_argument("--out", type=Path, help="append each run as a JSON line here")
    args = ap.parse_args()
    args.data_dir = args.data_dir.resolve()
    sources = {"new": REPO, "old": args.old_src.resolve() if args.old_src else None}
    rows = []
    for which in args.which.split(","):
        if sources[which] is None:
            ap.error(f"--which {which} needs --old-src")
        for seed in map(int, args.seeds.split(",")):
            row = run_one(which, sources[which], seed, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(row | {"cpu": _cpu(), "commit": _commit(sources[which])}) + "\n")
    print(f"\nmedian over seeds {args.seeds} (minutes from the start; best60: 3-seed validation score)")
    print(f"{'':6}" + "".join(f"{k:>9}" for k in ("line", "score", "cand", "verif", "best60")))
    for which in args.which.split(","):
        mine = [r for r in rows if r["which"] == which]
        cells = []
        for key in ("line", "score", "cand", "verif", "best60"):
            values = [r[key] for r in mine if key in r]
            missing = len(mine) - len(values)
            cell = "-" if not values else f"{statistics.median(values):g}"
            cells.append(cell + (f"({missing}x)" if missing and values else ""))
        print(f"{which:6}" + "".join(f"{c:>9}" for c in cells))
    print("(-: never within the run; (kx): missing in k runs)")


def _commit(src: Path) -> str:
    found = subprocess.run(
        ["git", "-C", str(src), "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True
    )
    return found.stdout.strip() or "unknown"


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    main()
