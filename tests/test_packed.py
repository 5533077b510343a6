"""Packed replicas: K trainings of one spec as one grouped network, each exactly an independent
training (its own initialisation, shuffling, augmentation, dropout, BatchNorm statistics, loss)."""

from __future__ import annotations

import pytest
import torch

from mnist_search.core.config import ArchSpec, Recipe
from mnist_search.core.data import MNISTData, Split
from mnist_search.core.model import build_model, count_params
from mnist_search.speed.layout import LAYOUTS, pick_layout, step_ms
from mnist_search.speed.packed import PackedNet, pack, unpack
from mnist_search.training.train import evaluate, fit, fit_replicas

# Every layer kind: dropout, BatchNorm, a transition, a k x k conv head.
SPEC = ArchSpec(stages=[[6, 8], [8, 10]], transitions=[6], batchnorm=True, dropout=0.1, head="conv")
# ... and depthwise convs: groups of one channel per replica and channel.
SEPARABLE = SPEC.model_copy(update={"separable": True})
# ... and the anti-aliased pool: a fixed blur over every channel of the pack at once.
BLUR = SEPARABLE.model_copy(update={"pool": "blur"})
SEEDS = (4, 11, 7)


def small(mnist, n_train: int, n_eval: int = 500, dtype=torch.float32) -> MNISTData:
    def split(s: Split, n: int) -> Split:
        return Split(s.x[:n].to(dtype), s.y[:n])

    return MNISTData(split(mnist.train, n_train), split(mnist.val, n_eval), split(mnist.test, n_eval))


@pytest.mark.parametrize("layout", LAYOUTS)
# The plain layout in the quick set; the separable and blur ones (~13 s each) in the full suite.
@pytest.mark.parametrize(
    "spec",
    [SPEC, pytest.param(SEPARABLE, marks=pytest.mark.slow), pytest.param(BLUR, marks=pytest.mark.slow)],
    ids=["plain", "separable", "blur"],
)
def test_pack_and_unpack_are_exact_and_the_packed_forward_is_each_replicas_forward(mnist, spec, layout):
    models = [build_model(spec, seed=s).eval() for s in SEEDS]
    net = pack(models, layout).eval()
    assert net.layout == layout and net.replicas == len(SEEDS)
    assert sum(p.numel() for p in net.parameters()) == len(SEEDS) * count_params(spec)
    x = mnist.test.x[:32]
    out = net(x.expand(-1, len(SEEDS), -1, -1))
    assert out.shape == (32, len(SEEDS), 10)
    for k, model in enumerate(models):
        torch.testing.assert_close(out[:, k], model(x), atol=1e-5, rtol=1e-5)
        back = unpack(net, k)  # loads strictly into a plain TinyNet
        assert type(back).__name__ == "TinyNet"
        for key, value in model.state_dict().items():
            assert torch.equal(back.state_dict()[key], value), key


def assert_each_replica_is_its_run_alone(data, recipe: Recipe, spec: ArchSpec = SPEC) -> list:
    """Train `spec` alone with each of SEEDS, then packed with all of them: replica k's losses,
    accuracies and final weights are its run alone's (float64: 1e-9). Returns what the packed
    run passed to its callback (per epoch), what it returned, and the runs alone as
    (FitResult, model)."""
    alone = []
    for seed in SEEDS:
        model = build_model(spec, seed=seed).double()
        alone.append((fit(model, data, recipe, torch.device("cpu"), seed=seed), model))
    seen = []
    net = pack([build_model(spec, seed=s).double() for s in SEEDS])
    packed = fit_replicas(net, data, recipe, torch.device("cpu"), seen.append, seeds=SEEDS)
    for k, (result, model) in enumerate(alone):
        for mine, theirs in zip(packed[k].epochs, result.epochs, strict=True):
            assert mine.train_loss == pytest.approx(theirs.train_loss, abs=1e-9)
            assert mine.val_loss == pytest.approx(theirs.val_loss, abs=1e-9)
            assert (mine.train_acc, mine.val_acc, mine.test_acc) == (
                theirs.train_acc,
                theirs.val_acc,
                theirs.test_acc,
            )
        replica = unpack(net, k)
        for key, value in model.state_dict().items():
            torch.testing.assert_close(replica.state_dict()[key], value, atol=1e-9, rtol=1e-9, msg=key)
    # ... and the replicas really differ from one another (their own seeds, not one run thrice).
    assert packed[0].epochs[-1].train_loss != packed[1].epochs[-1].train_loss
    return seen, packed, alone


