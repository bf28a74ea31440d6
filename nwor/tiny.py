"""Locally built models: a Llama target with one active layer, a matching EAGLE head, a BPE tokenizer.

Built deterministically with no network, into a cache folder keyed by the recipe, so that the CPU smoke
suite exercises real speculative decoding with a controlled, non-trivial acceptance rate, and the GPU
profiles get a target with Llama-3.1-8B's shapes and cost whose acceptance is just as controlled
(docs/tiny_models.md). The construction itself is in nwor.tiny_build.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

CACHE_ENV = "NWOR_MODEL_CACHE"
# Bump when the construction changes: the cache key includes it, so stale models are never reused.
RECIPE_VERSION = 2
ROPES = ("default", "llama3.1")
BUILD_DEVICES = ("cpu", "auto")


@dataclass(frozen=True)
class TinyRecipe:
    """Knobs of the built pair. `draft_noise` sets the acceptance rate (0 → the head reproduces the target)."""

    hidden_size: int = 128
    intermediate_size: int = 256
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 1000
    # Sharp target logits: an unscaled random lm_head is nearly flat (top-token p ≈ 0.005), which
    # would make every temperature > 0 run accept nothing. None: 20 × sqrt(128 / hidden), which keeps
    # the logits' spread (std ≈ 4.5) the same at every width.
    lm_head_scale: float | None = None
    draft_noise: float = 0.1  # acceptance ~0.3-0.5 at T=0, lower at T=0.7 (docs/tiny_models.md)
    seed: int = 0
    torch_dtype: str = "float32"
    # Added after the CPU pair was pinned: they enter the cache key only when they differ from these
    # defaults, so the CPU pair's key (and its measured acceptance) stays valid.
    num_hidden_layers: int = 1  # all but the last are inert: they cost their full work and add nothing
    trained_vocab_size: int | None = None  # BPE trained to this size, padded with filler tokens to vocab_size
    max_position_embeddings: int = 4096
    rope: str = "default"  # "default": theta 10000; "llama3.1": Llama 3.1's theta and frequency scaling
    build_device: str = "cpu"  # "auto": build on CUDA when available (the key then records the device)

    def __post_init__(self):
        if self.num_hidden_layers < 1:
            raise ValueError(f"num_hidden_layers must be >= 1, got {self.num_hidden_layers}")
        if self.rope not in ROPES:
            raise ValueError(f"rope must be one of {', '.join(ROPES)}, got {self.rope!r}")
        if self.build_device not in BUILD_DEVICES:
            raise ValueError(f"build_device must be one of {', '.join(BUILD_DEVICES)}, got {self.build_device!r}")
        if self.trained_vocab_size is not None and not 3 < self.trained_vocab_size <= self.vocab_size:
            raise ValueError(f"trained_vocab_size must be in (3, vocab_size], got {self.trained_vocab_size}")

    @property
    def effective_lm_head_scale(self) -> float:
        return self.lm_head_scale if self.lm_head_scale is not None else 20.0 * (128 / self.hidden_size) ** 0.5

    def device(self) -> str:
        """Where the weights are drawn: "cuda" for build_device auto on a machine with CUDA, else "cpu"."""
        if self.build_device == "cpu":
            return "cpu"
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def key(self) -> str:
        """Cache key: the recipe, the construction's version and, for a CUDA build, the device type
        (CUDA and CPU draw different random numbers from one seed)."""
        values = asdict(self)
        for f in fields(self):
            if f.name in _LATE_FIELDS and values[f.name] == f.default:
                del values[f.name]
        values.pop("build_device", None)
        if self.device() != "cpu":
            values["build_device"] = self.device()
        blob = json.dumps({"recipe_version": RECIPE_VERSION, **values}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


_LATE_FIELDS = ("num_hidden_layers", "trained_vocab_size", "max_position_embeddings", "rope", "build_device")

# Named recipes a run selects with `tiny_models`: "cpu" for the smoke suite; "gpu" is one Llama-3-8B-sized
# layer (≈ 250 M parameters with its head); "llama8b-shaped" has all of Llama-3.1-8B's shapes (32 layers,
# vocabulary 128256, ≈ 16 GB in bfloat16), 31 of its layers inert, built on the GPU when there is one.
RECIPES = {
    "cpu": TinyRecipe(),
    "gpu": TinyRecipe(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                      torch_dtype="bfloat16"),
    "llama8b-shaped": TinyRecipe(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                                 num_key_value_heads=8, vocab_size=128256, trained_vocab_size=1000,
                                 num_hidden_layers=32, max_position_embeddings=131072, rope="llama3.1",
                                 torch_dtype="bfloat16", build_device="auto"),
}
# The same target with a closer EAGLE head: at draft_noise 0.1 the 8B-shaped pair accepts 1.6 tokens a step on
# the H100 (speculation then loses to none); 0.03 gives ~2.7 at K = 10 on its CPU 1-layer twin, EAGLE's regime
# on the real Llama-3.1-8B (docs/tiny_models.md, scripts/tiny_acceptance.py).
RECIPES["llama8b-shaped-noise0.03"] = replace(RECIPES["llama8b-shaped"], draft_noise=0.03)


@dataclass(frozen=True)
class TinyModels:
    """Local folders of the built pair."""

    target: str
    draft: str
    recipe: TinyRecipe


def cache_root() -> Path:
    """Where built models live: `$NWOR_MODEL_CACHE`, else `~/.cache/nwor/models`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "nwor" / "models")


def ensure_tiny_models(recipe: TinyRecipe = TinyRecipe()) -> TinyModels:
    """Build the target + EAGLE head once per recipe and return their folders.

    The pair is built in a temporary folder and renamed into place, so an interrupted build never
    leaves a half-written model behind.
    """
    final = cache_root() / f"tiny-{recipe.key()}"
    if not (final / "DONE").exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=final.parent))
        try:
            _build(recipe, tmp)
            (tmp / "DONE").write_text(json.dumps(asdict(recipe)))
            if final.exists():  # a concurrent builder won; theirs is identical
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return TinyModels(target=str(final / "target"), draft=str(final / "eagle"), recipe=recipe)


def _build(recipe: TinyRecipe, root: Path) -> None:
    from nwor import tiny_build

    device = recipe.device()
    tiny_build.build(recipe, root, device)
    if device == "cuda":
        # The engine that follows needs the memory the build used (≈ 20 GB for the 8B shape).
        import torch

        gc.collect()
        torch.cuda.empty_cache()
