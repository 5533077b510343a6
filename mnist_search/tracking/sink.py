"""The one way a trained network reaches MLflow: a `RunSink` per run, fed by the training callback.

`train`, `verify` and a study's trials all log through it, so their runs carry the same names
(`tracking.names`). Open it with everything that defines the run, call `epoch()` from the training
callback with each seed's figures of the epoch, and `close()` it with the outcome (or `fail()` it).
One seed per run (`train`, `verify`) logs the plain names; several seeds in one run (a study's
trial, packed replicas) log their mean under the plain names and each seed's own under
`seed_<s>/...`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

from mnist_search.core.config import TARGET, ArchSpec, Recipe
from mnist_search.core.data import MNISTData
from mnist_search.core.results import EpochResult, ReplicaResults, mean_epoch
from mnist_search.tracking import names
from mnist_search.tracking.client import RunLog, Tracking, run_tags, source_tags, spec_params


class RunSink:
    """One MLflow run of one spec trained with `seeds` (one or several at once)."""

    def __init__(self, log: RunLog, seeds: Sequence[int]):
        self.log, self.seeds = log, list(seeds)
        self.training = list(seeds)  # the seeds training now (`widen` adds a stage of others)
        self.plain = True  # epochs log the plain names (the mean of the seeds training)
        self.started = time.perf_counter()

    @property
    def run_id(self) -> str:
        return self.log.run_id

    @classmethod
    def open(
        cls,
        tracking: Tracking,
        spec: ArchSpec,
        recipe: Recipe,
        data: MNISTData,
        *,
        seeds: Sequence[int],
        command: str,
        run_name: str,
        budget: int,
        experiment_file: str,
        tags: dict[str, str],
        params: dict[str, str] | None = None,
        created: Callable[[RunSink], None] | None = None,
    ) -> RunSink:
        """Create the run (tags first, so it is found even if what follows fails), then log what
        defines it: spec.* and recipe.* params, its seed(s), its sizes, the data and the tables.
        `command`: the mnist-search command that trains it (train, study, verify), its Source.
        `created`: told the sink as soon as the run exists, before the rest is logged (a study
        records the run on its trial then, so an interrupt meanwhile still finds and closes it)."""
        all_tags = run_tags(spec, budget, experiment_file) | source_tags(command) | tags
        run = tracking.client.create_run(tracking.experiment_id, run_name=run_name, tags=all_tags)
        sink = cls(RunLog(tracking.client, run.info.run_id), seeds)
        if created is not None:
            created(sink)
        seed = {"seed": str(seeds[0])} if len(seeds) == 1 else {"seeds": ",".join(map(str, seeds))}
        sink.log.params(spec_params(spec, recipe) | {"epochs": str(recipe.epochs)} | seed | (params or {}))
        sink.log.sizes(spec)
        sink.log.dataset(data, "training")
        sink.log.tables(spec)
        return sink

    def packed(self, layout: str) -> None:
        """How the seeds were laid out to train (speed.layout), once chosen."""
        self.log.client.set_tag(self.run_id, names.PACK_LAYOUT, layout)

    def widen(self, seeds: Sequence[int], first: ReplicaResults) -> None:
        """Staged fidelity: the run goes on to all `seeds`, the others training now. Its plain
        per-epoch names keep the first seed's curves (each epoch is logged once); every seed's
        own curves are under seed_<s>/, the first's copied there now."""
        new = [s for s in seeds if s not in self.seeds]
        self.log.params({"seeds": ",".join(map(str, seeds))})
        for per_seed in zip(*(r.epochs for r in first.results)):
            self.log.metrics(self._per_seed(self.seeds, per_seed), step=per_seed[0].epoch)
        self.seeds, self.training, self.plain = list(seeds), new, False

    @staticmethod
    def _per_seed(seeds: Sequence[int], per_seed: Sequence[EpochResult]) -> dict[str, float]:
        return {
            names.seed_metric(seed, k): v
            for seed, own in zip(seeds, per_seed)
            for k, v in names.epoch_metrics(own).items()
            if k.split("/")[0] in names.SEED_SPLITS
        }

    def epoch(self, per_seed: Sequence[EpochResult]) -> None:
        """One epoch, each seed's figures in the order of the seeds training: the training callback's."""
        metrics = names.epoch_metrics(mean_epoch(per_seed)) if self.plain else {}
        if len(per_seed) > 1 or not self.plain:
            metrics |= self._per_seed(self.training, per_seed)
        self.log.metrics(metrics, step=per_seed[0].epoch)

    def close(
        self,
        state: str,
        result: ReplicaResults,
        model: torch.nn.Module | None = None,
        example: torch.Tensor | None = None,
        reason: str = "",
    ) -> None:
        """End the run: `state` COMPLETE / PRUNED / FAIL (with `reason`), the final figures of
        what it trained, and the model it hands out (checkpoint and MLflow model) if any."""
        client = self.log.client
        client.set_tag(self.run_id, names.STATE, state)
        if reason:
            client.set_tag(self.run_id, names.FAILURE if state == "FAIL" else names.PRUNED_REASON, reason)
        if result.layout:
            self.packed(result.layout)
        self._finals(result, model is not None)
        if model is not None:
            self.log.checkpoint(model)
            self.log.model(model, example)
        self.log.end(names.END_STATUS[state])

    def fail(self, reason: str = "") -> None:
        """End the run FAILED, with `reason` when there is one to tell."""
        if reason:
            self.log.client.set_tag(self.run_id, names.FAILURE, reason)
        self.log.end("FAILED")

    def _finals(self, result: ReplicaResults, with_model: bool) -> None:
        metrics = {names.SECONDS: time.perf_counter() - self.started, names.SEEDS_TRAINED: len(result.seeds)}
        if result.epochs:
            metrics |= {
                names.VAL_SCORE: result.val_score,
                names.TEST_MIN_LAST3: result.test_min_last3,
                names.TEST_LAST: result.epochs[-1].test_acc,
                # 4 decimals: a runs table shows -7.13, not float noise (-7.1300000000000034)
                names.GAP_TEST: round((result.test_min_last3 - TARGET) * 100, 4),
                names.GAP_VAL: round((result.val_score - TARGET) * 100, 4),
            }
            self.log.client.set_tag(self.run_id, names.TARGET_MET, str(result.target_met(TARGET)).lower())
        if len(result.seeds) > 1 and result.results[0].epochs:
            metrics[names.VAL_WORST] = result.val_worst
            for seed, own in zip(result.seeds, result.results):
                metrics[names.seed_metric(seed, names.VAL_SCORE)] = own.val_score
                metrics[names.seed_metric(seed, names.TEST_MIN_LAST3)] = own.test_min_last3
            if with_model:
                self.log.client.set_tag(self.run_id, names.MODEL_SEED, str(result.seeds[result.best]))
        self.log.metrics({k: v for k, v in metrics.items() if math.isfinite(v)})  # no val split: no val score
