"""Tiny random-weight diffusers pipelines, built offline in code (no hub, no downloads).

They have the real pipeline classes, the real component classes and the real folder layout
(``save_pretrained``), only with very small widths, so tests, benchmarks and smoke runs of the ``sd3``,
``zimage`` and ``flux_kontext`` backends run in seconds on a CPU:

    python -c "from danceopd.testing.tiny_pipelines import build; build('sd3', 'runs/tiny_sd3')"

Tokenizers are character level (byte-level BPE with no merges, a small T5 unigram vocabulary), built in memory.
Sizes: ``size="tiny"`` (well under 1M transformer parameters), ``size="small"`` (SD3 only: ~31M, for benchmarks) or
``size="medium"`` (SD3 only: the real SD3.5-Medium transformer shape, 2.24B parameters, for ``scripts/gpu_check.py``).
"""

from __future__ import annotations

from pathlib import Path

import torch

_T5_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()/&%+=#@*"


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for the bytes 0..255 (GPT-2 style mapping)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def clip_tokenizer():
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + c, -3.0) for c in _T5_ALPHABET[:36]]
    pieces += [(c, -4.0) for c in _T5_ALPHABET]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_SPECIAL = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]


def qwen_tokenizer():
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(_byte_chars())}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], chat_template=QWEN_TEMPLATE, model_max_length=4096)
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL})
    return tok


def _clip_encoder(tok, with_projection: bool, projection_dim: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, projection_dim=projection_dim,
                         hidden_act="gelu", bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)


def _t5_encoder(tok, d_model: int = 64):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tok), d_model=d_model, d_kv=16, d_ff=128, num_layers=2,
                                   num_heads=2, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))


def _vae(shift: float, scale: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                         layers_per_block=1, latent_channels=16, norm_num_groups=4, sample_size=256,
                         shift_factor=shift, scaling_factor=scale, use_quant_conv=False, use_post_quant_conv=False)


