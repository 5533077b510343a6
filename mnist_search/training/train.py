"""Training and evaluation of one network on in-memory MNIST; reports through a callback only.

The data stays on the device as whole tensors. Each epoch draws one permutation, slices batches
from it and augments each batch with one batched warp, affine or elastic (no per-sample work, no
DataLoader).
`fit` never prints or logs: it calls `on_epoch(EpochResult)` and whoever called it decides.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mnist_search.core.config import INPUT_SIZE, ArchSpec, Recipe
from mnist_search.core.data import MNISTData, Split
from mnist_search.core.errors import NonFiniteLoss
from mnist_search.core.results import EpochResult, FitResult, ReplicaResults
from mnist_search.speed.layout import pack_seeds
from mnist_search.speed.packed import PackedNet, SeparatePack, pack, unpack
from mnist_search.speed.precision import low_precision
from mnist_search.training.averaging import WeightAverage
from mnist_search.training.teacher import distill_loss, load_teacher, teacher_logits

# Images per no-grad forward pass when measuring. On CPU small batches stay in cache: measured on
# 2 cores, 10k test images of seed model 2 took 0.53 s at 128 and 1.78 s at 2,000.
EVAL_BATCH = {"cpu": 128, "cuda": 4_096}


AUGMENTATIONS = ("rotation", "translate", "scale", "elastic")  # the recipe's warps; 0 each: none


def warp_params(n: int, recipe: Recipe, generator: torch.Generator | None) -> torch.Tensor | None:
    """n random warps drawn from `generator`: affine (rotation / translation / scale) as (n, 2, 3),
    or, with `recipe.elastic`, whole sampling grids (n, 28, 28, 2) with the elastic displacement
    added; None when the recipe augments nothing."""
    if not any(getattr(recipe, name) for name in AUGMENTATIONS):
        return None
    device = generator.device if generator else "cpu"

    def uniform(bound: float) -> torch.Tensor:
        u = torch.rand(n, generator=generator, device=device)
        return (u * 2 - 1) * bound

    angle = uniform(math.radians(recipe.rotation))
    zoom = 1 + uniform(recipe.scale)
    shift = torch.stack([uniform(2 * recipe.translate), uniform(2 * recipe.translate)], 1)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    if recipe.elastic == 0:
        return theta
    size = [n, 1, INPUT_SIZE, INPUT_SIZE]
    grid = F.affine_grid(theta, size, align_corners=False)  # (n, 28, 28, 2), in [-1, 1]
    moves = torch.rand(n, 2, INPUT_SIZE, INPUT_SIZE, generator=generator, device=device) * 2 - 1
    moves = smooth(moves, recipe.elastic_sigma) * (recipe.elastic * 2 / INPUT_SIZE)  # pixels -> [-1, 1]
    return grid + moves.permute(0, 2, 3, 1)


def smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each channel of (N, C, H, W) blurred by a Gaussian of `sigma` pixels (zeros outside)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    rows = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, radius), groups=c)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(radius, 0), groups=c)


def warp(x: torch.Tensor, theta: torch.Tensor | None) -> torch.Tensor:
    """Apply per-image warps with one grid sample: `theta` affine (N, 2, 3) or sampling grids
    (N, H, W, 2) (the identity when None)."""
    if theta is None:
        return x
    grid = theta.to(x) if theta.dim() == 4 else F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    # Normalised background is (0 - MEAN) / STD; pad with the border (background) value.
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def augment(x: torch.Tensor, recipe: Recipe, generator: torch.Generator | None) -> torch.Tensor:
    """Random rotation / translation / scale / elastic distortion of a whole batch with one grid
    sample."""
    return warp(x, warp_params(x.shape[0], recipe, generator))


@torch.no_grad()
def evaluate(model: nn.Module, split: Split) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) over a split, in large no-grad batches."""
    model.eval()
    loss_sum, correct = 0.0, 0
    batch = EVAL_BATCH.get(split.x.device.type, 1_024)
    for start in range(0, len(split), batch):
        x = split.x[start : start + batch]
        y = split.y[start : start + batch]
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    n = max(1, len(split))
    return loss_sum / n, correct / n


