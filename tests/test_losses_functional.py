"""kdcli.losses.functional against references computed independently here (python sums, numpy loops,
literal examples with known answers)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdcli.losses import functional as KF


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) with 0·log 0 = 0."""
    return float(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0))


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------- hinton_kd

def test_hinton_literal_and_t_squared() -> None:
    # p_t = (3/4, 1/4), p_s = (1/2, 1/2): KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120...
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    s = torch.zeros(1, 2, dtype=torch.float64)
    assert KF.hinton_kd(s, torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64), 1.0).item() == \
        pytest.approx(0.1308120, abs=1e-6)
    # same distributions at T = 2 (teacher logits doubled): the KL is multiplied by T² = 4
    t2 = torch.tensor([[2 * math.log(3.0), 0.0]], dtype=torch.float64)
    assert KF.hinton_kd(s, t2, 2.0).item() == pytest.approx(4 * kl, rel=1e-9)
    assert KF.hinton_kd(s, t2, 2.0).item() == pytest.approx(0.5232481, abs=1e-6)


def test_hinton_2x3_explicit_sums() -> None:
    s = [[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]]
    t = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]]
    temperature = 3.0
    total = 0.0
    for s_row, t_row in zip(s, t):
        zs = sum(math.exp(v / temperature) for v in s_row)
        zt = sum(math.exp(v / temperature) for v in t_row)
        for a, b in zip(s_row, t_row):
            p_t, p_s = math.exp(b / temperature) / zt, math.exp(a / temperature) / zs
            total += p_t * (math.log(p_t) - math.log(p_s))
    expected = total / 2 * temperature**2
    got = KF.hinton_kd(torch.tensor(s, dtype=torch.float64), torch.tensor(t, dtype=torch.float64), temperature)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    assert expected > 0.01  # not a trivial zero


