"""Specs -> networks: exact parameter counts, shapes, receptive fields and mult-adds."""

from __future__ import annotations

import random

import pytest
import torch

from mnist_search.core.config import ArchSpec, load_experiment
from mnist_search.core.model import (
    build_model,
    count_params,
    layer_plan,
    layer_table,
    mult_adds,
    receptive_field,
)

from .conftest import EXPERIMENTS


@pytest.mark.parametrize(
    "name, params", [("seed-model-1", 14_620), ("seed-model-2", 14_796), ("seed-model-3", 3_928)]
)
def test_seed_models_have_the_seed_documents_parameter_counts(name, params):
    spec = load_experiment(EXPERIMENTS / f"{name}.yaml").spec
    model = build_model(spec)
    assert count_params(spec) == params
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == params
    assert f"Total params: {params:,}" in layer_table(spec)


@pytest.mark.parametrize("name", ["seed-model-1", "seed-model-2"])
def test_seed_models_1_and_2_have_the_seed_output_sizes(name):
    spec = load_experiment(EXPERIMENTS / f"{name}.yaml").spec
    convs_and_pools = [l.out_size for l in layer_plan(spec) if l.kind in ("Conv2d", "MaxPool2d")]
    assert convs_and_pools == [26, 24, 22, 11, 11, 9, 7, 7, 1]
    assert build_model(spec)(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def random_spec(rng: random.Random) -> ArchSpec:
    """A random valid spec (draws that shrink the map below 1x1 are redrawn)."""
    while True:
        try:
            return _draw(rng)
        except ValueError:
            continue


def _draw(rng: random.Random) -> ArchSpec:
    n_stages = rng.randint(1, 3)
    padding = rng.random() < 0.5
    stages = [
        [rng.randint(1, 40) for _ in range(rng.randint(1, 2 if not padding else 3))] for _ in range(n_stages)
    ]
    return ArchSpec(
        stages=stages,
        transitions=[rng.randint(1, 32) for _ in range(n_stages - 1)],
        padding=padding,
        batchnorm=rng.random() < 0.5,
        dropout=rng.choice([0.0, 0.05, 0.2]),
        head=rng.choice(["gap", "conv"]),
        separable=rng.random() < 0.3,
        pool=rng.choice(["max", "blur"]),
    )


def test_count_params_equals_the_built_network_for_many_random_specs():
    rng = random.Random(1234)
    specs = {random_spec(rng) for _ in range(300)}
    for spec in specs:
        model = build_model(spec)
        assert count_params(spec) == sum(p.numel() for p in model.parameters()), spec
    # The draws really cover the family: distinct specs, both paddings and heads, 1-3 stages and
    # a wide range of sizes (a generator stuck on one corner would pass the loop above trivially).
    assert len(specs) > 250
    assert {s.padding for s in specs} == {True, False} and {s.head for s in specs} == {"gap", "conv"}
    assert {len(s.stages) for s in specs} == {1, 2, 3} and {s.separable for s in specs} == {True, False}
    assert {s.pool for s in specs if len(s.stages) > 1} == {"max", "blur"}
    sizes = [count_params(s) for s in specs]
    assert min(sizes) < 500 and max(sizes) > 20_000


def test_layer_plan_shapes_match_a_real_forward_pass():
    rng = random.Random(7)
    for _ in range(40):
        spec = random_spec(rng)
        model = build_model(spec).eval()
        shapes = []
        hooks = [
            m.register_forward_hook(lambda m, i, o, s=shapes: s.append((type(m).__name__, tuple(o.shape))))
            for m in model.layers
        ]
        model(torch.zeros(2, 1, 28, 28))
        for h in hooks:
            h.remove()
        planned = [(l.kind, (2, l.out_channels, l.out_size, l.out_size)) for l in layer_plan(spec)]
        assert shapes == planned, spec


def test_receptive_field_of_seed_model_1_follows_the_recurrence():
    # Hand-computed: r_out = r_in + (k-1)*j_in, j_out = j_in*stride, starting r=1, j=1.
    # The seed documents print 14 after the max-pool; the recurrence gives 8 (their final 28 agrees).
    spec = load_experiment(EXPERIMENTS / "seed-model-1.yaml").spec
    rows = receptive_field(spec)
    assert [r.r_out for r in rows] == [3, 5, 7, 8, 8, 12, 16, 16, 28]
    assert [r.j_out for r in rows] == [1, 1, 1, 2, 2, 2, 2, 2, 2]
    assert [(r.n_in, r.n_out) for r in rows][:4] == [(28, 26), (26, 24), (24, 22), (22, 11)]


def test_blur_pool_keeps_sizes_and_widens_the_receptive_field_by_two():
    # Seed model 1 with the anti-aliased pool: the 2x2 max at stride 1 (22 -> 21, r 7 -> 8, j 1),
    # then the 3x3 blur at stride 2 (21 -> 11, r 8 + 2*1 = 10, j 2): every later r is 2 larger
    # than with the plain pool's r 8, the sizes after it are the same, and no parameter changes.
    plain = load_experiment(EXPERIMENTS / "seed-model-1.yaml").spec
    spec = plain.model_copy(update={"pool": "blur"})
    rows = receptive_field(spec)
    assert [r.r_out for r in rows] == [3, 5, 7, 8, 10, 10, 14, 18, 18, 30]
    assert [r.j_out for r in rows] == [1, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    assert [(r.n_in, r.n_out) for r in rows][3:5] == [(22, 21), (21, 11)]
    assert [(r.n_in, r.n_out) for r in rows][5:] == [(r.n_in, r.n_out) for r in receptive_field(plain)][4:]
    assert count_params(spec) == count_params(plain) == 14_620
    shapes = [[tuple(v.shape) for v in build_model(s).state_dict().values()] for s in (spec, plain)]
    assert shapes[0] == shapes[1]  # the same tensors, in order (the blur's kernel is no state)


def test_a_blur_pool_over_a_map_under_3x3_is_refused_in_one_line():
    # 28 -> 20 (4 unpadded convs) -> 10 -> 2 (4 more): the blur's reflection needs 3x3 to pool.
    stages = [[4] * 4, [4] * 4, [4]]
    with pytest.raises(
        ValueError, match="pool: blur needs a map of at least 3x3 to pool; stage 2 ends at 2x2"
    ):
        ArchSpec(stages=stages, transitions=[4, 4], pool="blur")
    with pytest.raises(ValueError, match="shrinks below 1x1 in stage 3"):  # the plain pool: the next check
        ArchSpec(stages=stages, transitions=[4, 4])


def test_blur_pool_is_the_binomial_filter_with_reflected_edges():
    from mnist_search.core.model import BlurPool2d

    blur = BlurPool2d()
    assert list(blur.parameters()) == [] and blur.state_dict() == {}
    flat = blur(torch.full((1, 2, 5, 5), 3.0))  # reflect padding keeps a constant map constant
    assert flat.shape == (1, 2, 3, 3) and torch.allclose(flat, torch.full_like(flat, 3.0))
    impulse = torch.zeros(1, 1, 5, 5)
    impulse[0, 0, 2, 2] = 16.0  # the middle output pixel sits on it: the kernel's centre, 4/16
    out = blur(impulse)[0, 0]
    assert out.tolist() == [[0.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 0.0]]
    impulse = torch.zeros(1, 1, 6, 6)
    # Row 1, between output rows 0 and 1 (centred on rows 0 and 2): row 1's weight is 1 x 2 (its
    # column is a centre) for each, but output row 0 also sees it through the reflected row -1.
    impulse[0, 0, 1, 2] = 16.0
    assert blur(impulse)[0, 0].tolist() == [[0.0, 4.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]


def test_receptive_field_with_padding_and_gap_head():
    # 3 padded 3x3 convs (28->28): r 3,5,7; pool: r 8, j 2; 1x1: 8; 2 convs: 12, 16; 1x1: 16;
    # GAP over the 14x14 map acts as a 14x14 kernel: 16 + 13*2 = 42.
    spec = ArchSpec(stages=[[4, 4, 4], [4, 4]], transitions=[4], padding=True, head="gap")
    rows = receptive_field(spec)
    assert [r.r_out for r in rows] == [3, 5, 7, 8, 8, 12, 16, 16, 42]
    assert rows[-1].n_in == 14 and rows[-1].n_out == 1


def test_mult_adds_hand_computed():
    # conv 1->4 3x3 on 26x26 out: 9*1*4*676 = 24,336; 1x1 4->10 on 26x26: 40*676 = 27,040.
    spec = ArchSpec(stages=[[4]], head="gap", batchnorm=False)
    assert mult_adds(spec) == 24_336 + 27_040
    assert count_params(spec) == 36 + 40


def test_separable_convs_hand_computed():
    # stages (8, 16) | (16, 12), transition 10, BatchNorm, GAP head:
    #   conv 1->8 3x3 (the first stays plain, a depthwise conv of one channel is a 3x3):  72
    #   depthwise 8 3x3: 72, pointwise 8->16: 128                                        200
    #   pool, 1x1 16->10: 160; depthwise 10 3x3: 90, 10->16: 160; depthwise 16: 144,
    #   16->12: 192                                                                      746
    #   1x1 12->10 to the classes: 120; BatchNorm 2 x (8 + 16 + 16 + 12) = 104.
    spec = ArchSpec(stages=[[8, 16], [16, 12]], transitions=[10], separable=True)
    assert count_params(spec) == 72 + 200 + 746 + 120 + 104 == 1_242
    plain = spec.model_copy(update={"separable": False})
    assert count_params(plain) == 72 + 1_152 + 160 + 1_440 + 1_728 + 120 + 104 == 4_776
    # Same sizes and receptive field as the plain net (a 1x1 after each depthwise adds nothing).
    rf = [(r.r_out, r.n_out) for r in receptive_field(spec) if "1x1" not in r.layer]
    assert rf == [(r.r_out, r.n_out) for r in receptive_field(plain) if "1x1" not in r.layer]
    assert rf[-2:] == [(14, 8), (28, 1)]  # the last 3x3 sees 14x14 px of an 8x8 map; GAP all
    depthwise = [l for l in layer_plan(spec) if l.groups > 1]
    assert [(l.in_channels, l.out_channels, l.groups, l.out_size) for l in depthwise] == [
        (8, 8, 8, 24), (10, 10, 10, 10), (16, 16, 16, 8)
    ]  # fmt: skip
    assert mult_adds(spec) < mult_adds(plain) / 3
    model = build_model(spec)
    assert sum(p.numel() for p in model.parameters()) == 1_242
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_spec_rejects_maps_that_shrink_below_one_pixel():
    with pytest.raises(ValueError, match="shrinks below 1x1"):
        ArchSpec(stages=[[8] * 7, [8] * 4], transitions=[8])
