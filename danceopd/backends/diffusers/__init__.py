"""The diffusers backends (``backend: sd3 | zimage | flux_kontext``): adapters of the one trainer over diffusers
pipelines. Each implements the backend protocol over a diffusers transformer and the family protocol
(``backends.base``).

- ``options.py``: the ``diffusers:`` config section, dtypes, the import guard, run-folder file names.
- ``spec.py``: model specs ``[<family>:]<dir>[+transformer:<dir>][+lora:<dir|file>]...`` (files only).
- ``cache.py``: the frozen components of one base pipeline, shared, with prompt / latent LRU caches.
- ``backend.py``: ``DiffusersBackend`` and its conditions; ``family.py``: ``DiffusersFamily``.
- ``export.py``: exporting a student (LoRA with its self-check, or full) and loading for generation.
- ``families/<name>.py``: one thin file per family (its conventions as data, its transformer call).

Text encoders, tokenizers and the VAE of one base folder are loaded once and shared (frozen) by every teacher and
the student; each backend owns its transformer. A CFG operator over any teacher is the route's
``teacher_guidance`` (``methods.base.TeacherField``).
"""

from .backend import DCond, DiffusersBackend
from .export import is_diffusers_run, load_for_generation
from .family import DiffusersFamily
from .options import DTYPES, MODEL_JSON, DiffusersOptions, check_precision

__all__ = ["DCond", "DTYPES", "MODEL_JSON", "DiffusersBackend", "DiffusersFamily", "DiffusersOptions",
           "check_precision", "is_diffusers_run", "load_for_generation"]