def test_hinton_zero_when_equal_and_grad_flows() -> None:
    s = _rand(3, 7).requires_grad_()
    loss = KF.hinton_kd(s, s.detach().clone(), 4.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    KF.hinton_kd(s, _rand(3, 7, seed=1), 4.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_hinton_sequence_mask_selects_rows() -> None:
    s, t = _rand(2, 3, 5), _rand(2, 3, 5, seed=1)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    temperature = 2.0
    rows = [(0, 0), (0, 1), (1, 0)]
    per_row = [_kl(_softmax(t[b, i].numpy() / temperature), _softmax(s[b, i].numpy() / temperature))
               for b, i in rows]
    expected = sum(per_row) / 3 * temperature**2  # mean over the 3 selected rows, not over B = 2
    assert KF.hinton_kd(s, t, temperature, mask=mask).item() == pytest.approx(expected, rel=1e-10)
    assert KF.hinton_kd(s, t, temperature, mask=mask.bool()).item() == pytest.approx(expected, rel=1e-10)
    # masked-out positions do not matter
    s2 = s.clone()
    s2[0, 2] += 100.0
    s2[1, 1:] -= 50.0
    assert KF.hinton_kd(s2, t, temperature, mask=mask).item() == pytest.approx(expected, rel=1e-10)
    # no mask: every one of the B·L = 6 rows counts, mean over 6 rows (not batchmean over B)
    all_rows = [_kl(_softmax(t[b, i].numpy() / temperature), _softmax(s[b, i].numpy() / temperature))
                for b in range(2) for i in range(3)]
    assert KF.hinton_kd(s, t, temperature).item() == pytest.approx(sum(all_rows) / 6 * 4, rel=1e-10)


def test_hinton_empty_mask_is_zero() -> None:
    s = _rand(2, 3, 4).requires_grad_()
    loss = KF.hinton_kd(s, _rand(2, 3, 4, seed=1), 2.0, mask=torch.zeros(2, 3))
    assert loss.item() == 0.0
    loss.backward()


# ---------------------------------------------------------------- dkd

def _dkd_loops(s: np.ndarray, t: np.ndarray, y: np.ndarray, alpha: float, beta: float, temp: float) -> float:
    """DKD per sample: binary KL on (p_gt, 1 − p_gt); KL of the distributions renormalised over the
    non-target classes (what the −1000 shift computes)."""
    tckd = nckd = 0.0
    for i in range(len(y)):
        p_s, p_t = _softmax(s[i] / temp), _softmax(t[i] / temp)
        g = int(y[i])
        tckd += _kl(np.array([p_t[g], 1 - p_t[g]]), np.array([p_s[g], 1 - p_s[g]]))
        others = [c for c in range(len(p_s)) if c != g]
        q_s = p_s[others] / p_s[others].sum()
        q_t = p_t[others] / p_t[others].sum()
        nckd += _kl(q_t, q_s)
    return (alpha * tckd + beta * nckd) * temp**2 / len(y)


def test_dkd_matches_per_sample_loops() -> None:
    s, t = _rand(4, 6, seed=2) * 3, _rand(4, 6, seed=3) * 3
    y = torch.tensor([0, 5, 2, 2])
    expected = _dkd_loops(s.numpy(), t.numpy(), y.numpy(), 1.0, 8.0, 4.0)
    assert KF.dkd(s, t, y, 1.0, 8.0, 4.0).item() == pytest.approx(expected, rel=1e-8)
    # the two parts separately
    assert KF.dkd(s, t, y, 1.0, 0.0, 2.0).item() == pytest.approx(
        _dkd_loops(s.numpy(), t.numpy(), y.numpy(), 1.0, 0.0, 2.0), rel=1e-8)
    assert KF.dkd(s, t, y, 0.0, 1.0, 2.0).item() == pytest.approx(
        _dkd_loops(s.numpy(), t.numpy(), y.numpy(), 0.0, 1.0, 2.0), rel=1e-8)
    assert expected > 0.1


def test_dkd_literal_and_ignored_rows() -> None:
    # C = 2: the non-target distribution has one class, so NCKD = 0 and DKD = α·(binary KL)·T²
    s = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert KF.dkd(s, t, torch.tensor([0]), 2.0, 8.0, 1.0).item() == pytest.approx(2 * kl, rel=1e-9)
    # a row labelled -100 is dropped (and the mean is over the kept rows)
    s4, t4 = _rand(3, 5, seed=4), _rand(3, 5, seed=5)
    y = torch.tensor([1, -100, 4])
    keep = torch.tensor([0, 2])
    assert KF.dkd(s4, t4, y, 1.0, 8.0, 4.0).item() == pytest.approx(
        KF.dkd(s4[keep], t4[keep], y[keep], 1.0, 8.0, 4.0).item(), rel=1e-12)


# ---------------------------------------------------------------- cosine_embedding

def test_cosine_literal() -> None:
    s = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    assert KF.cosine_embedding(s, t, None).item() == pytest.approx((1 + (1 - 1 / math.sqrt(2))) / 2, rel=1e-6)


def test_cosine_masked_tokens_loop() -> None:
    s, t = _rand(3, 4, 8, seed=6), _rand(3, 4, 8, seed=7)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    terms = [1 - F.cosine_similarity(s[b, i], t[b, i], dim=0).item()
             for b in range(3) for i in range(4) if mask[b, i]]
    expected = sum(terms) / len(terms)
    assert KF.cosine_embedding(s, t, mask).item() == pytest.approx(expected, rel=1e-10)
    # same as CosineEmbeddingLoss(target 1) on the masked-selected vectors (DistilBERT's distiller.py)
    sel = mask.bool()
    ref = torch.nn.CosineEmbeddingLoss()(s[sel], t[sel], torch.ones(int(sel.sum()), dtype=torch.float64))
    assert KF.cosine_embedding(s, t, mask).item() == pytest.approx(ref.item(), rel=1e-8)
    # padding values do not matter
    s2 = s.clone()
    s2[0, 3] = -s2[0, 3] * 9
    assert KF.cosine_embedding(s2, t, mask).item() == pytest.approx(expected, rel=1e-10)


# ---------------------------------------------------------------- mse family

def test_hidden_mse_and_fitnet_literal() -> None:
    s = torch.zeros(2, 3)
    t = torch.arange(6.0).reshape(2, 3)
    assert KF.hidden_mse(s, t).item() == pytest.approx(55 / 6)
    f_t = torch.arange(8.0).reshape(1, 2, 2, 2)
    assert KF.fitnet_hint(torch.ones(1, 2, 2, 2), f_t).item() == pytest.approx(sum((i - 1) ** 2 for i in range(8)) / 8)


def test_attention_mse_zeroes_masked_scores() -> None:
    s = torch.tensor([[1.0, -1e4], [2.0, -100.0]])
    t = torch.tensor([[0.0, 5.0], [2.0, -99.0]])
    # after zeroing entries <= -100: s = [[1, 0], [2, 0]], t = [[0, 5], [2, -99]] -> (1 + 25 + 0 + 9801) / 4
    assert KF.attention_mse(s, t).item() == pytest.approx(9827 / 4)
    assert F.mse_loss(s, t).item() > 1e6  # naive MSE is something else entirely
    # padding-masked entries in both (typical -1e4 / finfo.min additive mask) contribute nothing
    a = torch.tensor([[0.5, -1e4], [torch.finfo(torch.float32).min, 1.5]])
    b = torch.tensor([[1.5, -1e9], [-1e4, 0.5]])
    assert KF.attention_mse(a, b).item() == pytest.approx(2 / 4)


# ---------------------------------------------------------------- attention transfer

def _at_map(f: np.ndarray) -> np.ndarray:
    """[B, C, H, W] -> [B, H*W]: mean over channels of f², each row divided by its L2 norm."""
    b = f.shape[0]
    a = (f**2).mean(axis=1).reshape(b, -1)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_attention_transfer_literal() -> None:
    s = torch.tensor([[[[1.0, 0.0]]]])    # map (1, 0)
    t = torch.tensor([[[[0.0, 2.0]]]])    # map (0, 4) -> (0, 1)
    assert KF.attention_transfer(s, t).item() == pytest.approx(1.0)


def test_attention_transfer_numpy_same_size() -> None:
    s, t = _rand(2, 3, 4, 4, seed=8), _rand(2, 5, 4, 4, seed=9)
    expected = ((_at_map(s.numpy()) - _at_map(t.numpy())) ** 2).mean()
    assert KF.attention_transfer(s, t).item() == pytest.approx(expected, rel=1e-10)


def test_attention_transfer_pools_larger_map() -> None:
    s, t = _rand(2, 3, 8, 8, seed=10), _rand(2, 4, 4, 4, seed=11)
    s_pooled = s.numpy().reshape(2, 3, 4, 2, 4, 2).mean(axis=(3, 5))  # 2x2 block averages
    expected = ((_at_map(s_pooled) - _at_map(t.numpy())) ** 2).mean()
    assert KF.attention_transfer(s, t).item() == pytest.approx(expected, rel=1e-10)
    # the teacher may be the larger one too
    expected_rev = ((_at_map(t.numpy()) - _at_map(s_pooled)) ** 2).mean()
    assert KF.attention_transfer(t, s).item() == pytest.approx(expected_rev, rel=1e-10)


def test_attention_transfer_tokens_channels_last() -> None:
    s, t = _rand(2, 6, 3, seed=12), _rand(2, 6, 5, seed=13)

    def tok_map(f: np.ndarray) -> np.ndarray:
        a = (f**2).mean(axis=2)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    expected = ((tok_map(s.numpy()) - tok_map(t.numpy())) ** 2).mean()
    assert KF.attention_transfer(s, t).item() == pytest.approx(expected, rel=1e-10)
    # fractional p on signed features stays finite (|f|^p)
    assert torch.isfinite(KF.attention_transfer(s, t, p=1.5))


# ---------------------------------------------------------------- RKD

def _smooth_l1(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def _rkd_distance_loops(s: np.ndarray, t: np.ndarray) -> float:
    n = len(s)

    def dist(e: np.ndarray) -> np.ndarray:
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)] for i in range(n)])
        return d / d[d > 0].mean()

    d_s, d_t = dist(s), dist(t)
    return sum(_smooth_l1(d_s[i, j] - d_t[i, j]) for i in range(n) for j in range(n)) / n**2


