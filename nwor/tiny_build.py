"""The construction behind nwor.tiny: tokenizer, target (one active layer, optionally after inert ones), EAGLE head.

One builder for every shape: the CPU smoke pair (1 layer, hidden 128) and the Llama-3.1-8B-shaped GPU target
(32 layers, 31 of them inert) differ only in their recipe (nwor.tiny.TinyRecipe).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

_WORDS = (
    "the a of to and in is it you that he was for on are with as I his they be at one have this from or "
    "had by hot word but what some we can out other were all there when up use your how said an each she "
    "which do their time if will way about many then them write would like so these her long make thing "
    "see him two has look more day could go come did number sound no most people my over know water than "
    "call first who may down side been now find code function return value list print class def import "
    "story dragon night river castle wizard help order account refund please thanks question answer"
).split()
# Llama 3.1's RoPE (its config.json): theta 500000 with the "llama3" long-context frequency scaling.
LLAMA31_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
# Projections whose output is added to the residual stream: zero in an inert layer, so the layer adds
# exactly nothing while its GEMMs, weight reads and KV-cache writes still run at full cost.
RESIDUAL_WRITERS = ("self_attn.o_proj.weight", "mlp.down_proj.weight")
INIT_STD = 0.02  # transformers' initializer_range, as the active layer's own weights
MAX_SHARD_SIZE = "5GB"


def filler_token(index: int) -> str:
    """Vocabulary entry for an id beyond the trained BPE: plain text that decodes to itself."""
    return f"<{index}>"


def train_tokenizer(recipe, out: Path) -> int:
    """A byte-level BPE trained on a generated word corpus, saved to `out`; returns its vocabulary size.

    With `recipe.trained_vocab_size` set, the BPE is trained to that size and then padded with filler
    tokens up to exactly `recipe.vocab_size`, so every id the model can emit decodes to text (vLLM must
    never detokenize an unknown id); encoding never produces a filler (no merge leads to one).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(recipe.seed)
    suffixes = ["", "s", "ed", "ing", "er", "ly"]
    corpus = [" ".join(rng.choice(_WORDS) + rng.choice(suffixes) for _ in range(30)) for _ in range(4000)]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.trained_vocab_size or recipe.vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    if recipe.trained_vocab_size:
        tok = _pad_vocab(tok, recipe.vocab_size)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    # A chat template lets chat-style prompt sets be rendered the same way as for real models.
    fast.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    fast.save_pretrained(out)
    return tok.get_vocab_size()


def _pad_vocab(tok, size: int):
    from tokenizers import Tokenizer

    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    if len(vocab) > size:
        raise ValueError(f"trained vocabulary ({len(vocab)}) exceeds vocab_size {size}")
    for index in range(len(vocab), size):
        vocab[filler_token(index)] = index
    return Tokenizer.from_str(json.dumps(data))


def target_config(recipe, vocab: int, num_hidden_layers: int | None = None):
    """The target's LlamaConfig (`num_hidden_layers` defaults to the recipe's)."""
    from transformers import LlamaConfig

    rope = {"rope_parameters": dict(LLAMA31_ROPE)} if recipe.rope == "llama3.1" else {}
    return LlamaConfig(
        vocab_size=vocab, hidden_size=recipe.hidden_size, intermediate_size=recipe.intermediate_size,
        num_hidden_layers=num_hidden_layers or recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads, num_key_value_heads=recipe.num_key_value_heads,
        max_position_embeddings=recipe.max_position_embeddings,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False,
        rms_norm_eps=1e-6, torch_dtype=recipe.torch_dtype, **rope,
    )