@pytest.mark.parametrize("spec", [SPEC, SEPARABLE, BLUR], ids=["plain", "separable", "blur"])
def test_replica_k_of_a_packed_run_matches_a_run_alone_with_seed_k(mnist, spec):
    """14 steps (7 batches x 2 epochs) with rotation, translation, dropout and BatchNorm
    re-estimation: each replica ends where the same spec trained alone with its seed ends.

    In float64, so that the comparison is tight: a grouped convolution rounds differently from a
    plain one (about 1e-7 in float32), and 14 steps of SGD amplify that to 1e-2 in some weights;
    in float64 the same runs agree to about 1e-14."""
    data = small(mnist, 448, dtype=torch.float64)
    recipe = Recipe(epochs=2, batch_size=64, rotation=8, translate=0.05, precise_bn=256, lr=0.05)
    seen, packed, _ = assert_each_replica_is_its_run_alone(data, recipe, spec)
    assert [len(epoch) for epoch in seen] == [3, 3]  # per-replica results through the callback
    for k in range(len(SEEDS)):
        assert [seen[e][k] for e in range(2)] == packed[k].epochs


def test_in_the_separate_layout_replica_k_trains_exactly_as_the_run_alone_with_seed_k(mnist):
    """The "separate" layout (packed.py) runs each replica's own small network: in float32, with
    rotation, translation, dropout and BatchNorm re-estimation, every replica's weights and
    accuracies are exactly those of `fit` with its seed."""
    data = small(mnist, 448)
    recipe = Recipe(epochs=2, batch_size=64, rotation=8, translate=0.05, precise_bn=256, lr=0.05)
    net = pack([build_model(SEPARABLE, seed=s) for s in SEEDS], "separate")
    packed = fit_replicas(net, data, recipe, torch.device("cpu"), seeds=SEEDS)
    for k, seed in enumerate(SEEDS):
        model = build_model(SEPARABLE, seed=seed)
        alone = fit(model, data, recipe, torch.device("cpu"), seed=seed)
        for mine, theirs in zip(packed[k].epochs, alone.epochs, strict=True):
            # (the mean loss is summed over the pack's (B, K) losses: its last bits may differ)
            assert mine.train_loss == pytest.approx(theirs.train_loss, rel=1e-6)
            assert (mine.train_acc, mine.val_acc, mine.test_acc) == (
                theirs.train_acc,
                theirs.val_acc,
                theirs.test_acc,
            )
        for key, value in model.state_dict().items():
            assert torch.equal(unpack(net, k).state_dict()[key], value.cpu()), key
    assert packed[0].epochs[-1].train_loss != packed[1].epochs[-1].train_loss


def test_the_layout_is_pinned_by_the_setting_and_otherwise_measured(monkeypatch):
    """MNIST_SEARCH_PACK pins the layout; a pack of one needs no choice; on the CPU `auto` times
    both layouts (real steps: each a positive number of milliseconds) and returns one of them."""
    cpu = torch.device("cpu")
    for layout in LAYOUTS:
        monkeypatch.setenv("MNIST_SEARCH_PACK", layout)
        assert pick_layout(SEPARABLE, 3, 32, cpu) == layout
    monkeypatch.setenv("MNIST_SEARCH_PACK", "auto")
    assert pick_layout(SEPARABLE, 1, 32, cpu) == "grouped"
    assert pick_layout(SEPARABLE, 3, 32, cpu, steps=1) in LAYOUTS
    assert all(step_ms(SEPARABLE, 3, 32, layout, steps=1) > 0 for layout in LAYOUTS)
    before = torch.random.get_rng_state()
    pick_layout(SEPARABLE, 3, 32, cpu, steps=1)
    assert torch.equal(torch.random.get_rng_state(), before)  # the choice leaves the global RNG alone


def test_the_replicas_do_not_share_gradients(mnist):
    """A replica whose learning stops (its weights zeroed, so its loss is constant) leaves the
    others' training exactly as it was."""
    data = small(mnist, 256)
    recipe = Recipe(epochs=1, batch_size=64, rotation=0, precise_bn=0, lr=0.05)
    ref = pack([build_model(SPEC, seed=s) for s in SEEDS[:2]])
    fit_replicas(ref, data, recipe, torch.device("cpu"), seeds=SEEDS[:2])
    dead = build_model(SPEC, seed=SEEDS[1])
    for p in dead.parameters():
        torch.nn.init.zeros_(p)
    net = pack([build_model(SPEC, seed=SEEDS[0]), dead])
    fit_replicas(net, data, recipe, torch.device("cpu"), seeds=SEEDS[:2])
    for key, value in unpack(ref, 0).state_dict().items():
        assert torch.equal(unpack(net, 0).state_dict()[key], value), key


