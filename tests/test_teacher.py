"""Knowledge distillation: the loss, the teacher's checks (never one that saw the validation
images), and training with a teacher — per replica exactly as alone, on real images."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from mnist_search.cli import app
from mnist_search.core.config import ArchSpec, ConfigError, Recipe, experiment_to_yaml
from mnist_search.core.model import build_model
from mnist_search.training.teacher import check_teacher, distill_loss, load_teacher
from mnist_search.training.train import fit
from mnist_search.workflows.export import export_model

from .conftest import REPO
from .test_packed import SEEDS, SPEC, assert_each_replica_is_its_run_alone, small

TEACHER_SPEC = ArchSpec(stages=[[8, 10], [10, 12]], transitions=[8], batchnorm=True)


def write_teacher(folder, val_size: int, spec: ArchSpec = TEACHER_SPEC, seed: int = 3):
    """A teacher folder as `verify --out` writes one, trained with `val_size` held out."""
    export_model(build_model(spec, seed=seed), folder)
    (folder / "experiment.yaml").write_text(experiment_to_yaml(spec, Recipe(val_size=val_size)))
    return folder


def test_the_loss_is_cross_entropy_at_weight_0_and_the_tempered_kl_at_weight_1():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 3, 10, generator=g), torch.randn(5, 3, 10, generator=g)
    y = torch.randint(0, 10, (5, 3), generator=g)
    ce = F.cross_entropy(student.transpose(1, 2), y, reduction="none")
    torch.testing.assert_close(distill_loss(student, teacher, y, 0.0, 4.0), ce)
    t = 4.0
    kl = F.kl_div(
        F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True, reduction="none"
    )
    torch.testing.assert_close(distill_loss(student, teacher, y, 1.0, t), t * t * kl.sum(-1))
    mixed = distill_loss(student, teacher, y, 0.9, t)
    torch.testing.assert_close(mixed, 0.1 * ce + 0.9 * t * t * kl.sum(-1))
    # a student that already outputs the teacher's logits owes the teacher nothing
    assert distill_loss(teacher, teacher, y, 1.0, t).abs().max() < 1e-6
    assert mixed.shape == (5, 3) and bool((mixed > 0).all())


def test_a_teacher_that_trained_on_the_validation_images_is_refused(tmp_path):
    full = write_teacher(tmp_path / "all-60k", val_size=0)
    with pytest.raises(ConfigError, match=r"trained on 10,000 of the 10,000 validation images"):
        check_teacher(Recipe(val_size=10_000, teacher=str(full)))
    part = write_teacher(tmp_path / "held-5k", val_size=5_000)
    with pytest.raises(ConfigError, match=r"trained on 5,000 of the 10,000 validation images"):
        check_teacher(Recipe(val_size=10_000, teacher=str(part)))
    # it held out this run's split (the first val_size of one fixed permutation), or there is none
    check_teacher(Recipe(val_size=5_000, teacher=str(part)))
    check_teacher(Recipe(val_size=10_000, teacher=str(write_teacher(tmp_path / "held-10k", val_size=10_000))))
    check_teacher(Recipe(val_size=0, teacher=str(full)))  # verify: all 60k, no validation split
    check_teacher(Recipe())  # no teacher, nothing to check


def test_a_teacher_folder_that_is_not_one_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        check_teacher(Recipe(val_size=0, teacher=str(tmp_path / "nowhere")))
    half = tmp_path / "half"
    export_model(build_model(TEACHER_SPEC), half)  # no experiment.yaml: which images it saw is unknown
    with pytest.raises(ConfigError, match="missing experiment.yaml"):
        check_teacher(Recipe(val_size=0, teacher=str(half)))
    wrong = write_teacher(tmp_path / "wrong", val_size=10_000)
    other = ArchSpec(stages=[[4, 6], [6, 8]], transitions=[4])
    torch.save(build_model(other).state_dict(), wrong / "state_dict.pt")  # weights of another spec
    with pytest.raises(ConfigError, match="state_dict.pt does not load into its spec"):
        check_teacher(Recipe(val_size=0, teacher=str(wrong)))


def test_the_loaded_teacher_is_the_exported_network_frozen(tmp_path, mnist):
    folder = write_teacher(tmp_path / "t", val_size=10_000)
    original = build_model(TEACHER_SPEC, seed=3).eval()
    teacher = load_teacher(Recipe(teacher=str(folder)), torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x = mnist.test.x[:16]
    torch.testing.assert_close(teacher(x), original(x))


@pytest.mark.slow  # ~11 s: a teacher and two trainings
def test_with_a_teacher_replica_k_of_a_packed_run_still_matches_a_run_alone(tmp_path, mnist):
    """As test_packed's equivalence test, with a teacher: each replica's images go through the
    teacher, so each is still exactly its own training (float64, the teacher too)."""
    data = small(mnist, 448, dtype=torch.float64)
    folder = write_teacher(tmp_path / "t", val_size=10_000)
    recipe = Recipe(epochs=2, batch_size=64, rotation=8, precise_bn=256, lr=0.05, teacher=str(folder))
    *_, alone = assert_each_replica_is_its_run_alone(data, recipe)
    # ... and the teacher changed the training: the same seed without it ends elsewhere
    plain = build_model(SPEC, seed=SEEDS[0]).double()
    without = fit(
        plain, data, recipe.model_copy(update={"teacher": None}), torch.device("cpu"), seed=SEEDS[0]
    )
    assert without.epochs[-1].train_loss != pytest.approx(alone[0][0].epochs[-1].train_loss, abs=1e-6)


def test_a_student_learns_from_the_committed_teacher_on_real_images(mnist):
    """The verified 8k net of results/budget-8k (99.52 % on test) teaching a 1,000-param student
    for one epoch on 4,000 real training images: above chance, and ahead of the same student
    (same seed, same batches) taught by the labels alone (measured: 0.40 against 0.34)."""
    recipe = Recipe(epochs=1, batch_size=64, lr=0.05, schedule="onecycle", val_size=0)
    taught = recipe.model_copy(update={"teacher": str(REPO / "results" / "budget-8k")})
    check_teacher(taught)
    spec = ArchSpec(stages=[[6, 8], [8, 10]], transitions=[6], separable=True)
    data = small(mnist, 4_000)
    accs = {}
    for name, r in {"labels": recipe, "teacher": taught}.items():
        result = fit(build_model(spec, seed=0), data, r, torch.device("cpu"), seed=0)
        assert math.isfinite(result.epochs[-1].train_loss)
        accs[name] = result.epochs[-1].test_acc
    assert accs["teacher"] > 0.3  # chance is 0.1
    assert accs["teacher"] > accs["labels"] + 0.03, accs


runner = CliRunner()


def test_train_with_a_teacher_that_saw_the_validation_images_exits_2_writing_nothing(tmp_path, store):
    full = write_teacher(tmp_path / "teacher", val_size=0)
    exp = tmp_path / "student.yaml"
    exp.write_text(experiment_to_yaml(SPEC, Recipe(epochs=1, teacher=str(full))))
    result = runner.invoke(app, ["train", str(exp), "--limit-train", "256"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "trained on 10,000 of the 10,000 validation images" in lines[0]
    assert "Traceback" not in result.output
    assert not store.exists()  # nothing written to the store