def build(recipe, root: Path, device: str) -> None:
    """Write `root/target` and `root/eagle` for `recipe`, computing on `device` ("cpu" or "cuda").

    The target is a 1-layer Llama drawn from `recipe.seed` exactly as the CPU smoke pair always was;
    with `num_hidden_layers` > 1, inert layers drawn from their own generator go *before* it, so the active
    layer, the embeddings and `lm_head` are those of the equivalent 1-layer target and the EAGLE head is
    the same. (Before, not after: the active layer then normalises the untouched embedding, as in the
    1-layer model.)
    """
    import torch
    from transformers import LlamaForCausalLM

    target_dir, eagle_dir = root / "target", root / "eagle"
    vocab = train_tokenizer(recipe, target_dir)
    train_tokenizer(recipe, eagle_dir)
    cfg = target_config(recipe, vocab, num_hidden_layers=1)
    torch.manual_seed(recipe.seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():
        # Fresh rows: transformers zero-initialises the pad token's row (padding_idx), and normalising
        # a zero row gives NaN, which turns every sampled pad token into a NaN hidden state.
        emb = torch.randn(model.model.embed_tokens.weight.shape, device=device)
        # Unit-RMS rows make the input RMSNorm (weight 1) an identity, so the EAGLE layer, which
        # has no input norm, sees exactly what the target's layer sees.
        model.model.embed_tokens.weight.copy_(emb / emb.pow(2).mean(dim=1, keepdim=True).sqrt())
        model.lm_head.weight.mul_(recipe.effective_lm_head_scale)
        del emb
    dtype = getattr(torch, recipe.torch_dtype)
    model.to(dtype)
    active = model.model.layers[0]
    if recipe.num_hidden_layers > 1:
        inert = [inert_layer(cfg, recipe, i, dtype, device) for i in range(recipe.num_hidden_layers - 1)]
        model.model.layers = torch.nn.ModuleList([*inert, active])
        model.config.num_hidden_layers = recipe.num_hidden_layers
    # Written from host memory (16 GB for the 8B shape): savers differ in whether they move CUDA tensors.
    model.to("cpu").save_pretrained(target_dir, max_shard_size=MAX_SHARD_SIZE)
    model.model.layers = torch.nn.ModuleList([active])  # the inert layers' memory can go now
    _write_eagle(recipe, model.config, active, eagle_dir, dtype)


def inert_layer(cfg, recipe, index: int, dtype, device: str):
    """Decoder layer `index` that adds nothing: `RESIDUAL_WRITERS` zero, every other matrix N(0, 0.02).

    Drawn from a generator of its own (seed + 2 + index), so the active layer, embeddings and head are
    those of the 1-layer target whatever the depth.
    """
    import torch
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    with torch.device("meta"):  # no global RNG draws, no memory until filled
        layer = LlamaDecoderLayer(cfg, layer_idx=index).to(dtype)
    layer.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(recipe.seed + 2 + index)
    with torch.no_grad():
        for name, param in layer.named_parameters():
            if "layernorm" in name:
                param.fill_(1.0)
            elif name in RESIDUAL_WRITERS:
                param.zero_()
            else:
                param.normal_(0.0, INIT_STD, generator=gen)
    return layer


def _write_eagle(recipe, target_cfg, layer, eagle_dir: Path, dtype) -> None:
    # EAGLE-1 head: fc([embeds, hidden]) -> one decoder layer without input norm; vLLM shares the
    # target's embeddings and lm_head. fc passes the token embedding only and the layer copies the
    # target's active one, so the head reproduces the target one position ahead; noise lowers acceptance.
    import torch
    from safetensors.torch import save_file

    device = layer.self_attn.q_proj.weight.device
    gen = torch.Generator(device=device).manual_seed(recipe.seed + 1)

    def noisy(w: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(w.shape, generator=gen, device=device)
        return (w + noise * w.std() * recipe.draft_noise).contiguous()

    h = recipe.hidden_size
    fc = torch.cat([torch.eye(h, device=device), torch.zeros(h, h, device=device)], dim=1)
    weights = {"fc.weight": noisy(fc) if recipe.draft_noise else fc}
    layer = layer.float()
    for name, tensor in layer.state_dict().items():
        if name.startswith("input_layernorm"):
            continue
        is_norm = "layernorm" in name
        weights[f"layers.0.{name}"] = tensor.clone() if is_norm or not recipe.draft_noise else noisy(tensor)
    eagle_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).cpu() for k, v in weights.items()}, str(eagle_dir / "model.safetensors"))
    eagle_cfg = {**target_cfg.to_dict(), "num_hidden_layers": 1}
    eagle_cfg["architectures"] = ["EagleLlamaForCausalLM"]
    (eagle_dir / "config.json").write_text(json.dumps(eagle_cfg, indent=2))
