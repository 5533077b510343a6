"""What a user sees in MLflow after a small study, as screenshots from a real browser.

Starts `mnist-search server` on a fresh store, runs a small study against it (the command a user
would type, `--no-verify` to keep it short), then takes headless Chromium screenshots of the link
the study printed (its trials, best first), the same link's chart view, and the registry page of
the budget's model (`@best`), and optuna-dashboard's page of the study. Not a test (minutes of training, a browser); run it by hand:

    apt-get install -y chromium        # Debian's, once
    python benchmarks/mlflow_screens.py --data-dir ../shared/datasets/mnist --out docs/screens

It prints the link and each screenshot's path; look at the PNGs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"{url} did not answer in {seconds:.0f} s")


def screenshot(browser: str, url: str, out: Path, wait_ms: int) -> None:
    """One page as a single-page app shows it once its requests are done (`--virtual-time-budget`)."""
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=2200,1100", f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    print(f"{out}  <- {url}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", default="mlflow-screens")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit-train", type=int, default=5000)
    ap.add_argument("--wait-ms", type=int, default=60000, help="virtual time the page gets to load")
    args = ap.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("no chromium: apt-get install -y chromium")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="mlflow-screens-"))
    port = free_port()
    server = subprocess.Popen(
        ["mnist-search", "server", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")],
        stdout=(root / "server.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", server)
        study = subprocess.run(
            ["mnist-search", "study", "--budget", "8000", "--trials", str(args.trials), "--epochs", str(args.epochs),
             "--limit-train", str(args.limit_train), "--no-verify", "--quiet", "--data-dir", str(Path(args.data_dir).resolve()),
             "--tracking-uri", f"http://127.0.0.1:{port}"],
            check=False, cwd=root, capture_output=True, text=True, env=os.environ | {"MNIST_SEARCH_STORE": str(root / "mlruns")},
        )  # fmt: skip
        print(study.stdout[-1500:], study.stderr[-1500:], sep="\n")
        links = [
            line.removeprefix("MLflow: ") for line in study.stdout.splitlines() if line.startswith("MLflow: ")
        ]
        if study.returncode != 0 or not links:
            sys.exit(f"the study exited {study.returncode} without printing its link")
        link = links[-1]
        screenshot(browser, link, out / "study-trials.png", args.wait_ms)
        screenshot(browser, link + "&compareRunsMode=CHART", out / "study-charts.png", args.wait_ms)
        screenshot(
            browser,
            f"http://127.0.0.1:{port}/#/models/mnist-search-b8000",
            out / "registry.png",
            args.wait_ms,
        )
        dashboard(browser, root / "mlruns" / "optuna-journal.log", out, args.wait_ms)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def dashboard(browser: str, journal: Path, out: Path, wait_ms: int) -> None:
    """optuna-dashboard on the study's journal: its history (objective named, infeasible marked)."""
    if shutil.which("optuna-dashboard") is None:
        print("no optuna-dashboard: pip install optuna-dashboard (skipped)")
        return
    port = free_port()
    proc = subprocess.Popen(
        ["optuna-dashboard", str(journal), "--host", "127.0.0.1", "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}/api/meta", proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=30) as resp:
            (study,) = json.load(resp)["study_summaries"]
        page = f"http://127.0.0.1:{port}/dashboard/studies/{study['study_id']}"
        screenshot(browser, page, out / "dashboard.png", wait_ms)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
