"""Loss values against explicit numpy formulas (float64), center dynamics, Sinkhorn-Knopp properties, resume."""

import numpy as np
import pytest
import torch

from dinov2.loss import DINOLoss, KoLeoLoss, iBOTPatchLoss


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(np_log_softmax(x))


def np_sinkhorn(logits: np.ndarray, temp: float, n_iterations: int = 3) -> np.ndarray:
    """The reference iterations written out plainly (no max subtraction), one process."""
    q = np.exp(logits / temp).T
    k, b = q.shape
    q = q / q.sum()
    for _ in range(n_iterations):
        q = q / q.sum(axis=1, keepdims=True) / k
        q = q / q.sum(axis=0, keepdims=True) / b
    return (q * b).T


# ---------------------------------------------------------------------------------------------------- DINOLoss


def test_dino_forward_matches_hand_formula() -> None:
    rng = np.random.default_rng(0)
    students = [rng.normal(size=(3, 5)) for _ in range(3)]
    teachers = [np_softmax(rng.normal(size=(3, 5))) for _ in range(2)]
    expected = 0.0
    for s in students:
        for t in teachers:
            expected += -(t * np_log_softmax(s / 0.1)).sum(axis=1).mean()
    loss = DINOLoss(5)
    got = loss([torch.tensor(s, dtype=torch.float32) for s in students], [torch.tensor(t) for t in teachers])
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_dino_forward_tiny_example_by_hand() -> None:
    # K=2, one row: student logits (0, 0.1) at temperature 0.1 -> log_softmax = (-log(1+e), 1-log(1+e)).
    s = torch.tensor([[0.0, 0.1]])
    t = torch.tensor([[0.25, 0.75]])
    expected = -(0.25 * -np.log(1 + np.e) + 0.75 * (1 - np.log(1 + np.e)))
    assert DINOLoss(2)([s], [t]).item() == pytest.approx(expected, rel=1e-6)


def test_dino_forward_fp16_student_is_computed_in_fp32() -> None:
    s = torch.randn(4, 16)
    t = torch.softmax(torch.randn(4, 16), dim=-1)
    loss = DINOLoss(16)
    assert loss([s.half()], [t]).dtype == torch.float32
    assert loss([s.half()], [t]).item() == pytest.approx(loss([s.half().float()], [t]).item(), rel=1e-6)


def test_dino_center_momentum_and_deferred_update() -> None:
    rng = np.random.default_rng(1)
    t1, t2, t3 = (rng.normal(size=(6, 4)).astype(np.float32) for _ in range(3))
    loss = DINOLoss(4)
    # step 1: center is still zero
    out1 = loss.softmax_center_teacher(torch.tensor(t1), 0.04)
    np.testing.assert_allclose(out1.numpy(), np_softmax(t1.astype(np.float64) / 0.04), rtol=1e-5, atol=1e-7)
    loss.update_center(torch.tensor(t1))
    assert torch.count_nonzero(loss.center) == 0  # deferred: applied at the next target computation
    # step 2: uses the center of step 1's outputs
    c1 = 0.1 * t1.astype(np.float64).mean(axis=0, keepdims=True)
    out2 = loss.softmax_center_teacher(torch.tensor(t2), 0.07)
    np.testing.assert_allclose(loss.center.numpy(), c1, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out2.numpy(), np_softmax((t2 - c1) / 0.07), rtol=1e-5, atol=1e-7)
    loss.update_center(torch.tensor(t2))
    c2 = 0.9 * c1 + 0.1 * t2.astype(np.float64).mean(axis=0, keepdims=True)
    out3 = loss.softmax_center_teacher(torch.tensor(t3), 0.07)
    np.testing.assert_allclose(loss.center.numpy(), c2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out3.numpy(), np_softmax((t3 - c2) / 0.07), rtol=1e-5, atol=1e-7)


def test_dino_center_momentum_is_configurable() -> None:
    t = torch.ones(2, 3)
    loss = DINOLoss(3, center_momentum=0.5)
    loss.update_center(t)
    loss.apply_center_update()
    torch.testing.assert_close(loss.center, torch.full((1, 3), 0.5))
    with pytest.raises(ValueError, match="center_momentum"):
        DINOLoss(3, center_momentum=1.5)