def test_a_pack_of_one_is_fit(mnist):
    """`fit` trains one network as a pack of one; the model it was given holds the weights."""
    data = small(mnist, 256)
    recipe = Recipe(epochs=1, batch_size=64, rotation=4)
    model = build_model(SPEC, seed=2)
    result = fit(model, data, recipe, torch.device("cpu"), seed=2)
    net = pack([build_model(SPEC, seed=2)])
    (packed,) = fit_replicas(net, data, recipe, torch.device("cpu"), seeds=[2])
    assert packed.epochs[0].train_loss == result.epochs[0].train_loss
    replica = unpack(net, 0)
    for key, value in replica.state_dict().items():
        assert torch.equal(model.state_dict()[key].cpu(), value), key
    # (Compared in one layout: fit leaves the model channels-last, and in another layout the
    # convolutions round differently, ~1e-8 in the loss.)
    model = model.cpu().to(memory_format=torch.contiguous_format)
    assert evaluate(model, data.test) == evaluate(replica, data.test)


def test_mismatched_seeds_and_specs_are_refused():
    with pytest.raises(ValueError, match="3 replicas need 3 seeds"):
        fit_replicas(PackedNet(SPEC, 3), None, Recipe(), torch.device("cpu"), seeds=[1])
    other = ArchSpec(stages=[[4]], head="gap")
    with pytest.raises(ValueError, match="same spec"):
        pack([build_model(SPEC), build_model(other)])
    with pytest.raises(IndexError):
        unpack(PackedNet(SPEC, 2), 2)


@pytest.mark.slow
def test_a_study_with_seeds_scores_the_mean_records_the_worst_and_shows_every_seed(store, data_dir, tmp_path):
    """recipe.replicas: 3 -- one trial trains 3 packed replicas; its objective is their mean
    validation score, the worst is recorded, MLflow has each seed's curves and final figures,
    and the trial's model is the seed with the best validation score; the pack's layout is recorded."""
    import optuna

    from mnist_search.cli import app
    from mnist_search.search.storage import open_storage

    from .conftest import TINY, local_client, runner

    (tmp_path / "tiny3.yaml").write_text(TINY.replace("batch_size: 64}", "batch_size: 64, seeds: 3}"))
    result = runner.invoke(app, ["study", "--experiment", "tiny3.yaml", "--fidelity", "full", "--trials", "1", "--limit-train", "1500",
                                 "--data-dir", str(data_dir), "--device", "cpu", "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    study = optuna.load_study(
        study_name="tiny3-b8000", storage=open_storage(str(store / "optuna-journal.log"))
    )
    (trial,) = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert trial.user_attrs["seeds"] == [3 * trial.number + k for k in range(3)]
    client = local_client(store)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("mnist-search-studies").experiment_id], "tags.kind = 'trial'"
    )
    m = run.data.metrics
    scores = {s: m[f"seed_{s}/final/val_acc_last3"] for s in trial.user_attrs["seeds"]}
    assert len(set(scores.values())) > 1  # three trainings, not one thrice
    assert trial.value == pytest.approx(sum(scores.values()) / 3, abs=1e-12)
    assert m["final/val_acc_last3"] == pytest.approx(trial.value, abs=1e-12)
    assert trial.user_attrs["val_acc_worst"] == m["final/val_acc_last3_worst"] == min(scores.values())
    assert m["final/test_acc_min_last3"] == min(m[f"seed_{s}/final/test_acc_min_last3"] for s in scores)
    assert int(run.data.tags["model_seed"]) == max(scores, key=scores.get)
    assert run.data.params["seeds"] == ",".join(map(str, scores)) and "seed" not in run.data.params
    # How its replicas were laid out (measured on this machine: either), in the journal and MLflow.
    assert trial.user_attrs["pack_layout"] in LAYOUTS
    assert run.data.tags["pack_layout"] == trial.user_attrs["pack_layout"]
    for s in scores:
        assert [p.step for p in client.get_metric_history(run.info.run_id, f"seed_{s}/val/acc")] == [1, 2]