def _rkd_angle_loops(s: np.ndarray, t: np.ndarray) -> float:
    n = len(s)

    def cos(e: np.ndarray, i: int, j: int, k: int) -> float:
        u, v = e[j] - e[i], e[k] - e[i]
        nu, nv = np.linalg.norm(u), np.linalg.norm(v)
        return 0.0 if nu == 0 or nv == 0 else float(u @ v / (nu * nv))

    return sum(_smooth_l1(cos(s, i, j, k) - cos(t, i, j, k))
               for i in range(n) for j in range(n) for k in range(n)) / n**3


def test_rkd_matches_loops() -> None:
    s, t = _rand(5, 4, seed=14), _rand(5, 6, seed=15)  # widths may differ
    d = _rkd_distance_loops(s.numpy(), t.numpy())
    a = _rkd_angle_loops(s.numpy(), t.numpy())
    assert KF.rkd_distance(s, t).item() == pytest.approx(d, rel=1e-6)
    assert KF.rkd_angle(s, t).item() == pytest.approx(a, rel=1e-6)
    assert d > 1e-3 and a > 1e-3


def test_rkd_flattens_and_is_scale_invariant() -> None:
    s = _rand(4, 2, 3, seed=16)
    assert KF.rkd_distance(s, 3 * s).item() == pytest.approx(0.0, abs=1e-12)
    assert KF.rkd_angle(s, 3 * s).item() == pytest.approx(0.0, abs=1e-12)
    t = _rand(4, 6, seed=17)
    assert KF.rkd_distance(s, t).item() == pytest.approx(
        _rkd_distance_loops(s.reshape(4, -1).numpy(), t.numpy()), rel=1e-6)