def batch_bounds(n: int, size: int) -> list[tuple[int, int]]:
    """[start, end) of each batch of `size` over n images. Never a batch of one image: BatchNorm
    cannot normalise a lone 1x1 feature map in training ("Expected more than 1 value per
    channel"), so a single image left over joins the batch before it."""
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, [*starts[1:], n]))


def recompute_bn_stats(model: nn.Module, x: torch.Tensor) -> None:
    """Replace every BatchNorm's running mean/variance by their plain average over `x` (torch's
    `update_bn`: reset, momentum None, one train-mode pass without gradients)."""
    batch = EVAL_BATCH.get(x.device.type, 1_024)
    torch.optim.swa_utils.update_bn([x[a:b] for a, b in batch_bounds(len(x), batch)], model)


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    params = model.parameters()
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay, nesterov=False
        )
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


class _HoldAfter:
    """Steps `scheduler` `steps` times, then leaves the rate where it ended (OneCycleLR raises
    when stepped past its total)."""

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> None:
        self.scheduler, self.left = scheduler, steps

    def step(self) -> None:
        if self.left > 0:
            self.left -= 1
            self.scheduler.step()


def make_scheduler(optimizer, recipe: Recipe, steps_per_epoch: int, epochs: int):
    """Stepped once per batch. OneCycle peaks at recipe.lr; step multiplies by step_gamma."""
    if recipe.schedule == "onecycle":
        cycle = min(recipe.cycle_epochs or epochs, epochs)
        one_cycle = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=recipe.lr,
            total_steps=cycle * steps_per_epoch,
            final_div_factor=recipe.final_div_factor,
        )
        if cycle == epochs:
            return one_cycle
        # OneCycleLR reaches its floor after total_steps - 1 steps (one more overshoots it).
        return _HoldAfter(one_cycle, cycle * steps_per_epoch - 1)
    if recipe.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=recipe.step_epochs * steps_per_epoch, gamma=recipe.step_gamma
        )
    return None


def fit(
    model: nn.Module,
    data: MNISTData,
    recipe: Recipe,
    device: torch.device,
    on_epoch: Callable[[EpochResult], None] | None = None,
    *,
    seed: int = 0,
) -> FitResult:
    """Train one network (a pack of one: the same code as `fit_replicas`); `model` holds the
    trained weights afterwards (their moving average with `recipe.ema`), on `device`."""
    net = pack([model])
    results = fit_replicas(
        net,
        data,
        recipe,
        device,
        (lambda rs: on_epoch(rs[0])) if on_epoch is not None else None,
        seeds=[seed],
    )
    model.load_state_dict(unpack(net, 0).state_dict())
    model.to(device, memory_format=torch.channels_last)
    return results[0]


