"""Knowledge-distillation losses as pure tensor functions: no modules, no state.

Each function returns a scalar tensor. Projections/regressors, layer maps, no_grad on the teacher side
and loss weights are the caller's job (see feature.py, relation.py, response.py and docs/losses.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = [
    "attention_mse",
    "attention_transfer",
    "cosine_embedding",
    "dkd",
    "fitnet_hint",
    "hidden_mse",
    "hinton_kd",
    "mask_tokens",
    "rkd_angle",
    "rkd_distance",
    "similarity_preserving",
    "soft_cross_entropy",
    "token_divergence",
    "token_loss",
]

TOKEN_KINDS = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd")
# (teacher ids [N, k], teacher log-probs [N, k + 1] whose last column is the tail bucket): the sparse cache
SparseTeacher = tuple[Tensor, Tensor]


def _rows(x: Tensor, mask: Tensor | None) -> Tensor:
    """[..., D] -> [N, D]: the rows where `mask` (same leading shape, bool or 0/1) is true; all rows if None."""
    if mask is None:
        return x.reshape(-1, x.shape[-1])
    keep = mask.to(device=x.device).bool()
    if keep.shape != x.shape[:-1]:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not match rows of shape {tuple(x.shape[:-1])}")
    return x[keep]


def _full(x: Tensor) -> Tensor:
    """Half/bfloat16 -> float32 for softmax and distances; float32/float64 kept as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _zero(*like: Tensor) -> Tensor:
    """A zero that stays connected to the graph (for an empty selection)."""
    return sum((t.sum() * 0.0 for t in like), torch.zeros((), device=like[0].device))


def hinton_kd(s_logits: Tensor, t_logits: Tensor, temperature: float, mask: Tensor | None = None) -> Tensor:
    """Soft-target KD (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network").

    KL(softmax(t/T) || softmax(s/T)) summed over classes, averaged over rows ("batchmean"), times T².
    Logits are [B, C] or [B, L, V]; `mask` ([B] or [B, L], bool or 0/1) picks the rows that count and
    the mean is over the selected rows only (as HF's DistilBERT distiller.py). No selected row gives 0.
    Reference: RepDistiller distiller_zoo/KD.py; transformers research_projects/distillation/distiller.py.
    """
    return token_loss(s_logits, t_logits, "forward_kl", mask, temperature=temperature) * temperature**2


def dkd(s_logits: Tensor, t_logits: Tensor, labels: Tensor, alpha: float, beta: float,
        temperature: float) -> Tensor:
    """Decoupled KD (Zhao et al. 2022, "Decoupled Knowledge Distillation", CVPR): α·TCKD + β·NCKD.

    TCKD: KL between the binary (target, all-others) distributions of softmax(·/T).
    NCKD: KL between softmax(·/T − 1000·onehot(label)), i.e. the distribution over non-target classes.
    Each is a sum over classes and rows, × T², / number of rows. Semantics of mdistiller's
    mdistill/distillers/DKD.py `dkd_loss`; logits [B, C] (or [..., C] with labels [...]); rows whose
    label is -100 are dropped (mdistiller has no ignore index).
    """
    s = _full(s_logits.reshape(-1, s_logits.shape[-1]))
    t = _full(t_logits.reshape(-1, t_logits.shape[-1]))
    y = labels.reshape(-1).to(s.device).long()
    if not (s.shape == t.shape and y.shape[0] == s.shape[0]):
        raise ValueError(f"dkd: logits {tuple(s_logits.shape)}/{tuple(t_logits.shape)} "
                         f"do not match labels {tuple(labels.shape)}")
    keep = y != -100
    s, t, y = s[keep], t[keep], y[keep]
    n = s.shape[0]
    if n == 0:
        return _zero(s_logits, t_logits)
    gt = F.one_hot(y, s.shape[1]).bool()

    def binary(p: Tensor) -> Tensor:  # [N, 2]: mass on the target class, mass on all the others
        return torch.stack([p.masked_fill(~gt, 0.0).sum(1), p.masked_fill(gt, 0.0).sum(1)], dim=1)

    b_s = binary(F.softmax(s / temperature, dim=1))
    b_t = binary(F.softmax(t / temperature, dim=1))
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum")
    shift = 1000.0 * gt.to(s.dtype)
    nckd = F.kl_div(F.log_softmax(s / temperature - shift, dim=1), F.softmax(t / temperature - shift, dim=1),
                    reduction="sum")
    scale = temperature**2 / n
    return alpha * tckd * scale + beta * nckd * scale


