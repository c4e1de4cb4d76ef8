"""SN-Netv2's FLOPs-balanced sampling: the official grouping on a hand-computed case, the
documented draw rule, exact resume of the sampler, and the same draws on two torchrun ranks."""

from __future__ import annotations

import pytest
import torch

from snnet.errors import ConfigError
from snnet.train.network_sampling import FlopsGroupSampler, create_network_sampler, flops_group_weights, group_by_flops

G = 1e9
# cfg_id -> FLOPs; sorted: 0 (0.5), 6 (0.9), 1 (1.2), 2 (1.4), 4 (2.1), 3 (2.3), 5 (4.0) GFLOPs
FLOPS = [0.5 * G, 1.2 * G, 1.4 * G, 2.3 * G, 2.1 * G, 4.0 * G, 0.9 * G]


def test_grouping_is_the_official_rule_computed_by_hand():
    # The official group_subnets_by_flops measures from the first network of the current group
    # (starting at 0 GFLOPs): 0.5 and 0.9 are within 1 of 0; 1.2 opens a group that 1.4 and 2.1
    # join (0.9 above 1.2) although 2.1 is 1.6 above 0.5; 2.3 is 1.1 above 1.2 and opens one;
    # 4.0 opens the last.
    assert group_by_flops(FLOPS, 1.0) == [[0, 6], [1, 2, 4], [3], [5]]
    assert group_by_flops(FLOPS, 0.25) == [[0], [6], [1, 2], [3, 4], [5]]  # sorted inside a group
    assert group_by_flops(FLOPS, 10.0) == [[0, 1, 2, 3, 4, 5, 6]]


def test_group_weights_uniform_or_official_linear():
    assert flops_group_weights(3).tolist() == [1.0, 1.0, 1.0]
    # official: y_i = i / k + 1 / n, normalised; n = 4, k = 2 -> .25, .75, 1.25, 1.75 over 4
    assert flops_group_weights(4, 2.0).tolist() == pytest.approx([0.0625, 0.1875, 0.3125, 0.4375])
    with pytest.raises(ConfigError, match="--flops-sampling-k must be > 0"):
        flops_group_weights(4, 0.0)


def documented_draws(groups, weights, seed, n):
    """The rule of snnet/sampling.py's docstring, re-implemented."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        members = groups[int(torch.multinomial(weights, 1, generator=g))]
        out.append(members[int(torch.randint(len(members), (1,), generator=g))])
    return out


@pytest.mark.parametrize("k", [None, 2.0])
def test_draws_follow_the_documented_rule_and_resume_exactly(k):
    sampler = FlopsGroupSampler(FLOPS, 1.0, seed=5, k=k)
    weights = (
        torch.ones(4, dtype=torch.float64)
        if k is None
        else torch.tensor([0.0625, 0.1875, 0.3125, 0.4375], dtype=torch.float64)
    )
    expected = documented_draws([[0, 6], [1, 2, 4], [3], [5]], weights, 5, 40)
    first = [sampler.draw() for _ in range(15)]
    state = sampler.state_dict()
    rest = [sampler.draw() for _ in range(25)]
    assert first + rest == expected
    resumed = FlopsGroupSampler(FLOPS, 1.0, seed=123, k=k)
    resumed.load_state_dict(state)
    assert [resumed.draw() for _ in range(25)] == rest


def test_groups_are_balanced_not_networks():
    sampler = FlopsGroupSampler(FLOPS, 1.0, seed=0)
    draws = [sampler.draw() for _ in range(4000)]
    per_group = [sum(d in grp for d in draws) for grp in ([0, 6], [1, 2, 4], [3], [5])]
    assert all(abs(c - 1000) < 150 for c in per_group), per_group  # uniform over 4 groups


def test_flops_groups_and_sample_weights_exclude_each_other():
    from conftest import TINY_TWO_WAY

    from snnet import create_snnet

    net = create_snnet(num_classes=5, **TINY_TWO_WAY)
    with pytest.raises(ConfigError, match="drop one of them"):
        create_network_sampler(net, "flops-groups", 0, sample_weights="flops")
    with pytest.raises(ConfigError, match="add --sample-by flops-groups"):
        create_network_sampler(net, "networks", 0, flops_sampling_k=2.0)
    with pytest.raises(ConfigError, match="--flops-gap must be >= 0"):
        create_network_sampler(net, "flops-groups", 0, flops_gap=-1.0)
    sampler = create_network_sampler(net, "flops-groups", 0, flops_gap=0.0)
    assert sorted(i for g in sampler.groups for i in g) == list(range(net.num_stitches))


@pytest.mark.slow
def test_two_ranks_draw_the_same_groups_and_networks(tmp_path):
    from conftest import TINY_TWO_WAY
    from test_distributed import by_step, torchrun
    from test_lora import TWO_WAY_ARGS
    from test_train import PLAIN, read_steps

    from snnet import create_snnet
    from snnet.core.flops import flops_table

    steps = 6
    proc = torchrun(
        2,
        TWO_WAY_ARGS
        + PLAIN
        + [
            "--seed",
            "11",
            "--epochs",
            "1",
            "--max-steps-per-epoch",
            steps,
            "-b",
            "8",
            "--lr",
            "1e-3",
            "--sample-by",
            "flops-groups",
            "--flops-gap",
            "0.0001",
            "--flops-sampling-k",
            "2",
            "--output",
            tmp_path,
            "--experiment",
            "two",
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = by_step(read_steps(tmp_path / "two"))
    assert sorted(records) == list(range(1, steps + 1))
    drawn = [[r["cfg_id"] for r in records[s]] for s in sorted(records)]
    assert all(a == b for a, b in drawn), drawn
    # the documented rule over the official grouping of the network FLOPs, computed here
    flops = [row["flops"] for row in flops_table(create_snnet(num_classes=10, **TINY_TWO_WAY))]
    groups = group_by_flops(flops, 0.0001)
    assert len(groups) > 3
    weights = torch.tensor([i / 2 + 1 / len(groups) for i in range(len(groups))], dtype=torch.float64)
    assert [a for a, _ in drawn] == documented_draws(groups, weights / weights.sum(), 11, steps)


def test_sampler_state_of_another_drawing_rule_is_refused():
    """A saved sampler state continues the draws exactly, and one saved with other weights or
    FLOPs groups is refused (the resumed run would draw otherwise)."""
    from snnet.errors import CheckpointError
    from snnet.train.network_sampling import FlopsGroupSampler, NetworkSampler

    a = NetworkSampler(4, seed=0, weights=[1, 2, 3, 4])
    [a.draw() for _ in range(5)]
    b = NetworkSampler(4, seed=9, weights=[1, 2, 3, 4])
    b.load_state_dict(a.state_dict())
    assert [a.draw() for _ in range(20)] == [b.draw() for _ in range(20)]
    with pytest.raises(CheckpointError, match="other weights"):
        NetworkSampler(4, seed=0).load_state_dict(a.state_dict())
    g = FlopsGroupSampler([1e9, 2e9, 3e9, 4e9], 1.5, seed=0)
    with pytest.raises(CheckpointError, match="other groups"):
        FlopsGroupSampler([1e9, 2e9, 3e9, 4e9], 0.5, seed=0).load_state_dict(g.state_dict())
    FlopsGroupSampler([1e9, 2e9, 3e9, 4e9], 1.5, seed=1).load_state_dict(g.state_dict())
