"""Tiny local models for the embedded default: a 1-layer Llama target, a matching EAGLE head, a BPE tokenizer.

Built deterministically in seconds with no network, into a cache folder keyed by the recipe, so that
the CPU smoke suite exercises real speculative decoding with a controlled, non-trivial acceptance rate.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

CACHE_ENV = "NWOR_MODEL_CACHE"
# Bump when the construction changes: the cache key includes it, so stale models are never reused.
RECIPE_VERSION = 2

_WORDS = (
    "the a of to and in is it you that he was for on are with as I his they be at one have this from or "
    "had by hot word but what some we can out other were all there when up use your how said an each she "
    "which do their time if will way about many then them write would like so these her long make thing "
    "see him two has look more day could go come did number sound no most people my over know water than "
    "call first who may down side been now find code function return value list print class def import "
    "story dragon night river castle wizard help order account refund please thanks question answer"
).split()


@dataclass(frozen=True)
class TinyRecipe:
    """Knobs of the tiny pair. `draft_noise` sets the acceptance rate (0 → the head reproduces the target)."""

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

    @property
    def effective_lm_head_scale(self) -> float:
        return self.lm_head_scale if self.lm_head_scale is not None else 20.0 * (128 / self.hidden_size) ** 0.5

    def key(self) -> str:
        blob = json.dumps({"recipe_version": RECIPE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# Named recipes a run selects with `tiny_models`: "cpu" for the smoke suite; "gpu" is one Llama-3-8B-sized
# layer (≈ 250 M parameters with its head) so that an H100 has real work, stored in bfloat16.
RECIPES = {
    "cpu": TinyRecipe(),
    "gpu": TinyRecipe(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                      torch_dtype="bfloat16"),
}


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
    """Build the tiny target + EAGLE head once per recipe and return their folders.

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


def _train_tokenizer(recipe: TinyRecipe, out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(recipe.seed)
    suffixes = ["", "s", "ed", "ing", "er", "ly"]
    corpus = [" ".join(rng.choice(_WORDS) + rng.choice(suffixes) for _ in range(30)) for _ in range(4000)]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    # A chat template lets chat-style prompt sets be rendered the same way as for real models.
    fast.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    fast.save_pretrained(out)
    return tok.get_vocab_size()


def _build(recipe: TinyRecipe, root: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    target_dir, eagle_dir = root / "target", root / "eagle"
    vocab = _train_tokenizer(recipe, target_dir)
    _train_tokenizer(recipe, eagle_dir)
    h = recipe.hidden_size
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=h, intermediate_size=recipe.intermediate_size,
        num_hidden_layers=1, num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_key_value_heads, max_position_embeddings=4096,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False,
        rms_norm_eps=1e-6, torch_dtype=recipe.torch_dtype,
    )
    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():
        # Fresh rows: transformers zero-initialises the pad token's row (padding_idx), and normalising
        # a zero row gives NaN, which turns every sampled pad token into a NaN hidden state.
        emb = torch.randn(model.model.embed_tokens.weight.shape)
        # Unit-RMS rows make the input RMSNorm (weight 1) an identity, so the EAGLE layer, which
        # has no input norm, sees exactly what the target's layer sees.
        model.model.embed_tokens.weight.copy_(emb / emb.pow(2).mean(dim=1, keepdim=True).sqrt())
        model.lm_head.weight.mul_(recipe.effective_lm_head_scale)
    dtype = getattr(torch, recipe.torch_dtype)
    model.to(dtype).save_pretrained(target_dir, safe_serialization=True)

    # EAGLE-1 head: fc([embeds, hidden]) -> one decoder layer without input norm; vLLM shares the
    # target's embeddings and lm_head. fc passes the token embedding only and the layer copies the
    # target's, so the head reproduces the target one position ahead; noise then lowers acceptance.
    gen = torch.Generator().manual_seed(recipe.seed + 1)

    def noisy(w: torch.Tensor) -> torch.Tensor:
        return (w + torch.randn(w.shape, generator=gen) * w.std() * recipe.draft_noise).contiguous()

    layer = model.model.layers[0]
    fc = torch.cat([torch.eye(h), torch.zeros(h, h)], dim=1)
    weights = {"fc.weight": noisy(fc) if recipe.draft_noise else fc}
    layer = layer.float()
    for name, tensor in layer.state_dict().items():
        if name.startswith("input_layernorm"):
            continue
        is_norm = "layernorm" in name
        weights[f"layers.0.{name}"] = tensor.clone() if is_norm or not recipe.draft_noise else noisy(tensor)
    eagle_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype) for k, v in weights.items()}, str(eagle_dir / "model.safetensors"))
    eagle_cfg = cfg.to_dict()
    eagle_cfg["architectures"] = ["EagleLlamaForCausalLM"]
    (eagle_dir / "config.json").write_text(json.dumps(eagle_cfg, indent=2))
