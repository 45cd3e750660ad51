"""The two small networks the evaluation suite ships (frozen, versioned, fp16 safetensors under
``danceopd/assets/eval/``) and their weight files.

* ``JudgeNet``: a CNN scene parser for 32x32 world images. One backbone (three conv stages, 32 -> 16 -> 8 px) and
  heads for the background, the style (None or one of the styles) and each grid slot (empty or shape x color; one
  head shared by all slots, told which slot it reads). The backbone's pooled last stage is the FID feature; its
  three stages are the LPIPS-style features.
* ``CriticNet``: the naturalness critic behind PQ (a smaller backbone trained on clean renders vs corrupted
  renders and non-renders).
* ``WorldClip``: a small image-text contrastive model (conv image tower, 2-layer transformer text tower over
  ``WorldTokenizer`` ids) for the CLIP-score column.

Retrain both with ``python scripts/train_eval_nets.py`` (deterministic for a given ``--seed``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

JUDGE_VERSION = "judge-v1"
CLIP_VERSION = "clip-v1"
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "eval"
JUDGE_FILE = "judge.safetensors"
CRITIC_FILE = "critic.safetensors"
CLIP_FILE = "clip.safetensors"


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Backbone(nn.Module):
    """Three stages at full, 1/2 and 1/4 resolution; returns every stage's output."""

    def __init__(self, widths: tuple[int, int, int]):
        super().__init__()
        w0, w1, w2 = widths
        self.stage1 = nn.Sequential(_conv(3, w0), _conv(w0, w0))
        self.stage2 = nn.Sequential(_conv(w0, w1, 2), _conv(w1, w1))
        self.stage3 = nn.Sequential(_conv(w1, w2, 2), _conv(w2, w2))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.stage1(x)
        f2 = self.stage2(f1)
        f3 = self.stage3(f2)
        return [f1, f2, f3]


def normalize_input(x: torch.Tensor) -> torch.Tensor:
    """float images in [0, 1], [B, 3, H, W] -> roughly zero-mean unit-range network input."""
    return (x - 0.5) * 2.0


