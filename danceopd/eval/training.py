"""Training of the shipped eval networks (the judge with its PQ head, and the world CLIP model).

Deterministic for a given seed on one thread: every random draw comes from ``np.random.default_rng((STREAM,
seed))`` or ``torch.manual_seed(seed)``. Training scenes come from ``TRAIN_STREAM``; the fresh-seed accuracy test
draws from a different stream, so it never sees a training scene's random draws.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..world.prompts import check_constraints
from ..world.render import render
from ..world.sampler import sample_example
from ..world.scene import Scene, sample_scene
from ..world.text import WorldTokenizer
from ..world.vocab import WorldConfig
from .imageops import gaussian_blur, judge_input, to_float
from .judge import LayoutCodec
from .nets import CLIP_VERSION, JUDGE_VERSION, CriticNet, JudgeNet, WorldClip
from .scenes import scene_caption

TRAIN_STREAM = 0x7EA1   # training draws
CALIB_STREAM = 0x7EA2   # q_clean calibration after training
CORRUPTIONS = ("noise", "blur", "ghost", "pixelate", "speckle")


# ------------------------------------------------------------------------------------------------ scenes


def judge_scenes(rng: np.random.Generator, cfg: WorldConfig, n: int) -> list[Scene]:
    """60 %: T2I targets and edit sources/targets via ``sample_example`` over all buckets (1-3 objects, edits
    0-3); 40 %: random scenes of 0-6 objects, 80 % of them with a style (crowded and styled scenes)."""
    out: list[Scene] = []
    while len(out) < n:
        if rng.random() < 0.6:
            ex = sample_example(rng, cfg, "t2i" if rng.random() < 0.4 else "edit")
            out.append(ex.target)
            if ex.source is not None:
                out.append(ex.source)
        else:
            k = int(rng.integers(0, min(7, cfg.n_slots)))
            style = cfg.styles[int(rng.integers(len(cfg.styles)))] if rng.random() < 0.8 else None
            out.append(sample_scene(rng, cfg, n_objects=k, style=style))
    return out[:n]


def render_judge_input(scenes: list[Scene], cfg: WorldConfig, rng: np.random.Generator,
                       p64: float = 0.25) -> torch.Tensor:
    """Float [B, 3, 32, 32]: renders at 32 px, or (probability ``p64``) at 64 px box-downsampled like the judge
    does at evaluation time."""
    xs = []
    for sc in scenes:
        res = 64 if rng.random() < p64 else 32
        xs.append(judge_input(to_float(render(sc, cfg, res)[None])))
    return torch.cat(xs)


# ------------------------------------------------------------------------------------------------ corruptions


def quantize(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 1).mul(255).round().div(255)


def corrupt(x: torch.Tensor, family: str, s: float, rng: np.random.Generator, other: torch.Tensor) -> torch.Tensor:
    """One corruption of strength ``s`` in [0, 1] of a float [1, 3, H, W] image."""
    h = x.shape[-1]
    if family == "noise":
        return x + torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32)) * (0.3 * s)
    if family == "blur":
        return gaussian_blur(x, 2.0 * s * h / 32)
    if family == "ghost":
        a = 0.5 * s
        return (1 - a) * x + a * other
    if family == "pixelate":
        size = max(4, round(h * (1 - 0.75 * s)))
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return F.interpolate(y, size=(h, h), mode="bilinear", align_corners=False)
    if family == "speckle":
        mask = torch.from_numpy(rng.random((1, 1, h, h)) < 0.3 * s)
        rnd = torch.from_numpy(rng.random(x.shape).astype(np.float32))
        return torch.where(mask, rnd, x)
    raise ValueError(f"unknown corruption {family!r}")


def garbage(rng: np.random.Generator, h: int) -> torch.Tensor:
    """An image that is not a world render at all: uniform noise, a smooth random color field, or random noise
    blobs on a flat color."""
    kind = int(rng.integers(3))
    if kind == 0:
        return torch.from_numpy(rng.random((1, 3, h, h)).astype(np.float32))
    if kind == 1:
        k = int(rng.integers(2, 9))
        base = torch.from_numpy(rng.random((1, 3, k, k)).astype(np.float32))
        return F.interpolate(base, size=(h, h), mode="bilinear", align_corners=False)
    x = torch.from_numpy(rng.random((1, 3, 1, 1)).astype(np.float32)).expand(1, 3, h, h).clone()
    for _ in range(int(rng.integers(1, 6))):
        r0, c0 = rng.integers(0, h - 4, size=2)
        sz = int(rng.integers(3, h // 2))
        x[..., r0: r0 + sz, c0: c0 + sz] = torch.from_numpy(rng.random((1, 3, 1, 1)).astype(np.float32))
    return gaussian_blur(x, float(rng.uniform(0, 1.5)))


def judge_batch(rng: np.random.Generator, cfg: WorldConfig, codec: LayoutCodec, n: int, p_clean: float = 0.7):
    """(x [B, 3, 32, 32], bg [B], style [B], slots [B, 9]): clean renders, and with probability 1 - ``p_clean``
    barely visible noise or blur (s <= 0.05: noise std <= 0.015, blur sigma <= 0.1 px), so that the judge
    tolerates small generator imperfections without learning from ambiguous pictures."""
    scenes = judge_scenes(rng, cfg, n)
    x = render_judge_input(scenes, cfg, rng)
    x0 = x.clone()
    for i in range(n):
        if rng.random() < p_clean:
            continue
        j = (i + 1 + int(rng.integers(n - 1))) % n
        fam = "noise" if rng.random() < 0.5 else "blur"
        x[i: i + 1] = quantize(corrupt(x[i: i + 1], fam, float(rng.uniform(0, 0.05)), rng, x0[j: j + 1]))
    labels = [codec.encode(sc.layout()) for sc in scenes]
    bg = torch.tensor([lab[0] for lab in labels])
    st = torch.tensor([lab[1] for lab in labels])
    slots = torch.tensor([lab[2] for lab in labels])
    return x, bg, st, slots


def critic_batch(rng: np.random.Generator, cfg: WorldConfig, n: int):
    """(x [B, 3, 32, 32], quality target q [B]).

    40 % clean (q = 1), 20 % mildly corrupted (one corruption, s <= 0.3), 30 % corrupted (one or two corruptions,
    s in [0.1, 1]), 10 % garbage (q = 0). Quality target q = prod(1 - s) over the corruptions applied.
    """
    scenes = judge_scenes(rng, cfg, n)
    x = render_judge_input(scenes, cfg, rng)
    q = np.ones(n, np.float32)
    x0 = x.clone()
    for i in range(n):
        u = rng.random()
        if u < 0.4:
            continue
        xi = x[i: i + 1]
        j = (i + 1 + int(rng.integers(n - 1))) % n
        other = x0[j: j + 1]
        if u < 0.6:
            s = float(rng.uniform(0, 0.3))
            xi = corrupt(xi, CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))], s, rng, other)
            q[i] = 1 - s
        elif u < 0.9:
            fams = rng.choice(len(CORRUPTIONS), size=int(rng.integers(1, 3)), replace=False)
            for f in fams:
                s = float(rng.uniform(0.1, 1.0))
                xi = corrupt(xi, CORRUPTIONS[int(f)], s, rng, other)
                q[i] *= 1 - s
        else:
            xi = garbage(rng, x.shape[-1])
            q[i] = 0.0
        x[i: i + 1] = quantize(xi)
    return x, torch.from_numpy(q)


# ------------------------------------------------------------------------------------------------ judge


def _optim(net: torch.nn.Module, lr: float, steps: int):
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)


def train_judge(cfg: WorldConfig, seed: int = 0, steps: int = 1200, batch: int = 128, lr: float = 3e-3,
                log: Callable[[str], None] = print) -> tuple[JudgeNet, dict]:
    torch.manual_seed(seed)
    rng = np.random.default_rng((TRAIN_STREAM, seed))
    codec = LayoutCodec.for_world(cfg)
    net = JudgeNet(len(codec.backgrounds), len(codec.style_classes), len(codec.slot_classes), cfg.grid)
    outline_class = codec.style_classes.index("outline") if "outline" in codec.style_classes else -1
    opt, sched = _optim(net, lr, steps)
    t0 = time.time()
    net.train()
    for step in range(steps):
        x, bg, st, slots = judge_batch(rng, cfg, codec, batch)
        out = net(x)
        l_slots = F.cross_entropy(out["slots"].flatten(0, 1), slots.flatten())
        l_bg = F.cross_entropy(out["background"], bg)
        l_st = F.cross_entropy(out["style"], st)
        occ = (slots > 0).float()
        is_outline = (st == outline_class).float()[:, None].expand_as(occ)
        l_out = (F.binary_cross_entropy_with_logits(out["outlined"], is_outline, reduction="none") * occ).sum() / (
            occ.sum().clamp_min(1.0))
        loss = l_slots + l_bg + l_st + l_out
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            acc = (out["slots"].argmax(-1) == slots).float().mean()
            log(f"judge step {step:5d}/{steps} loss {loss.item():.4f} (slots {l_slots.item():.4f} bg "
                f"{l_bg.item():.4f} style {l_st.item():.4f}) slot-acc {acc.item():.4f} {time.time() - t0:.0f}s")
    net.eval()
    meta = {"version": JUDGE_VERSION, "config": net.config, "vocab": codec.vocab(), "seed": seed, "steps": steps,
            "batch": batch}
    return net, meta


def train_critic(cfg: WorldConfig, seed: int = 0, steps: int = 800, batch: int = 128, lr: float = 3e-3,
                 log: Callable[[str], None] = print) -> tuple[CriticNet, dict]:
    torch.manual_seed(seed)
    rng = np.random.default_rng((TRAIN_STREAM + 2, seed))
    net = CriticNet()
    opt, sched = _optim(net, lr, steps)
    t0 = time.time()
    net.train()
    for step in range(steps):
        x, q = critic_batch(rng, cfg, batch)
        loss = F.binary_cross_entropy_with_logits(net(x), q)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"critic step {step:5d}/{steps} loss {loss.item():.4f} {time.time() - t0:.0f}s")
    net.eval()
    # q_clean: 10th percentile of the critic's output on clean renders: 90 % of clean renders score PQ = 10
    crng = np.random.default_rng((CALIB_STREAM, seed))
    with torch.no_grad():
        qc = torch.sigmoid(net(render_judge_input(judge_scenes(crng, cfg, 512), cfg, crng)))
    meta = {"version": JUDGE_VERSION, "config": net.config, "seed": seed, "steps": steps, "batch": batch,
            "q_clean": round(float(torch.quantile(qc, 0.1)), 6)}
    return net, meta


# ------------------------------------------------------------------------------------------------ clip


def clip_batch(rng: np.random.Generator, cfg: WorldConfig, tok: WorldTokenizer, n: int):
    """60 % T2I prompts with a render satisfying them, 40 % captions of whole scenes (edit sources and targets,
    ``scene_caption``) with their render; plus the match matrix (image i satisfies text j's constraints)."""
    texts, cons, scenes = [], [], []
    for _ in range(n):
        if rng.random() < 0.6:
            ex = sample_example(rng, cfg, "t2i")
            texts.append(ex.prompt)
            cons.append(ex.constraints)
            scenes.append(ex.target)
        else:
            ex = sample_example(rng, cfg, "edit")
            sc = ex.target if ex.source is None or rng.random() < 0.5 else ex.source
            t, c = scene_caption(sc)
            texts.append(t)
            cons.append(c)
            scenes.append(sc)
    x = render_judge_input(scenes, cfg, rng)
    for i in range(n):  # mild noise / blur on a third of the images, so the tower tolerates imperfect samples
        if rng.random() < 0.33:
            fam = "noise" if rng.random() < 0.5 else "blur"
            x[i: i + 1] = quantize(corrupt(x[i: i + 1], fam, float(rng.uniform(0, 0.3)), rng, x[i: i + 1]))
    layouts = [sc.layout() for sc in scenes]
    match = torch.tensor([[check_constraints(c, lay) for c in cons] for lay in layouts], dtype=torch.float32)
    match.fill_diagonal_(1.0)
    # 6 % of the images are replaced by non-renders (noise, color fields, blobs) that must match no text
    junk = torch.from_numpy(rng.random(n) < 0.06)
    for i in np.flatnonzero(junk.numpy()):
        x[i: i + 1] = quantize(garbage(rng, x.shape[-1]))
    return x, tok.encode(texts), match, junk


def clip_loss(net: WorldClip, x: torch.Tensor, ids: torch.Tensor, match: torch.Tensor,
              junk: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric contrastive loss with multi-positive targets (every text an image satisfies is a positive) over
    the real images; non-render images (``junk``) are pushed to cosine <= 0 with every text."""
    zi, zt = net.encode_image(x), net.encode_text(ids)
    ok = torch.ones(len(x), dtype=torch.bool) if junk is None else ~junk
    logits = net.logit_scale.exp().clamp(max=100.0) * zi[ok] @ zt[ok].t()
    m = match[ok][:, ok]
    li = -((m / m.sum(1, keepdim=True)) * F.log_softmax(logits, 1)).sum(1).mean()
    lt = -((m.t() / m.t().sum(1, keepdim=True)) * F.log_softmax(logits.t(), 1)).sum(1).mean()
    loss = (li + lt) / 2
    if junk is not None and junk.any():
        loss = loss + 5.0 * F.relu(zi[junk] @ zt[ok].t()).pow(2).mean()
    return loss


def train_clip(cfg: WorldConfig, seed: int = 0, steps: int = 1200, batch: int = 128, lr: float = 2e-3,
               log: Callable[[str], None] = print) -> tuple[WorldClip, dict]:
    torch.manual_seed(seed)
    rng = np.random.default_rng((TRAIN_STREAM + 1, seed))
    tok = WorldTokenizer()
    net = WorldClip(tok.vocab_size, tok.max_len)
    opt, sched = _optim(net, lr, steps)
    t0 = time.time()
    net.train()
    for step in range(steps):
        x, ids, match, junk = clip_batch(rng, cfg, tok, batch)
        loss = clip_loss(net, x, ids, match, junk)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"clip step {step:5d}/{steps} loss {loss.item():.4f} scale {net.logit_scale.exp().item():.1f} "
                f"{time.time() - t0:.0f}s")
    net.eval()
    meta = {"version": CLIP_VERSION, "config": net.config, "words": tok.words[3:], "max_len": tok.max_len,
            "seed": seed, "steps": steps, "batch": batch, "temperature": round(math.exp(-net.logit_scale.item()), 6)}
    return net, meta