# ---------------------------------------------------------------- similarity preserving

def test_similarity_preserving_literal_and_zero() -> None:
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])   # G = I
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])   # G = all ones -> rows (1/√2, 1/√2)
    # ||I − G_t||² = 2 (1 − 1/√2)² + 2 · 1/2, / B² = 4 -> 1 − 1/√2
    assert KF.similarity_preserving(s, t).item() == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-6)
    f = _rand(3, 2, 4, seed=18)
    assert KF.similarity_preserving(f, f.clone()).item() == pytest.approx(0.0, abs=1e-12)
    assert KF.similarity_preserving(f, 2 * f).item() == pytest.approx(0.0, abs=1e-12)  # rows normalised


def test_similarity_preserving_numpy() -> None:
    s, t = _rand(4, 5, seed=19), _rand(4, 3, seed=20)

    def gram(f: np.ndarray) -> np.ndarray:
        g = f @ f.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    expected = ((gram(s.numpy()) - gram(t.numpy())) ** 2).sum() / 16
    assert KF.similarity_preserving(s, t).item() == pytest.approx(expected, rel=1e-10)


# ---------------------------------------------------------------- soft cross entropy

def test_soft_cross_entropy() -> None:
    assert KF.soft_cross_entropy(torch.zeros(1, 4), torch.tensor([[0.1, 0.2, 0.3, 0.4]])).item() == \
        pytest.approx(math.log(4), rel=1e-6)
    logits = _rand(3, 4, seed=21)
    probs = torch.softmax(_rand(3, 4, seed=22), dim=-1)
    expected = 0.0
    for i in range(3):
        z = math.log(sum(math.exp(v) for v in logits[i].tolist()))
        expected -= sum(p * (v - z) for p, v in zip(probs[i].tolist(), logits[i].tolist()))
    assert KF.soft_cross_entropy(logits, probs).item() == pytest.approx(expected / 3, rel=1e-10)
    # one-hot targets reduce to the ordinary cross entropy
    y = torch.tensor([2, 0, 3])
    assert KF.soft_cross_entropy(logits, F.one_hot(y, 4).double()).item() == pytest.approx(
        F.cross_entropy(logits, y).item(), rel=1e-10)