def cosine_embedding(s_h: Tensor, t_h: Tensor, mask: Tensor | None = None) -> Tensor:
    """Hidden-state cosine loss of DistilBERT (Sanh et al. 2019): mean over tokens of 1 − cos(s, t).

    s_h, t_h [B, L, D] with mask [B, L] (only true tokens count), or [B, D] with mask None. Same value
    as nn.CosineEmbeddingLoss(reduction="mean") with target 1 on the masked-selected vectors, as in
    transformers research_projects/distillation/distiller.py. No selected token gives 0.
    """
    if s_h.shape != t_h.shape:
        raise ValueError(f"student hidden {tuple(s_h.shape)} != teacher hidden {tuple(t_h.shape)}")
    s, t = _rows(s_h, mask), _rows(t_h, mask)
    if s.shape[0] == 0:
        return _zero(s_h, t_h)
    return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()


def hidden_mse(s_h: Tensor, t_h: Tensor, mask: Tensor | None = None) -> Tensor:
    """TinyBERT hidden-state / embedding loss (Jiao et al. 2020): MSE, mean over all elements.
    The learned projection W_h is applied by the caller. Reference: TinyBERT task_distill.py (rep_loss).

    With `mask` ([B, L], bool or 0/1) only the real tokens' elements count: the mean is over
    (real tokens × width), so padding neither adds error nor dilutes it. No selected token gives 0."""
    if mask is None:
        return F.mse_loss(s_h, t_h)
    if s_h.shape != t_h.shape:
        raise ValueError(f"student hidden {tuple(s_h.shape)} != teacher hidden {tuple(t_h.shape)}")
    s, t = _rows(s_h, mask), _rows(t_h, mask)
    if s.shape[0] == 0:
        return _zero(s_h, t_h)
    return F.mse_loss(s, t)


def attention_mse(s_scores: Tensor, t_scores: Tensor) -> Tensor:
    """TinyBERT attention loss (Jiao et al. 2020): MSE of pre-softmax attention scores, mean over all
    elements, after entries <= -1e2 (the additive padding mask) are set to 0 in both.
    Reference: huawei-noah/Pretrained-Language-Model TinyBERT/task_distill.py (att_loss)."""
    s = torch.where(s_scores <= -1e2, torch.zeros_like(s_scores), s_scores)
    t = torch.where(t_scores <= -1e2, torch.zeros_like(t_scores), t_scores)
    return F.mse_loss(s, t)


def fitnet_hint(s_feat: Tensor, t_feat: Tensor) -> Tensor:
    """FitNets hint loss (Romero et al. 2015): MSE, mean over all elements, between the regressed
    student feature and the teacher's. The regressor is the caller's. Reference: RepDistiller FitNet.py."""
    return F.mse_loss(s_feat, t_feat)


def _attention_map(f: Tensor, p: float, channels_last: bool) -> Tensor:
    a = f.abs().pow(p).mean(-1 if channels_last else 1)
    return F.normalize(a.reshape(f.shape[0], -1), dim=1)