# SD3 transformer shapes. "medium" is the real SD3.5-Medium transformer (2.24B parameters; its
# transformer/config.json): with it the text encoders stay tiny but emit the real widths (T5 4096, pooled 2048).
SD3_SIZES = {
    "tiny": dict(sample_size=32, num_layers=2, attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                 caption_projection_dim=32, pooled_projection_dim=64),
    "small": dict(sample_size=32, num_layers=6, attention_head_dim=64, num_attention_heads=6, joint_attention_dim=64,
                  caption_projection_dim=384, pooled_projection_dim=64),
    "medium": dict(sample_size=128, num_layers=24, attention_head_dim=64, num_attention_heads=24,
                   joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
                   pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm"),
}


def build_sd3(out, size: str = "tiny", seed: int = 0, dtype=None, device=None) -> Path:
    """``size``: tiny | small | medium (``SD3_SIZES``). ``dtype``: the saved weights' dtype (default float32);
    ``device``: where the random transformer is initialized (a GPU makes the 2.2B "medium" one fast)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tok, tok3 = clip_tokenizer(), t5_tokenizer()
    shape = SD3_SIZES[size]
    with torch.device(device or "cpu"):
        transformer = SD3Transformer2DModel(patch_size=2, in_channels=16, out_channels=16, **shape)
    pooled = shape["pooled_projection_dim"]
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_vae(0.0609, 1.5305), text_encoder=_clip_encoder(tok, True, pooled // 2), tokenizer=tok,
        text_encoder_2=_clip_encoder(tok, True, pooled - pooled // 2), tokenizer_2=clip_tokenizer(),
        text_encoder_3=_t5_encoder(tok3, shape["joint_attention_dim"]), tokenizer_3=tok3)
    _randomize_zero_init(pipe.transformer, seed)
    if dtype is not None:
        pipe.to(dtype)
    pipe.to("cpu").save_pretrained(str(out))
    return Path(out)


def build_flux_kontext(out, seed: int = 0) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    tok, tok2 = clip_tokenizer(), t5_tokenizer()
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                                         pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                            base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                            max_image_seq_len=4096)
    pipe = FluxKontextPipeline(scheduler=sched, vae=_vae(0.1159, 0.3611), text_encoder=_clip_encoder(tok, False),
                               tokenizer=tok, text_encoder_2=_t5_encoder(tok2), tokenizer_2=tok2,
                               transformer=transformer)
    _randomize_zero_init(pipe.transformer, seed)
    pipe.save_pretrained(str(out))
    return Path(out)


def build_zimage(out, seed: int = 0) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    tok = qwen_tokenizer()
    enc = Qwen3Model(Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                 max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id))
    transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=64,
                                           n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=32,
                                           axes_dims=[8, 12, 12], axes_lens=[1024, 64, 64])
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=sched, vae=_vae(0.1159, 0.3611), text_encoder=enc, tokenizer=tok,
                          transformer=transformer)
    _randomize_zero_init(pipe.transformer, seed)
    pipe.save_pretrained(str(out))
    return Path(out)


@torch.no_grad()
def _randomize_zero_init(model: torch.nn.Module, seed: int):
    """Real checkpoints have no all-zero layers; diffusers zero-initializes some (adaLN, output projections,
    pad tokens), which would make a random tiny model's output independent of its input. Give them small noise."""
    g = torch.Generator().manual_seed(seed + 1)
    for p in model.parameters():
        if p.numel() and bool((p == 0).all()):
            p.copy_(torch.randn(p.shape, generator=g).to(p.device) * 0.05)


BUILDERS = {"sd3": build_sd3, "zimage": build_zimage, "flux_kontext": build_flux_kontext}


def build(family: str, out, **kw) -> Path:
    return BUILDERS[family](out, **kw)


@torch.no_grad()
def _perturb(module: torch.nn.Module, seed: int, scale: float = 0.02):
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(torch.randn(p.shape, generator=g) * scale)


def random_lora(family: str, base: Path, out: Path, seed: int = 5, rank: int = 4) -> Path:
    """A diffusers-format LoRA with non-zero random weights on a tiny transformer (a stand-in teacher delta)."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from ..backends.registry import get_family

    fam = get_family(family)
    tr = fam.transformer_cls().from_pretrained(str(Path(base) / "transformer"))
    tr.add_adapter(LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in tr.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    fam.pipeline_cls.save_lora_weights(str(out), transformer_lora_layers=get_peft_model_state_dict(tr),
                                       transformer_lora_adapter_metadata=tr.peft_config["default"].to_dict())
    return Path(out)


def build_demo(family: str, root, size: str = "tiny") -> dict[str, str]:
    """``<root>/<family>`` (the base pipeline) plus an edit teacher: for SD3 a transformer with zero-initialized
    source channels, then perturbed (``<root>/sd3_edit_transformer``); for Kontext / Z-Image a random LoRA
    (``<root>/<family>_edit_lora``). ``size``: SD3 only (``SD3_SIZES``). Returns the model specs
    {"base", "t2i", "edit"}."""
    from ..backends.registry import get_family

    root = Path(root)
    base = build(family, root / family, **({"size": size} if family == "sd3" else {}))
    if family == "sd3":
        fam = get_family("sd3")
        tr = fam.make_edit(fam.transformer_cls().from_pretrained(str(base / "transformer")))
        _perturb(tr, 3)
        tr.save_pretrained(str(root / "sd3_edit_transformer"))
        edit = f"sd3:{base}+transformer:{root / 'sd3_edit_transformer'}"
    else:
        edit = f"{family}:{base}+lora:{random_lora(family, base, root / f'{family}_edit_lora')}"
    return {"base": str(base), "t2i": f"{family}:{base}", "edit": edit}


@torch.no_grad()
def sd3_edit_teacher_run(base, out, seed: int = 7, rank: int = 4) -> str:
    """An SD3 edit teacher as a danceopd run folder, small on disk whatever the transformer's size: a random LoRA
    on the base transformer plus a widened patch embedding whose source channels are random
    (``danceopd_edit_weights.safetensors``). Only the patch embedding and the LoRA targets' shapes are read from
    the base (no full transformer is loaded). Returns its model spec ``sd3:<out>``."""
    import json

    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ..backends.diffusers.options import EDIT_WEIGHTS_FILE, FORMAT, MODEL_JSON
    from ..backends.registry import get_family

    base, out = Path(base).resolve(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fam = get_family("sd3")
    g = torch.Generator().manual_seed(seed)
    tdir = base / "transformer"
    tensors = {}
    for f in sorted(tdir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                if k.startswith("pos_embed.proj."):
                    tensors[k] = h.get_tensor(k).float()
    w, b = tensors["pos_embed.proj.weight"], tensors["pos_embed.proj.bias"]
    src = torch.randn(w.shape, generator=g) * float(w.std()) * 0.5
    save_file({"pos_embed.proj.weight": torch.cat([w, src], dim=1).contiguous(), "pos_embed.proj.bias": b},
              str(out / EDIT_WEIGHTS_FILE))
    # the LoRA: an adapter on a meta-device copy tells which modules and shapes; random values, saved by diffusers
    cfg = json.loads((tdir / "config.json").read_text(encoding="utf-8"))
    with torch.device("meta"):
        tr = fam.transformer_cls().from_config(cfg)
    tr.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    sd = {k: (torch.randn(v.shape, generator=g) * (0.02 if "lora_B" in k else 1.0 / v.shape[-1] ** 0.5))
          for k, v in get_peft_model_state_dict(tr).items()}
    fam.pipeline_cls.save_lora_weights(str(out), transformer_lora_layers=sd,
                                       transformer_lora_adapter_metadata=tr.peft_config["default"].to_dict())
    (out / MODEL_JSON).write_text(json.dumps({"format": FORMAT, "family": "sd3", "kind": "lora", "edit": True,
                                              "init": str(base), "edit_weights": EDIT_WEIGHTS_FILE,
                                              "meta": {"name": "random edit teacher"}}, indent=2), encoding="utf-8")
    return f"sd3:{out}"


if __name__ == "__main__":   # python -m danceopd.testing.tiny_pipelines <sd3|zimage|flux_kontext|all> [root]
    import sys

    fams = list(BUILDERS) if len(sys.argv) < 2 or sys.argv[1] == "all" else [sys.argv[1]]
    for f in fams:
        print(build_demo(f, sys.argv[2] if len(sys.argv) > 2 else "runs/tiny"))