# ---------------------------------------------------------------- mask_tokens

MASK_ID, VOCAB = 4, 1000


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(23)
    ids = torch.randint(5, VOCAB, (200, 500), generator=g)
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True           # [CLS] ... [SEP]
    special[::3, 400:] = True                        # padding on every third row
    return ids, special


def test_mask_tokens_statistics() -> None:
    ids, special = _batch()
    before = ids.clone()
    out, labels = KF.mask_tokens(ids, special, MASK_ID, VOCAB, 0.15, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ids, before)                  # input untouched
    chosen = labels != -100
    assert not chosen[special].any()                 # specials / padding never chosen
    assert chosen[~special].float().mean().item() == pytest.approx(0.15, abs=0.01)
    assert torch.equal(labels[chosen], ids[chosen])  # labels are the original ids
    assert torch.equal(out[~chosen], ids[~chosen])   # nothing else changes
    n = int(chosen.sum())
    masked = (out[chosen] == MASK_ID).sum().item() / n
    kept = (out[chosen] == ids[chosen]).sum().item() / n
    random = ((out[chosen] != MASK_ID) & (out[chosen] != ids[chosen])).sum().item() / n
    assert masked == pytest.approx(0.8, abs=0.02)
    assert kept == pytest.approx(0.1, abs=0.015)
    assert random == pytest.approx(0.1, abs=0.015)
    assert out.min() >= 0 and out.max() < VOCAB


def test_mask_tokens_deterministic_with_generator() -> None:
    ids, special = _batch()
    a = KF.mask_tokens(ids, special, MASK_ID, VOCAB, generator=torch.Generator().manual_seed(7))
    b = KF.mask_tokens(ids, special, MASK_ID, VOCAB, generator=torch.Generator().manual_seed(7))
    c = KF.mask_tokens(ids, special, MASK_ID, VOCAB, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_mask_tokens_probability_and_edge_cases() -> None:
    ids, special = _batch()
    _, labels = KF.mask_tokens(ids, special, MASK_ID, VOCAB, 0.4, generator=torch.Generator().manual_seed(1))
    assert (labels != -100)[~special].float().mean().item() == pytest.approx(0.4, abs=0.01)
    # a short row where nothing would be drawn still gets one eligible position
    short = torch.tensor([[2, 10, 11, 3]])
    spec = torch.tensor([[True, False, False, True]])
    _, labels = KF.mask_tokens(short, spec, MASK_ID, VOCAB, 1e-9, generator=torch.Generator().manual_seed(0))
    assert int((labels != -100).sum()) == 1 and not (labels != -100)[spec].any()
    # all special: nothing chosen, nothing changed
    out, labels = KF.mask_tokens(short, torch.ones_like(spec), MASK_ID, VOCAB,
                                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, short) and bool((labels == -100).all())


def test_embedding_cosine_is_one_minus_the_cosine_of_the_served_vectors() -> None:
    """The embedding_cosine kind on Outputs.embedding [B, D]: mean over rows of 1 − cos, as evaluate scores it."""
    from kdcli.losses.response import EmbeddingCosine
    from kdcli.losses.specs import EmbeddingCosineSpec
    from kdcli.models.base import Outputs
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 1.0], [-3.0, -4.0]])
    loss = EmbeddingCosine(EmbeddingCosineSpec(kind="embedding_cosine"))
    got = loss(Outputs(embedding=s), Outputs(embedding=t), {}).item()
    assert got == pytest.approx(((1 - 1 / math.sqrt(2)) + 0.0 + 2.0) / 3, rel=1e-6)
