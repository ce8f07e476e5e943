"""Token-level losses against references written from the papers' formulas (float64, 1e-6)."""

from __future__ import annotations

import pytest
import torch

from kdcli.losses import functional as KF


def _probs(logits: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    return torch.softmax(logits.double() / t, -1)


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p.log() - q.log())).sum(-1)


def reference(kind: str, s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0,
              beta: float = 0.5, alpha: float = 0.1) -> torch.Tensor:
    """Per token on the masked rows, then the mean over those rows."""
    ps, pt = _probs(s[mask], temperature), _probs(t[mask], temperature)
    if kind == "forward_kl":
        per = _kl(pt, ps)
    elif kind == "reverse_kl":
        per = _kl(ps, pt)
    elif kind == "jsd":  # TRL GKD generalized_jsd_loss: mixture beta*teacher + (1-beta)*student
        m = beta * pt + (1 - beta) * ps
        per = beta * _kl(pt, m) + (1 - beta) * _kl(ps, m)
    elif kind == "skew_kl":  # DistiLLM skewed forward KL
        per = _kl(pt, alpha * pt + (1 - alpha) * ps)
    elif kind == "skew_reverse_kl":
        per = _kl(ps, alpha * ps + (1 - alpha) * pt)
    else:
        per = 0.5 * (pt - ps).abs().sum(-1)
    return per.mean()


@pytest.fixture()
def logits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 7, 50, generator=g) * 3, torch.randn(3, 7, 50, generator=g) * 3
    mask = torch.rand(3, 7, generator=g) > 0.4
    return s.double(), t.double(), mask


@pytest.mark.parametrize("kind", KF.TOKEN_KINDS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_each_kind_matches_its_reference(logits, kind: str, temperature: float) -> None:
    s, t, mask = logits
    for params in ({"beta": 0.5, "alpha": 0.1}, {"beta": 0.2, "alpha": 0.3}):
        got = KF.token_loss(s, t, kind, mask, temperature=temperature, **params)
        assert got.item() == pytest.approx(reference(kind, s, t, mask, temperature, **params).item(), abs=1e-6)


def test_jsd_endpoints_are_the_two_kls(logits) -> None:
    s, t, mask = logits
    assert KF.token_loss(s, t, "jsd", mask, beta=0.0).item() == pytest.approx(reference("forward_kl", s, t, mask).item())
    assert KF.token_loss(s, t, "jsd", mask, beta=1.0).item() == pytest.approx(reference("reverse_kl", s, t, mask).item())


def test_hinton_is_forward_kl_times_t_squared_on_masked_tokens(logits) -> None:
    s, t, mask = logits
    expected = reference("forward_kl", s, t, mask, 2.0) * 4.0
    assert KF.hinton_kd(s, t, 2.0, mask).item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("kind", KF.TOKEN_KINDS)
def test_chunked_equals_unchunked_in_value_and_gradient(logits, kind: str) -> None:
    s, t, mask = logits
    grads = []
    for chunk in (None, 3):
        x = s.clone().requires_grad_(True)
        loss = KF.token_loss(x, t, kind, mask, chunk_tokens=chunk)
        loss.backward()
        grads.append((loss.detach(), x.grad))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-10)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-10)


def test_masked_tokens_do_not_count(logits) -> None:
    s, t, mask = logits
    noisy = s.clone()
    noisy[~mask] = 1e4  # anything on the masked-out positions changes nothing
    assert KF.token_loss(noisy, t, "reverse_kl", mask).item() == pytest.approx(
        KF.token_loss(s, t, "reverse_kl", mask).item())
    assert KF.token_loss(s, t, "tvd", torch.zeros_like(mask)).item() == 0.0


def test_identical_distributions_give_zero(logits) -> None:
    s, _, mask = logits
    for kind in KF.TOKEN_KINDS:
        assert abs(KF.token_loss(s, s, kind, mask).item()) < 1e-9


def test_sparse_teacher_with_every_id_equals_full_logits(logits) -> None:
    s, t, mask = logits
    log_pt = torch.log_softmax(t[mask], -1)
    ids = log_pt.topk(50).indices
    sparse = (ids, KF.bucket_log_probs(log_pt, ids))
    for kind in KF.TOKEN_KINDS:
        assert KF.token_loss(s, sparse, kind, mask).item() == pytest.approx(
            KF.token_loss(s, t, kind, mask).item(), abs=1e-6)


def test_sparse_teacher_is_a_kl_between_bucketed_distributions(logits) -> None:
    s, t, mask = logits
    log_pt = torch.log_softmax(t[mask], -1)
    ids = log_pt.topk(5).indices
    sparse = (ids, KF.bucket_log_probs(log_pt, ids))
    assert torch.allclose(sparse[1].exp().sum(-1), torch.ones(len(ids), dtype=sparse[1].dtype))
    ps = torch.softmax(s[mask], -1)
    top = ps.gather(-1, ids)
    q = torch.cat([top, 1 - top.sum(-1, keepdim=True)], -1)
    p = sparse[1].exp()
    expected = _kl(p, q).mean()
    assert KF.token_loss(s, sparse, "forward_kl", mask).item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("kind", KF.TOKEN_KINDS)
def test_a_nan_teacher_gives_a_nan_loss(logits, kind: str) -> None:
    s, t, mask = logits
    t = t.clone()
    t[mask.nonzero()[0].tolist()] = float("nan")  # the loop stops on it, naming the step and the term
    assert torch.isnan(KF.token_loss(s, t, kind, mask))