def test_center_survives_checkpoint_with_pending_update() -> None:
    """Save between update_center and the next use: the resumed copy continues exactly like the original."""
    torch.manual_seed(0)
    steps = [torch.randn(5, 7) for _ in range(4)]
    original, resumed = DINOLoss(7), DINOLoss(7)
    for t in steps[:2]:
        original.softmax_center_teacher(t, 0.05)
        original.update_center(t)
    assert not original.updated
    state = {k: v.clone() for k, v in original.state_dict().items()}  # folds the pending update in
    resumed.update_center(torch.randn(5, 7))  # a stale pending update in the fresh module must be dropped on load
    resumed.load_state_dict(state)
    assert resumed.updated
    for t in steps[2:]:
        torch.testing.assert_close(original.softmax_center_teacher(t, 0.05), resumed.softmax_center_teacher(t, 0.05))
        original.update_center(t)
        resumed.update_center(t)
    torch.testing.assert_close(original.state_dict()["center"], resumed.state_dict()["center"])


def test_dino_sinkhorn_matches_reference_iterations() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=0.3, size=(6, 10))
    got = DINOLoss(10).sinkhorn_knopp_teacher(torch.tensor(logits, dtype=torch.float32), 0.07)
    np.testing.assert_allclose(got.numpy(), np_sinkhorn(logits, 0.07), rtol=1e-4, atol=1e-7)


def test_sinkhorn_is_doubly_stochastic() -> None:
    torch.manual_seed(0)
    b, k = 32, 8
    logits = torch.randn(b, k) * 0.1
    q = DINOLoss(k).sinkhorn_knopp_teacher(logits, 0.1, n_iterations=20)  # [B, K]
    torch.testing.assert_close(q.sum(dim=1), torch.ones(b))  # each sample: a distribution
    torch.testing.assert_close(q.sum(dim=0), torch.full((k,), b / k), rtol=1e-4, atol=1e-4)  # equal shares
    q3 = DINOLoss(k).sinkhorn_knopp_teacher(logits, 0.1)  # 3 iterations: close to equal shares already
    torch.testing.assert_close(q3.sum(dim=1), torch.ones(b))
    torch.testing.assert_close(q3.sum(dim=0), torch.full((k,), b / k), rtol=0.05, atol=0.0)


def test_sinkhorn_is_finite_for_large_logits_at_low_temperature() -> None:
    # exp(100 / 0.04) overflows float32 (and float64): the reference formula gives inf/NaN here.
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.isfinite(np_sinkhorn(np.full((4, 6), 100.0), 0.04)).all()
    q = DINOLoss(6).sinkhorn_knopp_teacher(torch.full((4, 6), 100.0), 0.04)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q, torch.full((4, 6), 1 / 6))
    # one-hot-like logits of 100 with the rest much lower: many exp() underflow to 0, still finite rows summing to 1
    logits = torch.full((4, 6), -100.0)
    logits[torch.arange(4), torch.tensor([0, 1, 1, 3])] = 100.0
    q = DINOLoss(6).sinkhorn_knopp_teacher(logits, 0.04)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(4))
    assert q.argmax(dim=1).tolist() == [0, 1, 1, 3]


# ------------------------------------------------------------------------------------------------ iBOTPatchLoss


def _masks_example() -> torch.Tensor:
    masks = torch.zeros(4, 6, dtype=torch.bool)  # 4 global crops of 6 tokens; crop 2 unmasked
    masks[0, [1, 2]] = True
    masks[1, [0, 3, 4, 5]] = True
    masks[3, [2]] = True
    return masks


def test_ibot_forward_matches_hand_formula() -> None:
    rng = np.random.default_rng(3)
    masks = _masks_example()
    s = rng.normal(size=(4, 6, 5))
    t = np_softmax(rng.normal(size=(4, 6, 5)))
    ce = -(t * np_log_softmax(s / 0.1)).sum(axis=-1)  # [B, N]
    m = masks.numpy()
    per_image = [ce[i][m[i]].mean() if m[i].any() else 0.0 for i in range(4)]
    expected = float(np.mean(per_image))  # unmasked crop counts as 0 in the mean
    loss = iBOTPatchLoss(5)
    got = loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), masks)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    s_m = torch.tensor(s, dtype=torch.float32)[masks]  # [M, K]
    t_m = torch.tensor(t, dtype=torch.float32)[masks]
    assert loss.forward_masked(s_m, t_m, masks).item() == pytest.approx(expected, rel=1e-5)


def test_ibot_forward_masked_with_padding_and_weights() -> None:
    torch.manual_seed(0)
    masks = _masks_example()
    m = int(masks.sum())
    s = torch.randn(m + 3, 5)  # zero-padded to an upper bound, as in training
    t = torch.softmax(torch.randn(m + 3, 5), dim=-1)
    weights = (1 / masks.sum(-1).clamp(min=1)).unsqueeze(-1).expand_as(masks)[masks]  # [M]
    loss = iBOTPatchLoss(5)
    padded = loss.forward_masked(s, t, masks, n_masked_patches=m, masks_weight=weights)
    plain = loss.forward_masked(s[:m], t[:m], masks)
    torch.testing.assert_close(padded, plain)
    dense_s = torch.zeros(4, 6, 5)
    dense_t = torch.full((4, 6, 5), 0.2)
    dense_s[masks], dense_t[masks] = s[:m], t[:m]
    torch.testing.assert_close(loss(dense_s, dense_t, masks), plain)


