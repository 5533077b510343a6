"""The Model Registry: one registered model per budget, whose versions are trained trials.

Alias `best`: the version with the highest validation score that a study registered (its best
trial, as the study goes: each time a trial completes ahead of the others). Alias `champion`: the model a `verify` of the full protocol (60,000 images, 15 epochs,
3 seeds) confirmed on the test set, every seed holding the target; the verify table is its
description. Any other verify is registered without the alias, tagged with its protocol. Every
version takes raw [0, 1] pixels (see `RunLog.model`), so `mlflow.pyfunc.load_model("models:/mnist-search-b8000@champion")` predicts on raw digits."""

from __future__ import annotations

import mlflow

from mnist_search.tracking.client import race_tolerant

BEST, CHAMPION = "best", "champion"


def registered_name(budget: int) -> str:
    return f"mnist-search-b{budget}"


def register(
    client: mlflow.MlflowClient,
    run_id: str,
    budget: int,
    tags: dict[str, str],
    description: str = "",
) -> str:
    """The run's logged model as a version of the budget's registered model (the same run twice
    gives the existing version): its version number. Workers registering one run at the same
    moment may each create a version (check, then create); each then keeps the lowest-numbered
    version of the run and deletes the others, so they agree on one."""
    name = registered_name(budget)
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        try:
            client.create_registered_model(
                name, description=f"MNIST classifiers under {budget:,} parameters, found by mnist-search. "
                "Input: raw pixels in [0, 1], shape (N, 1, 28, 28), float32; output: 10 logits."
            )  # fmt: skip
        except mlflow.exceptions.MlflowException as exc:  # a worker beside us made it first
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    for version in client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
        if description:
            client.update_model_version(name, version.version, description=description)
        return version.version
    outputs = client.get_run(run_id).outputs  # MLflow 3: the run's logged models
    model = outputs.model_outputs if outputs is not None else []
    source = f"models:/{model[0].model_id}" if model else f"runs:/{run_id}/model"
    client.create_model_version(
        name, source, run_id=run_id, tags=tags, description=description or None,
        model_id=model[0].model_id if model else None,
    )  # fmt: skip
    return _one_version(client, name, run_id)


def _one_version(client: mlflow.MlflowClient, name: str, run_id: str) -> str:
    """The run's lowest-numbered version, once any duplicates (a registration race) are gone."""
    versions = sorted(
        (v.version for v in client.search_model_versions(f"name='{name}' and run_id='{run_id}'")), key=int
    )
    for duplicate in versions[1:]:
        try:
            client.delete_model_version(name, duplicate)
        except mlflow.exceptions.MlflowException as exc:  # the other worker deleted it first
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
    return versions[0]


def point_best(client: mlflow.MlflowClient, budget: int) -> str | None:
    """Alias `best` onto the version with the highest `val_acc` tag among those scored on all their
    seeds (`all_seeds`, as the study ranks: one seed never outranks a mean of seeds); its version."""
    name = registered_name(budget)
    scored = [v for v in client.search_model_versions(f"name='{name}'") if "val_acc" in v.tags]
    if not scored:
        return None
    top = max(
        scored,
        key=lambda v: (v.tags.get("all_seeds", "true") == "true", float(v.tags["val_acc"]), -int(v.version)),
    )
    race_tolerant(client.set_registered_model_alias, name, BEST, top.version)  # workers ending together
    return top.version


def crown(
    client: mlflow.MlflowClient,
    run_id: str,
    budget: int,
    held: bool,
    mean: float,
    tags: dict[str, str],
    table: str,
) -> tuple[str, bool]:
    """Register a verified run (the verify table its description, its protocol among `tags`) and,
    when it `held` the target on the full protocol, point `champion` at it unless the current
    champion has a better mean test accuracy: (its version, whether it is the champion now).
    A verify that did not hold the target, or ran a shorter protocol (a smoke run), never takes
    the alias."""
    name = registered_name(budget)
    score = {"target_held": str(held).lower(), "test_acc_mean": f"{mean:.6f}"}
    version = register(client, run_id, budget, tags | score, description=table)
    for key, value in score.items():  # a version registered before (by a study) gets them now
        client.set_model_version_tag(name, version, key, value)
    if not held:
        return version, False
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        current = None
    if current is not None and current.version != version and "test_acc_mean" in current.tags:
        theirs = (current.tags.get("target_held") == "true", float(current.tags["test_acc_mean"]))
        if theirs >= (held, mean):
            return version, False
    client.set_registered_model_alias(name, CHAMPION, version)
    return version, True
