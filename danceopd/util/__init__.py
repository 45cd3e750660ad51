"""Floor helpers every layer may use: atomic file writes (``atomic``), LoRA adapters (``lora``) and state-dict
merging (``merge``). They import only torch, numpy, safetensors / peft (lazily) and ``danceopd.errors``."""
