"""The command line's options, declared once: their flags, limits, environment variables and help.
The commands in `cli` take them by these names."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Literal

import typer

from mnist_search.core.settings import mask_url

MAX_SEED = 2**31 - 1  # trial n trains with seed + n: leave room below the generators' limits

DataDir = Annotated[
    Path | None,
    typer.Option(help="Folder holding MNIST/raw/ (default: $MNIST_SEARCH_DATA_DIR, else ./data)."),
]
LimitTrain = Annotated[
    int | None, typer.Option(min=1, help="Train on the first N training images only (smoke runs).")
]
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")]
TrackingUri = Annotated[
    str | None,
    typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the local store mlruns/)."),
]
Budget = Annotated[int, typer.Option(min=1, help="Parameter budget: models must have fewer parameters.")]
MaxParams = Annotated[
    int, typer.Option(min=1, help="The front's largest budget: every model has fewer parameters.")
]
Budgets = Annotated[
    str,
    typer.Option(
        help="The budgets the front answers, e.g. 1000,2000,3000,5000 (--max-params is always one): "
        "trials are compared within their size band, and the best under each budget is verified.",
    ),
]
StudyName = Annotated[
    str | None,
    typer.Option("--study-name", "--study", help="Study name (default: the experiment name + budget)."),
]
Storage = Annotated[
    str | None,
    typer.Option(
        envvar="MNIST_SEARCH_STORAGE",
        help="Optuna storage: a journal file path (default mlruns/optuna-journal.log), sqlite:// or postgresql://"
        " ($MNIST_SEARCH_STORAGE keeps a password off your command line).",
    ),
]
ExperimentName = Annotated[
    str | None,
    typer.Option(
        envvar="MLFLOW_EXPERIMENT_NAME",
        help="MLflow experiment of the runs (default: mnist-search-studies, -train or -verify).",
    ),
]
Jobs = Annotated[
    int | None,
    typer.Option(
        min=1,
        envvar="MNIST_SEARCH_JOBS",
        help="Worker processes here, cores/N torch threads each (default: one per core on the CPU, 1 on "
        "a GPU); other machines join a study via --storage.",
        show_default=False,
    ),
]
Experiment = Annotated[
    str | None,
    typer.Option(
        help="Search experiment: a YAML path or a shipped name (budget-1k, budget-1k-separable, ... "
        "budget-8k). Default: the shipped one for the budget's size (the smallest of 1,000, 2,000, "
        "3,000, 5,000, 8,000 at least the budget): the family that verified best there.",
        show_default=False,
    ),
]
FrontExperiment = Annotated[
    str | None,
    typer.Option(
        help="Search experiment: a YAML path or a shipped name. Default: front (both families, every size "
        "up to 8,000 parameters, started from today's verified front).",
        show_default=False,
    ),
]
Trials = Annotated[
    int,
    typer.Option(
        min=1,
        help="The study's TOTAL of trained trials (all runs and workers together): running the "
        "same command again resumes the study up to this total; raise it to add trials. "
        "Over-budget proposals are rejected untrained and do not count.",
    ),
]
Timeout = Annotated[
    float | None,
    typer.Option(
        min=0,
        help="Stop starting trials after this many seconds of this run (default 1800: 30 minutes; "
        "0: no limit). Trials running then finish.",
    ),
]
TrialEpochs = Annotated[int | None, typer.Option(min=1, help="Epochs per trial (default: the recipe's).")]
Replicas = Annotated[
    int | None,
    typer.Option(
        "--replicas",
        min=1,
        max=64,
        help="Seeds per trial, trained at once (packed) and scored by their mean (default: the "
        "recipe's `replicas`).",
    ),
]
Fidelity = Annotated[
    Literal["staged", "full"],
    typer.Option(
        help="staged: each proposal trains 1 seed first (pruned by epoch) and only contenders (1-seed "
        "score within 0.1 points of the best seed mean) train the other seeds; full: every proposal "
        "trains all its seeds at once.",
    ),
]
VerifyAtEnd = Annotated[
    bool,
    typer.Option(
        "--verify/--no-verify",
        envvar="MNIST_SEARCH_VERIFY",
        help="When the study ends, retrain its best trial as `verify` does (60,000 images, 3 seeds, "
        "the test set), register it, export it and print the claim ($MNIST_SEARCH_VERIFY=0 skips it too).",
    ),
]
# --replicas's older name, kept working for scripts but out of the help.
OldSeeds = Annotated[int | None, typer.Option("--seeds", hidden=True, min=1, max=64)]
SamplerSeed = Annotated[
    int,
    typer.Option(
        min=0,
        max=MAX_SEED,
        help="Sampler seed; trial n trains seeds (seed + n) x K ... + K-1, K = --replicas.",
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", help="Plain log lines instead of the live display.")]
ServiceWait = Annotated[
    float,
    typer.Option(
        min=0,
        max=86_400,
        envvar="MNIST_SEARCH_SERVICE_WAIT",
        help="Seconds to keep retrying a tracking server or database that is still starting.",
    ),
]
Top = Annotated[int, typer.Option(min=1, help="How many of the best trials (by validation) to retrain.")]
TrialNumbers = Annotated[
    list[int] | None,
    typer.Option(
        "--trial",
        help="Retrain these trials instead of the top K (repeatable), e.g. one from the Pareto front.",
    ),
]
VerifySeeds = Annotated[int, typer.Option(min=1, help="Seeds per architecture (0, 1, ...).")]
FirstSeed = Annotated[
    int,
    typer.Option(
        min=0,
        help="Start the seeds here (--first-seed 3 --seeds 3: seeds 3, 4, 5): a verified point "
        "checked on seeds it was not judged on.",
    ),
]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Reuse the seed runs an earlier verify of the same trials and protocol finished (one "
        "interrupted by Ctrl-C): only the others train.",
    ),
]
VerifyEpochs = Annotated[int, typer.Option(min=1, help="Epochs per run.")]
OutDir = Annotated[
    Path | None, typer.Option("--out", help="Write the best verified model, table and commands here.")
]
RecipeFrom = Annotated[
    str | None,
    typer.Option(
        help="Train with this experiment's recipe (a path or a shipped name) instead of the one the trials "
        "were trained with; each trial's searched knobs (lr, batch size, ...) still apply.",
    ),
]
ExperimentRef = Annotated[
    str,
    typer.Argument(help="Experiment YAML with a `spec` section: a path or a shipped name (seed-model-1)."),
]

TrainEpochs = Annotated[int | None, typer.Option(min=1, help="Override the recipe's epochs.")]
TrainSeed = Annotated[
    int, typer.Option(min=0, max=MAX_SEED, help="Seed for initialisation, shuffling and augmentation.")
]
ResultsDir = Annotated[
    Path, typer.Option(help="The results folder: its budget-*/ folders, as `verify --out` wrote them.")
]
ExportTrial = Annotated[str, typer.Option(help="'best' (by validation) or a trial number.")]
ExportDir = Annotated[Path, typer.Option("--out", help="Folder to write the export into.")]

# `mnist-search server`'s
BackendStoreUri = Annotated[
    str | None,
    typer.Option(
        help="MLflow backend store (default: the local store mlruns/mlflow.db); e.g. postgresql+psycopg://user:pw@host/mlflow"
    ),
]
ArtifactsDestination = Annotated[
    str | None, typer.Option(help="Where the server keeps artifacts (default: mlruns/artifacts).")
]
Host = Annotated[str, typer.Option(help="Interface to listen on; 0.0.0.0 to serve other machines.")]
Port = Annotated[int, typer.Option(min=1, max=65535)]
AllowedHosts = Annotated[
    str | None,
    typer.Option(
        help="Host headers the server accepts (default: localhost, 127.0.0.1 and this machine's name)."
    ),
]


def command_line(ctx: typer.Context) -> str:
    """The running command as the user gave it, options in declaration order (the ones given on
    the command line only, not defaults or environment), passwords in URLs masked: what a study
    and a verify record of how they were made."""
    words = ["mnist-search", ctx.info_name or ""]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name != "COMMANDLINE":
            continue
        value = ctx.params[param.name]
        if param.param_type_name == "argument":
            words.append(str(value))
            continue
        flag = max(param.opts, key=len)
        if param.is_flag:
            words.append(flag if value else (param.secondary_opts or [flag])[0])
        else:
            for one in value if param.multiple else (value,):
                words += [flag, str(one)]
    return mask_url(shlex.join(words))