def test_ibot_center_is_mean_over_masked_tokens() -> None:
    torch.manual_seed(0)
    tokens = torch.randn(1, 9, 4)  # [1, M, K] as passed by the training code
    loss = iBOTPatchLoss(4)
    out = loss.softmax_center_teacher(tokens, 0.04)
    assert out.shape == (1, 9, 4)
    loss.update_center(tokens)
    loss.apply_center_update()
    assert loss.center.shape == (1, 1, 4)
    torch.testing.assert_close(loss.center, 0.1 * tokens.mean(dim=1, keepdim=True))
    expected = torch.softmax((tokens - loss.center) / 0.07, dim=-1)
    torch.testing.assert_close(loss.softmax_center_teacher(tokens, 0.07), expected)


def test_ibot_sinkhorn_single_process_does_not_mutate_count() -> None:
    torch.manual_seed(0)
    logits = torch.randn(7, 5) * 0.3
    count = torch.tensor([7])
    got = iBOTPatchLoss(5).sinkhorn_knopp_teacher(logits, 0.07, count)
    assert count.item() == 7
    np.testing.assert_allclose(got.numpy(), np_sinkhorn(logits.double().numpy(), 0.07), rtol=1e-4, atol=1e-7)


def test_state_dict_keys_and_shapes() -> None:
    assert {k: tuple(v.shape) for k, v in DINOLoss(11).state_dict().items()} == {"center": (1, 11)}
    assert {k: tuple(v.shape) for k, v in iBOTPatchLoss(11).state_dict().items()} == {"center": (1, 1, 11)}
    assert DINOLoss(11).center.dtype == torch.float32


# --------------------------------------------------------------------------------------------------- KoLeoLoss


def test_koleo_matches_hand_formula() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 3))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    dots = xn @ xn.T
    np.fill_diagonal(dots, -1)
    nn_idx = dots.argmax(axis=1)
    d = np.linalg.norm(xn - xn[nn_idx] + 1e-8, axis=1)
    expected = -np.log(d + 1e-8).mean()
    got = KoLeoLoss()(torch.tensor(x, dtype=torch.float32))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_koleo_fp16_duplicates_are_finite() -> None:
    x = torch.randn(4, 8).half()
    x[1] = x[0]  # duplicate rows: distance 0 -> log(eps) in float32, log(0) = -inf in fp16
    x.requires_grad_(True)
    loss = KoLeoLoss()(x)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_koleo_needs_two_samples() -> None:
    with pytest.raises(ValueError, match="koleo_loss_weight"):
        KoLeoLoss()(torch.randn(1, 8))


def test_init_weights_resets_a_materialised_center() -> None:
    for loss in (DINOLoss(5), iBOTPatchLoss(5)):
        loss.center.fill_(float("nan"))  # what to_empty() after a meta-device build may leave
        loss.update_center(torch.randn(1, 3, 5) if isinstance(loss, iBOTPatchLoss) else torch.randn(3, 5))
        loss.init_weights()
        assert loss.updated
        assert torch.count_nonzero(loss.center) == 0


def test_losses_on_test_device_match_cpu(device: torch.device) -> None:
    """Device-agnostic: the same values on DINOV2_TEST_DEVICE (CPU by default) as on CPU (float64 where kept)."""
    torch.manual_seed(0)
    s, t = torch.randn(6, 16), torch.randn(6, 16)
    masks = torch.rand(3, 4) > 0.5
    m = int(masks.sum())
    dino_dev, dino_cpu = DINOLoss(16).to(device), DINOLoss(16).double()
    targets_dev = dino_dev.sinkhorn_knopp_teacher(t.to(device).half(), 0.05)
    targets_cpu = dino_cpu.sinkhorn_knopp_teacher(t.half().double(), 0.05)
    torch.testing.assert_close(targets_dev.cpu(), targets_cpu, rtol=1e-4, atol=1e-6)  # both float32
    got = dino_dev([s.to(device).half()], [targets_dev])
    expected = dino_cpu([s.half().double()], [targets_cpu])
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)
    ibot = iBOTPatchLoss(16).to(device)
    value = ibot.forward_masked(s[:m].to(device), t[:m].softmax(-1).to(device), masks.to(device))
    assert value.device.type == device.type and torch.isfinite(value)
    koleo = KoLeoLoss()(s.to(device).half())
    assert koleo.item() == pytest.approx(KoLeoLoss()(s.half().double()).item(), rel=1e-4)
