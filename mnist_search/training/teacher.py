"""Knowledge distillation: the teacher a recipe names, checked, loaded, and the loss it adds.

A teacher is a folder as `export` or `verify --out` writes it: `spec.yaml` and `state_dict.pt` (the network)
and `experiment.yaml` (its recipe, whose `val_size` says which training images it never saw).
The validation split is a fixed seeded draw, the first `val_size` of one permutation of the 60k
(data.py), so a teacher trained with `val_size` V held out the first V: it never saw a student's
validation images exactly when V is at least the student's `val_size`. A teacher that saw them
would pass their labels on through its outputs and flatter every validation score, so that is
refused before anything is written. (A teacher trained on all 60k, `verify --out`'s own, may
teach a `verify` run, which has no validation split; no teacher ever trains on the test set.)
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mnist_search.core.config import ConfigError, Experiment, Recipe, load_experiment
from mnist_search.core.model import TinyNet, build_model

FILES = ("spec.yaml", "state_dict.pt", "experiment.yaml")


def _load(path: Path, where: str) -> Experiment:
    """An experiment file of the teacher's folder, read as every experiment file is."""
    try:
        return load_experiment(path)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_teacher(recipe: Recipe) -> None:
    """ConfigError (one line) unless `recipe.teacher` is a readable teacher that never trained on
    the recipe's validation images; nothing to check without a teacher."""
    if recipe.teacher is None:
        return
    where = f"recipe.teacher {recipe.teacher}"
    folder = Path(recipe.teacher)
    if not folder.is_dir():
        raise ConfigError(f"{where}: not a folder (a `verify --out` folder: {', '.join(FILES)})")
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    held_out = _load(folder / "experiment.yaml", where).recipe.val_size
    if held_out < recipe.val_size:
        raise ConfigError(
            f"{where}: it trained on {recipe.val_size - held_out:,} of the {recipe.val_size:,} validation "
            f"images of this run (its val_size {held_out:,}); use a teacher trained with them held out"
        )
    load_teacher(recipe, torch.device("cpu"))  # the weights must load, strictly


def load_teacher(recipe: Recipe, device: torch.device, dtype: torch.dtype = torch.float32) -> TinyNet:
    """The recipe's teacher on `device` in `dtype` (the training images'), in evaluation mode,
    frozen, channels-last."""
    where = f"recipe.teacher {recipe.teacher}"
    folder = Path(str(recipe.teacher))
    spec = _load(folder / "spec.yaml", where).spec
    if spec is None:
        raise ConfigError(f"{where}: spec.yaml has no `spec`")
    model = build_model(spec)
    try:
        state = torch.load(folder / "state_dict.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (OSError, RuntimeError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"{where}: state_dict.pt does not load into its spec ({exc.__class__.__name__})"
        ) from None
    model.eval().requires_grad_(False)
    return model.to(device, dtype, memory_format=torch.channels_last)


@torch.no_grad()
def teacher_logits(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The teacher's logits for packed images (B, K, 28, 28), replica k's in channel k: (B, K, 10)."""
    b, k = x.shape[:2]
    flat = x.reshape(b * k, 1, *x.shape[2:]).contiguous(memory_format=torch.channels_last)
    return teacher(flat).float().view(b, k, -1)


def distill_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    y: torch.Tensor,
    weight: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-sample loss (B, K) for student logits (B, K, 10), teacher logits alike and labels
    (B, K): (1 - weight) * cross-entropy + weight * T² * KL(softmax(teacher/T) || softmax(student/T)).
    T² keeps the soft term's gradients at the scale of the hard one's as T changes."""
    hard = F.cross_entropy(logits.transpose(1, 2), y, label_smoothing=label_smoothing, reduction="none")
    log_p = F.log_softmax(logits / temperature, dim=-1)
    log_q = F.log_softmax(targets / temperature, dim=-1)
    soft = (log_q.exp() * (log_q - log_p)).sum(-1)
    return (1 - weight) * hard + weight * temperature**2 * soft
