"""WorldUNet: the ShapesWorld conditional rectified-flow network, in one readable file.

A small conv UNet in pixel space (chosen by measurement: ~1.2M params with per-token text cross-attention and x/y
coordinate input channels learned object placement and color far faster than a patch-4 DiT on 2 CPU cores).

    v = WorldUNet(x_t [B,3,H,W], t [B], tokens [B,L] (long), source [B,3,H,W] | None, source_mask [B] | None)

Conventions (see ``danceopd.core.flow``): x_t = (1 - t) x_0 + t * noise, v = noise - x_0, t = 1 is pure noise.
Images are in [-1, 1]. Text goes through a small transformer over the world vocabulary (trained with the T2I base,
frozen for its descendants). Editing adds source-image channels (3 RGB + 1 "source present" flag) to ``conv_in``;
those new weights are zero-initialized (DiT-style zero-init of every new conditioning path), so a model widened
for editing computes exactly what its parent did at step 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class WorldNetConfig:
    vocab_size: int = 123
    max_len: int = 24
    channels: tuple[int, ...] = (32, 64, 64)   # per UNet level; each level halves the resolution
    attn_levels: tuple[int, ...] = (1, 2)      # levels with text cross-attention
    self_attn_levels: tuple[int, ...] | None = None  # levels with pixel self-attention; None = the lowest only
    text_dim: int = 64
    text_layers: int = 2
    text_conv_layers: int = 0                  # 1-D conv blocks over the tokens before the transformer layers
    text_pos_std: float = 0.02                 # init std of the learned position embeddings (tokens: N(0, 1))
    text_heads: int = 4
    emb_dim: int = 128
    groups: int = 8
    edit: bool = False                         # source-image input channels
    coord_channels: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"], d["attn_levels"] = list(self.channels), list(self.attn_levels)
        if self.self_attn_levels is not None:
            d["self_attn_levels"] = list(self.self_attn_levels)
        return d

    @staticmethod
    def from_dict(d: dict) -> WorldNetConfig:
        d = dict(d)
        d["channels"], d["attn_levels"] = tuple(d["channels"]), tuple(d["attn_levels"])
        if d.get("self_attn_levels") is not None:
            d["self_attn_levels"] = tuple(d["self_attn_levels"])
        return WorldNetConfig(**d)

    def self_attn_at(self, level: int) -> bool:
        if self.self_attn_levels is None:
            return level == len(self.channels) - 1
        return level in self.self_attn_levels


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000): [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    a = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([a.cos(), a.sin()], dim=-1)


class TextEncoder(nn.Module):
    """tokens [B, L] -> (states [B, L, D], key padding mask [B, L] True = pad, pooled [B, D])."""

    def __init__(self, cfg: WorldNetConfig):
        super().__init__()
        d = cfg.text_dim
        self.tok = nn.Embedding(cfg.vocab_size, d)
        self.pos = nn.Parameter(torch.randn(cfg.max_len, d) * cfg.text_pos_std)
        # Measured on the shipped base (transformer layers only, 17k steps): the state of "circle" in "a red circle
        # and a blue square" and in "a blue circle and a red square" had cosine 0.99998 -- the encoder had learned a
        # bag of words, so cross-attention could not bind colors to shapes (color attribution 0.19) or relations to
        # objects (position 0.37, chance). Conv blocks mix each token with its neighbours from step 0.
        self.convs = nn.ModuleList([TextConv(d) for _ in range(cfg.text_conv_layers)])
        self.layers = nn.ModuleList([TextLayer(d, cfg.text_heads) for _ in range(cfg.text_layers)])
        self.norm = nn.LayerNorm(d)

    def forward(self, tokens: torch.Tensor):
        pad = tokens == 0
        h = self.tok(tokens) + self.pos[: tokens.shape[1]]
        for conv in self.convs:
            h = conv(h, pad)
        for layer in self.layers:
            h = layer(h, pad)
        h = self.norm(h)
        keep = (~pad).float()[..., None]
        pooled = (h * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return h, pad, pooled


class TextConv(nn.Module):
    """Pre-norm residual block: LayerNorm -> Conv1d(kernel 5) over tokens (padding positions zeroed) -> GELU -> Linear."""

    KERNEL = 5

    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.conv = nn.Conv1d(d, d, self.KERNEL, padding=self.KERNEL // 2)
        self.out = nn.Linear(d, d)

    def forward(self, h, pad):
        x = self.norm(h).masked_fill(pad[..., None], 0.0)
        return h + self.out(F.gelu(self.conv(x.transpose(1, 2)).transpose(1, 2)))


class TextLayer(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, h, pad):
        B, L, D = h.shape
        q, k, v = self.qkv(self.n1(h)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        # every sequence starts with a non-pad <bos>, so no row is fully masked
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=~pad[:, None, None, :])
        h = h + self.proj(a.transpose(1, 2).reshape(B, L, D))
        return h + self.mlp(self.n2(h))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, FiLM from the (time + text) embedding, zero-initialized second conv."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.n2, self.c2 = nn.GroupNorm(groups, cout), nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.c2.weight)
        nn.init.zeros_(self.c2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.c1(F.silu(self.n1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.n2(h) * (1 + scale) + shift
        return self.skip(x) + self.c2(F.silu(h))


class Attention(nn.Module):
    """Self-attention over pixels (context None) or cross-attention to text tokens. Output projection zero-init."""

    def __init__(self, ch: int, ctx_dim: int | None, groups: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch)
        self.q = nn.Linear(ch, ch)
        self.kv = nn.Linear(ctx_dim or ch, 2 * ch)
        self.proj = nn.Linear(ch, ch)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x, ctx=None, ctx_pad=None):
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        src = h if ctx is None else ctx
        q = self.q(h).view(B, -1, self.heads, C // self.heads).transpose(1, 2)
        k, v = self.kv(src).view(B, src.shape[1], 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if ctx_pad is None else ~ctx_pad[:, None, None, :]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return x + self.proj(a.transpose(1, 2).reshape(B, H * W, C)).transpose(1, 2).view(B, C, H, W)


class Level(nn.Module):
    def __init__(self, cin, cout, cfg: WorldNetConfig, cross: bool, self_attn: bool):
        super().__init__()
        self.res = ResBlock(cin, cout, cfg.emb_dim, cfg.groups)
        self.sa = Attention(cout, None, cfg.groups) if self_attn else None
        self.ca = Attention(cout, cfg.text_dim, cfg.groups) if cross else None

    def forward(self, x, emb, ctx, pad):
        x = self.res(x, emb)
        if self.sa is not None:
            x = self.sa(x)
        if self.ca is not None:
            x = self.ca(x, ctx, pad)
        return x


class WorldUNet(nn.Module):
    def __init__(self, cfg: WorldNetConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        n_lvl = len(ch)
        self.text = TextEncoder(cfg)
        self.t_mlp = nn.Sequential(nn.Linear(64, cfg.emb_dim), nn.SiLU(), nn.Linear(cfg.emb_dim, cfg.emb_dim))
        self.pool_proj = nn.Linear(cfg.text_dim, cfg.emb_dim)
        self.in_channels = 3 + (2 if cfg.coord_channels else 0)
        cin = self.in_channels + (4 if cfg.edit else 0)
        self.conv_in = nn.Conv2d(cin, ch[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        prev = ch[0]
        for i, c in enumerate(ch):
            self.down.append(Level(prev, c, cfg, i in cfg.attn_levels, cfg.self_attn_at(i)))
            prev = c
            if i < n_lvl - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = Level(prev, prev, cfg, True, True)
        self.up = nn.ModuleList()
        for i in reversed(range(n_lvl)):
            self.up.append(Level(prev + ch[i], ch[i], cfg, i in cfg.attn_levels, cfg.self_attn_at(i)))
            prev = ch[i]
        self.out_norm = nn.GroupNorm(cfg.groups, prev)
        self.conv_out = nn.Conv2d(prev, 3, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def encode_text(self, tokens: torch.Tensor):
        return self.text(tokens)

    def forward(self, x_t, t, tokens=None, source=None, source_mask=None, text=None):
        """``text`` = precomputed ``encode_text(tokens)`` (to encode conditions once per step)."""
        B, _, H, W = x_t.shape
        ctx, pad, pooled = text if text is not None else self.text(tokens)
        t = t.to(x_t.device)
        emb = self.t_mlp(timestep_embedding(t.expand(B) if t.dim() == 0 else t, 64)) + self.pool_proj(pooled)
        parts = [x_t]
        if self.cfg.coord_channels:
            ys = torch.linspace(-1, 1, H, device=x_t.device, dtype=x_t.dtype)
            xs = torch.linspace(-1, 1, W, device=x_t.device, dtype=x_t.dtype)
            parts += [xs.view(1, 1, 1, W).expand(B, 1, H, W), ys.view(1, 1, H, 1).expand(B, 1, H, W)]
        if self.cfg.edit:
            if source is None:
                source = torch.zeros_like(x_t)
                source_mask = torch.zeros(B, device=x_t.device, dtype=x_t.dtype)
            elif source_mask is None:
                source_mask = torch.ones(B, device=x_t.device, dtype=x_t.dtype)
            m = source_mask.to(x_t.dtype).view(B, 1, 1, 1)
            parts += [source * m, m.expand(B, 1, H, W)]
        h = self.conv_in(torch.cat(parts, dim=1))
        skips = []
        for i, lvl in enumerate(self.down):
            h = lvl(h, emb, ctx, pad)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, emb, ctx, pad)
        for j, lvl in enumerate(self.up):
            if j > 0:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = lvl(torch.cat([h, skips.pop()], dim=1), emb, ctx, pad)
        return self.conv_out(F.silu(self.out_norm(h)))


def grow(parent: WorldUNet, attn_levels=None, self_attn_levels=None, text_layers=None) -> WorldUNet:
    """A copy of ``parent`` with more attention (cross-attention / self-attention levels, text layers appended
    before the text encoder's final norm). Every added block has a zero-initialized output, so the grown model
    computes exactly what ``parent`` did at step 0 (the adaLN-Zero idea of DiT)."""
    p = parent.cfg
    n = len(p.channels)
    new_cross = tuple(sorted(set(attn_levels if attn_levels is not None else p.attn_levels)))
    old_self = tuple(i for i in range(n) if p.self_attn_at(i))
    new_self = tuple(sorted(set(self_attn_levels if self_attn_levels is not None else old_self)))
    new_text = p.text_layers if text_layers is None else int(text_layers)
    for name, old, new in (("attn_levels", p.attn_levels, new_cross), ("self_attn_levels", old_self, new_self)):
        if not set(old) <= set(new) or not set(new) <= set(range(n)):
            raise ValueError(f"grow: {name} {list(new)} must contain the parent's {list(old)} and lie in 0..{n - 1}")
    if new_text < p.text_layers:
        raise ValueError(f"grow: text_layers {new_text} must be >= the parent's {p.text_layers}")
    child = WorldUNet(replace(p, attn_levels=new_cross, self_attn_levels=new_self, text_layers=new_text))
    for layer in child.text.layers[p.text_layers:]:
        for lin in (layer.proj, layer.mlp[-1]):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
    _, unexpected = child.load_state_dict(parent.state_dict(), strict=False)
    if unexpected:
        raise ValueError(f"grow: parent weights without a place in the child: {unexpected[:3]}")
    return child


def widen_for_editing(parent: WorldUNet) -> WorldUNet:
    """A copy of ``parent`` with zero-initialized source-image channels: same outputs at step 0."""
    if parent.cfg.edit:
        raise ValueError("model already has source-image channels")
    state = parent.state_dict()
    w = state["conv_in.weight"]
    child = WorldUNet(replace(parent.cfg, edit=True)).to(w.device)   # where the parent is (a teacher on a GPU)
    new_w = torch.zeros(w.shape[0], w.shape[1] + 4, *w.shape[2:], dtype=w.dtype, device=w.device)
    new_w[:, : w.shape[1]] = w
    state["conv_in.weight"] = new_w
    child.load_state_dict(state)
    return child