def fit_replicas(
    net: PackedNet | SeparatePack,
    data: MNISTData,
    recipe: Recipe,
    device: torch.device,
    on_epoch: Callable[[list[EpochResult]], None] | None = None,
    *,
    seeds: Sequence[int],
    on_step: Callable[[int, float], None] | None = None,
) -> list[FitResult]:
    """Train the K replicas of `net` for `recipe.epochs`, replica k as an independent training
    with seed `seeds[k]`: its own shuffling, augmentation and dropout (generators seeded with its
    seed), its own BatchNorm statistics, its own loss (summed: the gradients never mix). Measures
    val and test after every epoch and reports per replica: `on_epoch([EpochResult] * K)`.

    `data` should already be on `device`. Raises NonFiniteLoss when a replica's loss becomes
    NaN/inf. `on_epoch` may raise to stop early (pruning); `on_step(epoch, share of it trained)`
    follows the steps within an epoch. With `recipe.ema` every figure is of
    the averaged weights (with `recipe.swa_from`, from that epoch on), and `net` holds them at
    the end."""
    k = net.replicas
    if len(seeds) != k:
        raise ValueError(f"{k} replicas need {k} seeds, got {len(seeds)}")
    epochs = recipe.epochs
    # channels_last: measured 10-15 % faster per step on CPU (max-pool alone ~10x) for these nets.
    net.to(device, memory_format=torch.channels_last)
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]  # shuffling, augmentation
    net.set_dropout_generators([torch.Generator(device=device).manual_seed(s) for s in seeds])
    optimizer = make_optimizer(net, recipe)
    n = len(data.train)
    scheduler = make_scheduler(optimizer, recipe, len(batch_bounds(n, recipe.batch_size)), epochs)
    teacher = load_teacher(recipe, device, data.train.x.dtype) if recipe.teacher is not None else None
    average = WeightAverage(net, recipe.ema, seeds, device) if recipe.ema is not None else None
    measured = net if average is None else average.module  # what every epoch's figures are of
    results = [FitResult() for _ in seeds]
    for epoch in range(1, epochs + 1):
        if epoch == recipe.swa_from:  # the plain mean of every step's weights from here on
            average = WeightAverage(net, None, seeds, device)
            measured = average.module
        start = time.perf_counter()
        orders = torch.stack([torch.randperm(n, generator=g, device=device) for g in gens])  # (K, n)
        this = unaugmented(recipe) if epoch > epochs - recipe.clean_epochs else recipe
        steps = None if on_step is None else (lambda done, of, epoch=epoch: on_step(epoch, done / of))
        losses, accs = train_epoch(
            net, data, this, orders, optimizer, scheduler, gens,
            teacher=teacher, average=average, on_step=steps,
        )  # fmt: skip
        for seed, loss in zip(seeds, losses):
            if not math.isfinite(loss):
                raise NonFiniteLoss(
                    f"training loss became {loss} in epoch {epoch}" + (f" (seed {seed})" if k > 1 else "")
                )
        if recipe.precise_bn:
            recompute_bn_stats(measured, _replica_images(data.train.x, orders[:, : recipe.precise_bn]))
        nan = (float("nan"), float("nan"))
        val = evaluate_replicas(measured, data.val) if len(data.val) else [nan] * k
        test = evaluate_replicas(measured, data.test)
        lr = optimizer.param_groups[0]["lr"]
        seconds = time.perf_counter() - start
        epoch_results = [
            EpochResult(epoch, losses[i], accs[i], *val[i], *test[i], lr=lr, epoch_seconds=seconds)
            for i in range(k)
        ]
        for result, r in zip(results, epoch_results):
            result.epochs.append(r)
        if on_epoch is not None:
            on_epoch(epoch_results)
    if average is not None:  # hand out what was measured
        net.load_state_dict(average.module.state_dict())
    return results


