"""Least-squares init against numpy's lstsq on features captured by hooks on the timm models."""

import numpy as np
import pytest
import torch
from conftest import TINY_PAIRS, families

from snnet import create_snnet
from snnet.core.lstsq import augment, solve_normal_equations


def rows(t, layout):
    t = t.permute(0, 2, 3, 1) if layout == "nchw" else t
    return t.reshape(-1, t.shape[-1]).double().numpy()


def numpy_lstsq(x, y):
    a = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    sol, *_ = np.linalg.lstsq(a, y, rcond=None)
    return sol[:-1].T, sol[-1]


def block_outputs(model, blocks, images):
    """Outputs of the given timm block modules, captured with forward hooks (not our adapters)."""
    out = {}
    handles = [b.register_forward_hook(lambda m, i, o, n=n: out.__setitem__(n, o)) for n, b in enumerate(blocks)]
    with torch.no_grad():
        model.eval()(images)
    for h in handles:
        h.remove()
    return out


def solve_least_squares(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The library's solver on the normal equations of ``[x 1] W = y``, as SNNet.init_stitching_layers builds them."""
    a = augment(x)
    return solve_normal_equations(a.T @ a, a.T @ y.to(torch.float64))


def test_solver_matches_numpy():
    x, y = torch.randn(300, 12), torch.randn(300, 5)
    w, b = solve_least_squares(x, y)
    w_ref, b_ref = numpy_lstsq(x.double().numpy(), y.double().numpy())
    np.testing.assert_allclose(w.numpy(), w_ref, atol=1e-9)
    np.testing.assert_allclose(b.numpy(), b_ref, atol=1e-9)


def test_solver_rank_deficient_gives_min_norm_solution():
    x = torch.randn(200, 4)
    x = torch.cat([x, x[:, :1]], dim=1)  # a repeated column: singular normal equations
    y = torch.randn(200, 3)
    w, b = solve_least_squares(x, y)
    a = np.concatenate([x.double().numpy(), np.ones((200, 1))], axis=1)
    ref = np.linalg.pinv(a) @ y.double().numpy()
    np.testing.assert_allclose(np.concatenate([w.numpy().T, b.numpy()[None]]), ref, atol=1e-8)


# family -> how to list each anchor's timm block modules in order, for the hooks
TIMM_BLOCKS = {
    "deit": lambda m: list(m.blocks),
    "resnet": lambda m: [b for layer in (m.layer1, m.layer2, m.layer3, m.layer4) for b in layer],
    "resnet_swin": lambda m: (
        [b for layer in (m.layer1, m.layer2, m.layer3, m.layer4) for b in layer]
        if hasattr(m, "layer1")
        else [b for stage in m.layers for b in stage.blocks]
    ),
}


@pytest.mark.parametrize("family", families(TIMM_BLOCKS, slow=["resnet", "resnet_swin"]))
def test_layers_reach_the_lstsq_residual(family):
    # kernel 1: one position per paired layer; unpaired layers may share, so solve jointly and
    # compare with numpy's lstsq over the stacked positions.
    net = create_snnet(num_classes=5, kernel_size=1, **TINY_PAIRS[family])
    images = torch.randn(12, 3, *net.input_size[1:])
    net.init_stitching_layers(images, batch_size=5, combine="joint")  # several batches: accumulation
    (fa, fm), (ba, bm) = [(a, a.model) for a in net.anchor_adapters]
    front_out = block_outputs(fm, TIMM_BLOCKS[family](fm), images)
    back_out = block_outputs(bm, TIMM_BLOCKS[family](bm), images)
    checked = 0
    for spec, layer in zip(net.layer_specs, net.stitch_layers):
        if any(k == 0 for _, k in spec.positions):
            continue  # the stem output has no block hook; covered by the DeiT mean test
        fresh = type(layer)(
            layer.transform.in_features, layer.transform.out_features, layer.in_layout, layer.out_layout
        )
        x = np.concatenate([rows(front_out[j], fa.layout) for j, _ in spec.positions])
        y = np.concatenate([rows(back_out[k - 1], ba.layout) for _, k in spec.positions])
        w_ref, b_ref = numpy_lstsq(x, y)
        best = np.linalg.norm(x @ w_ref.T + b_ref - y)
        with torch.no_grad():
            got = np.linalg.norm(
                np.concatenate([rows(layer(front_out[j]).double(), ba.layout) for j, _ in spec.positions]) - y
            )
            untrained = np.linalg.norm(
                np.concatenate([rows(fresh(front_out[j]).double(), ba.layout) for j, _ in spec.positions]) - y
            )
        assert abs(got - best) <= 1e-5 * np.linalg.norm(y), (family, spec.positions, got, best)
        assert got < 0.5 * untrained, (got, untrained)
        checked += 1
    assert checked >= 1


def test_shared_layer_is_mean_of_position_solutions_or_joint():
    net = create_snnet(num_classes=5, **TINY_PAIRS["deit"])
    images = torch.randn(6, 3, 32, 32)
    fa, ba = net.anchor_adapters
    with torch.no_grad():
        feats_a = [fa.forward_until(images, j - 1) for j in range(fa.num_blocks + 1)]  # index i: before block i
        feats_b = [ba.forward_until(images, k - 1) for k in range(ba.num_blocks + 1)]
    spec, layer = net.layer_specs[0], net.stitch_layers[0]
    assert len(spec.positions) == 4
    sols = [numpy_lstsq(rows(feats_a[j + 1], "tokens"), rows(feats_b[k], "tokens")) for j, k in spec.positions]

    net.init_stitching_layers(images, combine="mean")
    np.testing.assert_allclose(
        layer.transform.weight.detach().double().numpy(), np.mean([s[0] for s in sols], 0), atol=1e-4
    )
    np.testing.assert_allclose(
        layer.transform.bias.detach().double().numpy(), np.mean([s[1] for s in sols], 0), atol=1e-4
    )

    net.init_stitching_layers(images, combine="joint")
    x = np.concatenate([rows(feats_a[j + 1], "tokens") for j, _ in spec.positions])
    y = np.concatenate([rows(feats_b[k], "tokens") for _, k in spec.positions])
    w_ref, b_ref = numpy_lstsq(x, y)
    np.testing.assert_allclose(layer.transform.weight.detach().double().numpy(), w_ref, atol=1e-4)
    np.testing.assert_allclose(layer.transform.bias.detach().double().numpy(), b_ref, atol=1e-4)


def test_init_restores_training_mode_and_ignores_dropout():
    net = create_snnet(
        num_classes=5,
        **TINY_PAIRS["deit"],
    ).train()
    images = torch.randn(4, 3, 32, 32)
    net.init_stitching_layers(images)
    w1 = net.stitch_layers[1].transform.weight.clone()
    net.init_stitching_layers(images)
    assert net.training and torch.equal(w1, net.stitch_layers[1].transform.weight)