def cell_crops(f: torch.Tensor, grid: int, size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, grid*grid, C, size, size]: windows centered on each grid cell (zero padded)."""
    h = f.shape[-1]
    pad = size
    fp = F.pad(f, (pad, pad, pad, pad))
    starts = [int(round((k + 0.5) * h / grid - size / 2)) + pad for k in range(grid)]
    return torch.stack([fp[:, :, r: r + size, c: c + size] for r in starts for c in starts], dim=1)


class JudgeNet(nn.Module):
    """Backbone -> slot head: a small CNN over a window of the first stage's features centered on each grid cell
    (shared by all cells, told which cell it reads and given the pooled last stage, which carries the style);
    background and style heads read the mean and max of the last stage, the max of the middle stage, the max
    over cells of the (detached) slot features and the slots' (detached) outline evidence."""

    def __init__(self, n_backgrounds: int, n_styles: int, n_slot_classes: int, grid: int = 3,
                 widths: tuple[int, int, int] = (16, 32, 64), hidden: int = 128, crop: int = 12,
                 slot_widths: tuple[int, int] = (32, 48)):
        super().__init__()
        self.config = {"n_backgrounds": n_backgrounds, "n_styles": n_styles, "n_slot_classes": n_slot_classes,
                       "grid": grid, "widths": list(widths), "hidden": hidden, "crop": crop,
                       "slot_widths": list(slot_widths)}
        w0, w2 = widths[0], widths[2]
        s1, s2 = slot_widths
        self.grid, self.crop = grid, crop
        self.backbone = Backbone(widths)
        self.slot_cnn = nn.Sequential(_conv(w0, s1, 2), _conv(s1, s2), _conv(s2, s2, 2))
        n_flat = s2 * ((crop + 3) // 4) ** 2
        self.slot_in = nn.Linear(n_flat + w2, hidden)
        self.slot_pos = nn.Parameter(torch.zeros(grid * grid, hidden))
        # one extra logit per slot: "this object is drawn as an outline" (an auxiliary training target that makes
        # the slot features carry the one style cue that only exists at the objects)
        self.slot_out = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                      nn.Linear(hidden, n_slot_classes + 1))
        self.global_head = nn.Sequential(nn.Linear(widths[1] + 2 * w2 + hidden + 3, hidden), nn.ReLU())
        self.bg_out = nn.Linear(hidden, n_backgrounds)
        self.style_out = nn.Linear(hidden, n_styles)

    @property
    def feature_dim(self) -> int:
        return self.config["widths"][2]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: float [B, 3, 32, 32] in [0, 1]. Returns logits, the pooled FID feature and the stages."""
        feats = self.backbone(normalize_input(x))
        f1, f3 = feats[0], feats[-1]
        b = x.shape[0]
        g = f3.mean(dim=(2, 3))                                                  # [B, w2]
        crops = cell_crops(f1, self.grid, self.crop)                             # [B, 9, w0, S, S]
        c = self.slot_cnn(crops.flatten(0, 1)).flatten(1).view(b, self.grid * self.grid, -1)
        slot_in = torch.cat([c, g[:, None].expand(b, c.shape[1], g.shape[1])], dim=-1)
        hs = self.slot_in(slot_in) + self.slot_pos                              # [B, 9, hidden]
        slot_logits = self.slot_out(hs)
        slots, outlined = slot_logits[..., :-1], slot_logits[..., -1]
        # style cues such as outline strokes are local: the global heads also read max-pooled stages and the slot
        # features (detached: reading them must not bend them away from what the slot head needs)
        occ = 1 - slots.detach().softmax(-1)[..., 0]                             # P(slot occupied)
        p_out = torch.sigmoid(outlined.detach()) * occ
        evidence = torch.stack([p_out.sum(1) / occ.sum(1).clamp_min(1e-3), p_out.amax(1), occ.mean(1)], dim=1)
        pooled = [g, feats[1].amax(dim=(2, 3)), f3.amax(dim=(2, 3)), hs.amax(dim=1).detach(), evidence]
        h = self.global_head(torch.cat(pooled, dim=1))
        return {"slots": slots, "outlined": outlined, "background": self.bg_out(h), "style": self.style_out(h),
                "feature": g, "stages": feats}


class CriticNet(nn.Module):
    """Naturalness critic (PQ): backbone -> pooled last stage (mean and max) -> MLP -> one logit; sigmoid = the
    predicted quality q in [0, 1] (1 = a clean render)."""

    def __init__(self, widths: tuple[int, int, int] = (12, 24, 48), hidden: int = 64):
        super().__init__()
        self.config = {"widths": list(widths), "hidden": hidden}
        self.backbone = Backbone(widths)
        self.head = nn.Sequential(nn.Linear(2 * widths[2], hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f3 = self.backbone(normalize_input(x))[-1]
        return self.head(torch.cat([f3.mean(dim=(2, 3)), f3.amax(dim=(2, 3))], dim=1)).squeeze(-1)


class ClipImageTower(nn.Module):
    def __init__(self, widths: tuple[int, int, int], dim: int, grid: int):
        super().__init__()
        self.grid = grid
        self.backbone = Backbone(widths)
        w = widths[2]
        self.proj = nn.Sequential(nn.Linear(w * (grid * grid + 1), 256), nn.ReLU(), nn.Linear(256, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f3 = self.backbone(normalize_input(x))[-1]
        cells = F.adaptive_avg_pool2d(f3, self.grid).flatten(1)
        return self.proj(torch.cat([cells, f3.mean(dim=(2, 3))], dim=1))


class ClipTextTower(nn.Module):
    def __init__(self, vocab_size: int, max_len: int, dim: int, width: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, width, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(max_len, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0
        h = self.tok(ids) + self.pos[: ids.shape[1]]
        h = self.encoder(h, src_key_padding_mask=pad)
        h = self.norm(h)
        keep = (~pad).float()[..., None]
        return self.proj((h * keep).sum(1) / keep.sum(1).clamp_min(1.0))


class WorldClip(nn.Module):
    def __init__(self, vocab_size: int, max_len: int = 24, dim: int = 64, widths: tuple[int, int, int] = (16, 32, 64),
                 grid: int = 3):
        super().__init__()
        self.config = {"vocab_size": vocab_size, "max_len": max_len, "dim": dim, "widths": list(widths), "grid": grid}
        self.image = ClipImageTower(widths, dim, grid)
        self.text = ClipTextTower(vocab_size, max_len, dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.6593))  # log(1 / 0.07)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(x), dim=-1)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(ids), dim=-1)


# ---------------------------------------------------------------------------------------------- weight files


def save_net(model: nn.Module, path: Path, meta: dict) -> None:
    """fp16 safetensors (integer buffers kept as they are) with ``meta`` as JSON in the header; atomic."""
    from ..util.atomic import save_safetensors_atomic

    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        sd[k] = v.detach().to(torch.float16).contiguous() if v.is_floating_point() else v.contiguous()
    save_safetensors_atomic(sd, path, metadata={"meta": json.dumps(meta, sort_keys=True)})


def read_net_file(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    tensors = {}
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("meta", "{}"))
        for k in f.keys():
            t = f.get_tensor(k)
            tensors[k] = t.float() if t.is_floating_point() else t
    return tensors, meta


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Inference only: fold every conv -> BatchNorm pair (eval statistics) into the conv (same function up to
    float rounding, ~25 % faster on CPU)."""
    for mod in model.modules():
        if isinstance(mod, nn.Sequential) and len(mod) == 3 and isinstance(mod[0], nn.Conv2d) and isinstance(
                mod[1], nn.BatchNorm2d):
            conv, bn = mod[0], mod[1]
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              bias=True)
            fused.weight.data = conv.weight.data * scale[:, None, None, None]
            bias = conv.bias.data if conv.bias is not None else torch.zeros_like(bn.running_mean)
            fused.bias.data = (bias - bn.running_mean) * scale + bn.bias
            mod[0], mod[1] = fused, nn.Identity()
    return model


def load_into(model: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RuntimeError(f"weight file does not match the network: missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        fold_batchnorm(model.eval())
    return model.requires_grad_(False)


def judge_from_file(path: Path) -> tuple[JudgeNet, dict]:
    tensors, meta = read_net_file(path)
    c = meta["config"]
    net = JudgeNet(c["n_backgrounds"], c["n_styles"], c["n_slot_classes"], c["grid"], tuple(c["widths"]), c["hidden"],
                   c["crop"], tuple(c["slot_widths"]))
    return load_into(net, tensors), meta


def critic_from_file(path: Path) -> tuple[CriticNet, dict]:
    tensors, meta = read_net_file(path)
    c = meta["config"]
    return load_into(CriticNet(tuple(c["widths"]), c["hidden"]), tensors), meta


def clip_from_file(path: Path) -> tuple[WorldClip, dict]:
    tensors, meta = read_net_file(path)
    c = meta["config"]
    net = WorldClip(c["vocab_size"], c["max_len"], c["dim"], tuple(c["widths"]), c["grid"])
    return load_into(net, tensors), meta