def attention_transfer(s_feat: Tensor, t_feat: Tensor, p: float = 2.0) -> Tensor:
    """Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention").

    at(f) = normalize(mean_c |f|^p, flattened per sample); loss = mean((at(s) − at(t))²) over B × spatial.
    Features [B, C, H, W] (channel counts may differ); when spatial sizes differ the larger map is
    adaptive-avg-pooled to the smaller size first. Token features [B, N, C] are channels-last (mean
    over C), N pooled the same way. Reference: RepDistiller distiller_zoo/AT.py (which uses f.pow(p);
    |f|^p is the paper's definition, identical for even p, and finite for fractional p).
    """
    if s_feat.dim() != t_feat.dim() or s_feat.dim() not in (3, 4):
        raise ValueError(f"attention_transfer wants [B,C,H,W] or [B,N,C] pairs, got "
                         f"{tuple(s_feat.shape)} and {tuple(t_feat.shape)}")
    if s_feat.dim() == 4:
        size = (min(s_feat.shape[2], t_feat.shape[2]), min(s_feat.shape[3], t_feat.shape[3]))
        if tuple(s_feat.shape[2:]) != size:
            s_feat = F.adaptive_avg_pool2d(s_feat, size)
        if tuple(t_feat.shape[2:]) != size:
            t_feat = F.adaptive_avg_pool2d(t_feat, size)
        return (_attention_map(s_feat, p, False) - _attention_map(t_feat, p, False)).pow(2).mean()
    n = min(s_feat.shape[1], t_feat.shape[1])
    if s_feat.shape[1] != n:
        s_feat = F.adaptive_avg_pool1d(s_feat.transpose(1, 2), n).transpose(1, 2)
    if t_feat.shape[1] != n:
        t_feat = F.adaptive_avg_pool1d(t_feat.transpose(1, 2), n).transpose(1, 2)
    return (_attention_map(s_feat, p, True) - _attention_map(t_feat, p, True)).pow(2).mean()


