"""How verify splits seeds into packs for its workers (schedule.py): the plan against the cost
model it is built on, worked out by hand."""

from __future__ import annotations

import pytest

from mnist_search.workflows.schedule import makespan, pack_cost, plan_packs, seed_packs


def test_pack_cost_follows_the_measured_per_replica_speed_up():
    assert pack_cost(1) == 1.0
    assert pack_cost(2) == pytest.approx(2 / 1.32) and pack_cost(3) == pytest.approx(3 / 1.35)
    assert pack_cost(8) == pytest.approx(8 / 1.40)  # flat beyond the last measured K
    assert all(pack_cost(k) < pack_cost(k + 1) < (k + 1) for k in range(1, 10))


def test_seed_packs_split_near_equally_and_keep_every_seed_once():
    assert seed_packs(3, 1) == [(0, 1, 2)]
    assert seed_packs(3, 2) == [(0, 1), (2,)]
    assert seed_packs(5, 3) == [(0, 1), (2, 3), (4,)]
    assert seed_packs(3, 3) == [(0,), (1,), (2,)]


def test_makespan_hands_each_pack_to_the_first_free_worker():
    assert makespan([3, 3, 2, 1], 2) == 5  # 3 | 3, then 2 -> first, 1 -> second: 5 / 4
    assert makespan([1, 1, 1], 1) == 3
    assert makespan([4, 1, 1, 1, 1], 2) == 4


def test_one_worker_trains_each_trial_as_one_pack_in_trial_order():
    assert plan_packs([5.0, 1.0, 3.0], 3, 1) == [(0, (0, 1, 2)), (1, (0, 1, 2)), (2, (0, 1, 2))]


def test_top_3_seeds_3_on_two_workers_splits_one_trial_so_no_core_idles():
    plan = plan_packs([1.0, 1.0, 1.0], 3, 2)
    assert plan == [(0, (0, 1, 2)), (1, (0, 1, 2)), (2, (0, 1)), (2, (2,))]
    # 16 % less wall time than three packs of 3 (one core idle for the last third):
    three = makespan([pack_cost(3)] * 3, 2)
    split = makespan([pack_cost(3), pack_cost(3), pack_cost(2), pack_cost(1)], 2)
    assert three == pytest.approx(2 * 3 / 1.35) and split == pytest.approx(3 / 1.35 + 2 / 1.32)
    assert 1 - split / three == pytest.approx(0.159, abs=0.001)


def test_every_seed_of_every_trial_is_planned_exactly_once():
    for weights, seeds, workers in [
        ([1.0], 3, 2),
        ([2.0, 1.0], 3, 4),
        ([3, 1, 1, 1, 1], 2, 2),
        ([1.0] * 13, 3, 2),
    ]:
        plan = plan_packs(weights, seeds, workers)
        for i in range(len(weights)):
            got = sorted(s for t, pack in plan if t == i for s in pack)
            assert got == list(range(seeds)), (weights, seeds, workers, plan)


def test_one_trial_on_two_workers_splits_its_seeds_and_longest_packs_go_first():
    assert plan_packs([1.0], 3, 2) == [(0, (0, 1)), (0, (2,))]  # 1.52 against 2.22 for one pack
    assert plan_packs([1.0], 1, 2) == [(0, (0,))]
    # A heavier trial's pack is handed out first (its weight: multiply-adds per image).
    # Trial 1 three times trial 0's cost, 2 seeds: split both (3 | 3, then 1 | 1: 4), not only the
    # heavy one (3 | 3, then 1.52: 4.52) nor neither (4.55 | 1.52).
    assert plan_packs([1.0, 3.0], 2, 2) == [(1, (0,)), (1, (1,)), (0, (0,)), (0, (1,))]


def test_equal_finish_prefers_fewer_packs():
    # Two trials of one seed on two workers: nothing to split.
    assert plan_packs([1.0, 1.0], 1, 2) == [(0, (0,)), (1, (0,))]
    # Four equal trials, 2 seeds, 2 workers: packs of 2 side by side already keep both busy.
    assert plan_packs([1.0] * 4, 2, 2) == [(i, (0, 1)) for i in range(4)]