def train_seeds(
    spec: ArchSpec,
    data: MNISTData,
    recipe: Recipe,
    device: torch.device,
    result: ReplicaResults,
    on_epoch: Callable[[list[EpochResult]], None] | None = None,
    on_packed: Callable[[str], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> list[nn.Module]:
    """`spec` trained with each of `result.seeds` at once: built per seed, packed in the layout
    this machine runs faster (`speed.layout`; `on_packed(layout)` once chosen), and fitted.
    `result` is filled epoch by epoch before `on_epoch` sees the epoch, so a caller that stops
    the training early (pruning) or sees it fail keeps what was trained. Returns each seed's model."""
    net = pack_seeds(spec, result.seeds, recipe, device)
    result.layout = net.layout
    if on_packed is not None:
        on_packed(net.layout)

    def each(epoch: list[EpochResult]) -> None:
        result.add(epoch)
        if on_epoch is not None:
            on_epoch(epoch)

    fit_replicas(net, data, recipe, device, each, seeds=result.seeds, on_step=on_step)
    return [net.replica(k) for k in range(len(result.seeds))]


def unaugmented(recipe: Recipe) -> Recipe:
    """`recipe` with every augmentation off (its `clean_epochs`)."""
    return recipe.model_copy(update=dict.fromkeys(AUGMENTATIONS, 0.0))


def _replica_images(x: torch.Tensor, index: torch.Tensor, thetas: list | None = None) -> torch.Tensor:
    """Replica k's images x[index[k]] in channel k: (B, K, 28, 28), channels-last; warped by
    `thetas[k]` (affine (B, 2, 3) or grids (B, 28, 28, 2), `warp_params`) when given."""
    k, b = index.shape
    images = x[index.reshape(-1)]  # (K*B, 1, 28, 28)
    if thetas is not None and thetas[0] is not None:
        images = warp(images, torch.cat(thetas))
    images = images.view(k, b, *images.shape[-2:]).transpose(0, 1)
    return images.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def evaluate_replicas(net: PackedNet | SeparatePack, split: Split) -> list[tuple[float, float]]:
    """Per replica, (mean cross-entropy loss, accuracy) over a split, in large no-grad batches."""
    net.eval()
    k = net.replicas
    loss_sum = torch.zeros(k, dtype=torch.float64, device=split.x.device)
    correct = torch.zeros(k, dtype=torch.long, device=split.x.device)
    batch = EVAL_BATCH.get(split.x.device.type, 1_024)
    for start in range(0, len(split), batch):
        x = split.x[start : start + batch]
        y = split.y[start : start + batch, None].expand(-1, k)  # (B, K)
        if k > 1:
            x = x.expand(-1, k, -1, -1).contiguous(memory_format=torch.channels_last)
        logits = net(x)  # (B, K, 10)
        loss_sum += F.cross_entropy(logits.transpose(1, 2), y, reduction="none").sum(0).double()
        correct += (logits.argmax(2) == y).sum(0)
    n = max(1, len(split))
    return [(loss / n, hits / n) for loss, hits in zip(loss_sum.tolist(), correct.tolist())]


def train_epoch(
    net: PackedNet | SeparatePack,
    data: MNISTData,
    recipe: Recipe,
    orders,
    optimizer,
    scheduler,
    gens,
    forward=None,
    *,
    teacher: nn.Module | None = None,
    average: WeightAverage | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[list[float], list[float]]:
    """One pass over the training images, replica k in `orders[k]` (K, n): per replica (mean
    loss, accuracy) on its augmented batches. `forward`: the network to call, `net` itself unless
    given (benchmarks/replica_speed.py passes a compiled.CompiledForward of it: on the CPU it did
    not pay, docs/benchmarks.md).
    `teacher`: the recipe's, loaded (teacher.py); it sees each replica's own augmented images.
    `average`: the recipe's weight average (averaging.py), updated after every step.
    `on_step(steps done, steps in the epoch)` after each step (a progress display's feed)."""
    forward = net if forward is None else forward
    net.train()
    k, n = orders.shape
    loss_sum = torch.zeros(k, device=orders.device)  # summed on device: no sync per batch
    correct = torch.zeros(k, device=orders.device, dtype=torch.long)
    bounds = batch_bounds(n, recipe.batch_size)
    for step, (start, end) in enumerate(bounds, start=1):
        idx = orders[:, start:end]  # (K, B)
        thetas = [warp_params(end - start, recipe, g) for g in gens]
        x = _replica_images(data.train.x, idx, thetas)
        y = data.train.y[idx].t()  # (B, K)
        with low_precision(recipe.precision, x.device.type):
            logits = forward(x)  # (B, K, 10)
        if logits.dtype == torch.bfloat16:
            logits = logits.float()  # the loss in float32
        if teacher is None:
            per_sample = F.cross_entropy(
                logits.transpose(1, 2), y, label_smoothing=recipe.label_smoothing, reduction="none"
            )
        else:
            targets = teacher_logits(teacher, x)
            per_sample = distill_loss(
                logits, targets, y, recipe.distill, recipe.temperature, recipe.label_smoothing
            )
        per_replica = per_sample.mean(0)  # (K,): each replica's own mean loss
        optimizer.zero_grad(set_to_none=True)
        per_replica.sum().backward()  # replicas share no weights: each gets its own gradient
        optimizer.step()
        if average is not None:
            average.update_parameters(net)
        if scheduler is not None:
            scheduler.step()
        loss_sum += per_replica.detach() * (end - start)
        correct += (logits.detach().argmax(2) == y).sum(0)
        if on_step is not None:
            on_step(step, len(bounds))
    return [v / n for v in loss_sum.tolist()], [c / n for c in correct.tolist()]