def _pdist(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distance matrix [B, B] with the squared distances clamped at eps, diagonal 0."""
    sq = e.pow(2).sum(1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (e @ e.t())).clamp(min=eps)
    off = 1.0 - torch.eye(e.shape[0], device=e.device, dtype=e.dtype)
    return d2.sqrt() * off


def rkd_distance(s: Tensor, t: Tensor) -> Tensor:
    """RKD distance loss (Park et al. 2019, "Relational Knowledge Distillation", CVPR).

    Pairwise distances of each batch ([B, D], extra dims flattened), each matrix divided by the mean of
    its positive entries, then smooth_l1 (beta 1), mean over all B² entries. Reference: RepDistiller RKD.py.
    """
    s = _full(s.reshape(s.shape[0], -1))
    t = _full(t.reshape(t.shape[0], -1))
    d_s, d_t = _pdist(s), _pdist(t)
    d_s = d_s / d_s[d_s > 0].mean()
    d_t = d_t / d_t[d_t > 0].mean()
    return F.smooth_l1_loss(d_s, d_t)


def _angles(e: Tensor) -> Tensor:
    """[B, B, B]: cos of the angle at e_i between e_j − e_i and e_k − e_i (0 where a difference is 0)."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2))


def rkd_angle(s: Tensor, t: Tensor) -> Tensor:
    """RKD angle loss (Park et al. 2019): smooth_l1 (beta 1, mean over B³ entries) between the cosines
    of all triplet angles of student and teacher batches ([B, D], extra dims flattened).
    Reference: RepDistiller RKD.py."""
    s = _full(s.reshape(s.shape[0], -1))
    t = _full(t.reshape(t.shape[0], -1))
    return F.smooth_l1_loss(_angles(s), _angles(t))


def similarity_preserving(s: Tensor, t: Tensor) -> Tensor:
    """Similarity-preserving KD (Tung & Mori 2019, ICCV): G = f fᵀ on [B, -1] features, each row of G
    L2-normalised; loss = ||G_s − G_t||_F² / B². Reference: RepDistiller distiller_zoo/SP.py."""
    b = s.shape[0]
    f_s = _full(s.reshape(b, -1))
    f_t = _full(t.reshape(t.shape[0], -1))
    g_s = F.normalize(f_s @ f_s.t(), p=2, dim=1)
    g_t = F.normalize(f_t @ f_t.t(), p=2, dim=1)
    return (g_s - g_t).pow(2).sum() / (b * b)


def soft_cross_entropy(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Cross entropy against soft targets (Noisy Student pseudo-labels, Xie et al. 2020):
    mean over rows of −Σ_c p_c · log_softmax(logits)_c. Logits and probs [..., C]."""
    log_q = F.log_softmax(_full(logits), dim=-1)
    return -(target_probs.to(log_q) * log_q).sum(-1).mean()


def mask_tokens(input_ids: Tensor, special_tokens_mask: Tensor, mask_token_id: int, vocab_size: int,
                mlm_probability: float = 0.15, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor]:
    """BERT/DistilBERT masked-LM corruption (Devlin et al. 2019; Sanh et al. 2019).

    Each position is chosen with probability `mlm_probability`, never where `special_tokens_mask` is
    true ([CLS], [SEP], padding). Of the chosen: 80% -> mask_token_id, 10% -> a uniform random id in
    [0, vocab_size), 10% unchanged. labels = the original id at chosen positions, -100 elsewhere.
    If no position was chosen but some are eligible, one eligible position is chosen, so the MLM loss
    is never an empty mean. Same scheme as transformers' DataCollatorForLanguageModeling. Returns
    (new_input_ids, labels); the input is not modified. Pass a seeded `generator` for determinism.
    """
    device = input_ids.device
    eligible = ~special_tokens_mask.to(device).bool()
    draw = torch.rand(input_ids.shape, generator=generator, device=device)
    chosen = (draw < mlm_probability) & eligible
    if not bool(chosen.any()) and bool(eligible.any()):
        flat = eligible.reshape(-1).nonzero().squeeze(1)
        pick = flat[torch.randint(len(flat), (1,), generator=generator, device=device)]
        chosen = chosen.reshape(-1).clone()
        chosen[pick] = True
        chosen = chosen.reshape(input_ids.shape)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    action = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=device,
                               dtype=input_ids.dtype)
    out = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    out = torch.where(to_random, random_ids, out)
    return out, labels


# --- token-level divergences (causal LMs): per row of log-probs, then a masked mean over tokens ---------


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per row, from log-probabilities; 0·log 0 = 0, and a NaN stays a NaN (the loop reports it)."""
    p = log_p.exp()
    return torch.where(p == 0, torch.zeros_like(p), p * (log_p - log_q)).sum(-1)


def _mix(log_p: Tensor, log_q: Tensor, weight_p: float) -> Tensor:
    """log(w·p + (1 − w)·q), stable in log space."""
    if weight_p >= 1.0:
        return log_p
    if weight_p <= 0.0:
        return log_q
    return torch.logaddexp(log_p + math.log(weight_p), log_q + math.log1p(-weight_p))


def token_divergence(log_p_s: Tensor, log_p_t: Tensor, kind: str, *, beta: float = 0.5, alpha: float = 0.1
                     ) -> Tensor:
    """One divergence per row between student and teacher distributions given as log-probs [N, V].

    forward_kl: KL(t || s) (Hinton; torchtune's ForwardKLLoss). reverse_kl: KL(s || t) (MiniLLM).
    jsd: generalized Jensen-Shannon of TRL's GKD, m = β·t + (1 − β)·s, β·KL(t || m) + (1 − β)·KL(s || m);
    β = 0 is KL(t || s) and β = 1 is KL(s || t), as in TRL's generalized_jsd_loss.
    skew_kl: KL(t || α·t + (1 − α)·s); skew_reverse_kl: KL(s || α·s + (1 − α)·t) (DistiLLM, Ko et al. 2024).
    tvd: ½·Σ|t − s|, total variation.
    """
    if kind == "forward_kl":
        return _kl(log_p_t, log_p_s)
    if kind == "reverse_kl":
        return _kl(log_p_s, log_p_t)
    if kind == "jsd":
        if beta <= 0.0:
            return _kl(log_p_t, log_p_s)
        if beta >= 1.0:
            return _kl(log_p_s, log_p_t)
        mixture = _mix(log_p_t, log_p_s, beta)
        return beta * _kl(log_p_t, mixture) + (1.0 - beta) * _kl(log_p_s, mixture)
    if kind == "skew_kl":
        return _kl(log_p_t, _mix(log_p_t, log_p_s, alpha))
    if kind == "skew_reverse_kl":
        return _kl(log_p_s, _mix(log_p_s, log_p_t, alpha))
    if kind == "tvd":
        return 0.5 * (log_p_t.exp() - log_p_s.exp()).abs().sum(-1)
    raise ValueError(f"unknown token divergence {kind!r}; known: {', '.join(TOKEN_KINDS)}")


def bucket_log_probs(log_p: Tensor, ids: Tensor) -> Tensor:
    """[N, V] log-probs -> [N, k + 1]: the k ids' log-probs, then the log of the remaining mass (the tail)."""
    top = log_p.gather(-1, ids)
    tail = torch.logsumexp(log_p.scatter(-1, ids, float("-inf")), dim=-1, keepdim=True)
    return torch.cat([top, tail], dim=-1)


def token_loss(s_logits: Tensor, teacher: Tensor | SparseTeacher, kind: str, mask: Tensor | None = None, *,
               temperature: float = 1.0, chunk_tokens: int | None = None, beta: float = 0.5, alpha: float = 0.1
               ) -> Tensor:
    """Mean over the masked tokens of token_divergence(softmax(s/T), softmax(t/T)).

    s_logits [..., V] with mask [...] (bool or 0/1; None: every row). The teacher is logits of the same shape,
    or a sparse teacher (ids, log-probs) already holding only the masked rows, in row-major order: the student
    is then bucketed the same way (its top-k ids' mass, and one tail bucket), so the divergence stays one
    between two distributions. Rows are processed `chunk_tokens` at a time; under autograd each chunk is
    recomputed in backward, so no more than one chunk's [chunk, V] intermediates live at once.
    """
    sparse = isinstance(teacher, tuple)
    if not sparse and s_logits.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(s_logits.shape)} != teacher logits {tuple(teacher.shape)}")
    s = _rows(s_logits, mask)
    t = teacher if sparse else _rows(teacher, mask)
    n = s.shape[0]
    if sparse and t[0].shape[0] != n:
        raise ValueError(f"sparse teacher holds {t[0].shape[0]} token rows, the mask selects {n}")
    if n == 0:
        return _zero(s_logits, *(teacher if sparse else (teacher,)))

    def chunk_sum(s_rows: Tensor, *t_rows: Tensor) -> Tensor:
        log_p_s = F.log_softmax(_full(s_rows) / temperature, dim=-1)
        if sparse:
            log_p_s, log_p_t = bucket_log_probs(log_p_s, t_rows[0].long()), _full(t_rows[1])
        else:
            log_p_t = F.log_softmax(_full(t_rows[0]) / temperature, dim=-1)
        return token_divergence(log_p_s, log_p_t, kind, beta=beta, alpha=alpha).sum()

    step = chunk_tokens or n
    total = s.new_zeros((), dtype=torch.promote_types(s.dtype, torch.float32))
    for start in range(0, n, step):
        parts = (s[start: start + step], *(x[start: start + step] for x in (t if sparse else (t,))))
        total = total + _maybe_checkpoint(chunk_sum, parts, recompute=step < n and s.requires_grad)
    return total / n


def _maybe_checkpoint(fn: Callable[..., Tensor], args: tuple[Tensor, ...], recompute: bool) -> Tensor:
    return checkpoint(fn, *args, use_reentrant=False) if recompute else fn(*args)
