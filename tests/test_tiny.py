"""Tests for nwor.tiny / nwor.tiny_build on real built models (CPU, seconds): cache keys, inert layers, vocabulary."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.torch import load_file

from nwor.tiny import RECIPES, TinyRecipe, ensure_tiny_models
from nwor.tiny_build import RESIDUAL_WRITERS, filler_token, target_config, train_tokenizer

# A small "dead layers" shape: 4 layers, 3 inert, hidden 128, vocabulary padded past the trained BPE.
DEAD = TinyRecipe(num_hidden_layers=4, vocab_size=1100, trained_vocab_size=1000)
ONE = replace(DEAD, num_hidden_layers=1)
LLAMA31_8B_PARAMETERS = 8_030_261_248  # meta-llama/Llama-3.1-8B's parameter count


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import os

    cache = tmp_path_factory.mktemp("models")
    saved = os.environ.get("NWOR_MODEL_CACHE")
    os.environ["NWOR_MODEL_CACHE"] = str(cache)
    try:
        yield {"dead": ensure_tiny_models(DEAD), "one": ensure_tiny_models(ONE)}
    finally:
        if saved is None:
            os.environ.pop("NWOR_MODEL_CACHE")
        else:
            os.environ["NWOR_MODEL_CACHE"] = saved


def _weights(folder: str) -> dict:
    out = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(path))
    return out


def test_cpu_pair_keeps_its_cache_keys():
    # The keys of the pairs whose acceptance docs/tiny_models.md reports: new recipe fields at their
    # defaults must not change them (the CPU pair's weights were also checked byte-identical when they came).
    assert TinyRecipe().key() == RECIPES["cpu"].key() == "764268516078"
    assert RECIPES["gpu"].key() == "3956f304f317"
    assert DEAD.key() != ONE.key() != TinyRecipe().key()


def test_inert_layers_zero_exactly_their_residual_writers(built):
    weights = _weights(built["dead"].target)
    for i in range(3):
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm",
                     "post_attention_layernorm"):
            tensor = weights[f"model.layers.{i}.{name}.weight"]
            if f"{name}.weight" in RESIDUAL_WRITERS:
                assert tensor.count_nonzero() == 0, f"layer {i} {name} must be all zero"
            else:
                assert tensor.count_nonzero() == tensor.numel(), f"layer {i} {name} must be dense"
    for name in RESIDUAL_WRITERS:
        assert weights[f"model.layers.3.{name}"].count_nonzero() == weights[f"model.layers.3.{name}"].numel()


def test_dead_target_is_the_one_layer_target_plus_inert_layers(built):
    dead, one = _weights(built["dead"].target), _weights(built["one"].target)
    assert set(dead) == set(one) | {k.replace("layers.0.", f"layers.{i}.") for k in one if "layers.0." in k
                                     for i in range(1, 4)}
    for name, tensor in one.items():
        counterpart = name.replace("layers.0.", "layers.3.")  # the active layer comes last
        assert dead[counterpart].equal(tensor), name
    assert not dead["model.layers.0.self_attn.q_proj.weight"].equal(dead["model.layers.1.self_attn.q_proj.weight"])
    # The EAGLE head (and its tokenizer) do not depend on the depth.
    assert _weights(built["dead"].draft).keys() == _weights(built["one"].draft).keys()
    for name, tensor in _weights(built["one"].draft).items():
        assert _weights(built["dead"].draft)[name].equal(tensor), name
    configs = [json.loads((Path(built[k].target) / "config.json").read_text()) for k in ("dead", "one")]
    assert [c["num_hidden_layers"] for c in configs] == [4, 1]
    assert json.loads((Path(built["dead"].draft) / "config.json").read_text())["num_hidden_layers"] == 1


def test_padded_vocabulary_covers_every_id_and_encoding_never_reaches_the_fillers(built):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built["dead"].target)
    rows = _weights(built["dead"].target)["lm_head.weight"].shape[0]
    assert len(tok) == rows == 1100
    assert tok.decode([1000, 1099]) == filler_token(1000) + filler_token(1099)
    ids = tok("the wizard said thanks for the refund, people find code print value").input_ids
    assert ids and max(ids) < 1000
    emb = _weights(built["dead"].target)["model.embed_tokens.weight"].float()
    assert emb.pow(2).mean(dim=1).sub(1).abs().max() < 1e-5  # unit-RMS rows, fillers included


def test_padding_below_the_trained_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="trained_vocab_size"):
        TinyRecipe(vocab_size=500, trained_vocab_size=1000)
    for bad in ({"num_hidden_layers": 0}, {"rope": "yarn"}, {"build_device": "tpu"}):
        with pytest.raises(ValueError):
            TinyRecipe(**bad)
    assert train_tokenizer(TinyRecipe(), tmp_path) == 1000  # the CPU pair: trained size, no padding


def test_llama8b_shaped_recipe_has_llama31_8b_shapes():
    import torch
    from transformers import LlamaForCausalLM

    recipe = RECIPES["llama8b-shaped"]
    cfg = target_config(recipe, recipe.vocab_size)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    assert sum(p.numel() for p in model.parameters()) == LLAMA31_8B_PARAMETERS
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size) == (32, 4096, 14336, 32, 8, 128, 128256)
    assert cfg.rope_parameters["rope_type"] == "llama3" and cfg.rope_parameters["rope_theta"] == 500000.0
    assert recipe.torch_dtype == "bfloat16" and recipe.build_device == "auto"


def _step_check_module():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "gpu_step_check.py"
    spec = importlib.util.spec_from_file_location("gpu_step_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_check_reads_weight_bytes_from_headers(built):
    sizes = _step_check_module().safetensors_bytes(Path(built["dead"].target))
    weights = _weights(built["dead"].target)
    assert sizes == {name: t.numel() * t.element_size() for name, t in weights.items()}


@pytest.mark.parametrize("args", [["--runs", "off,kx"], ["--runs", ""], ["--target", "somewhere"],
                                  ["--tokens", "0"], ["--gpu-memory-utilization", "1.5"]])
def test_step_check_refuses_bad_arguments_before_any_work(tmp_path, args):
    with pytest.raises(SystemExit) as exit_info:
        _step_check_module().main(["--out", str(tmp_path / "s.json"), *args])
    assert exit_info.value.code == 2
    assert not (tmp_path / "s.json").exists()


def test_large_targets_are_written_as_shards_with_an_index(tmp_path, monkeypatch):
    import nwor.tiny_build as tiny_build

    monkeypatch.setenv("NWOR_MODEL_CACHE", str(tmp_path))
    monkeypatch.setattr(tiny_build, "MAX_SHARD_SIZE", "300KB")  # the 8B shape's 5 GB shards, scaled down
    sharded = ensure_tiny_models(DEAD)
    files = sorted(p.name for p in Path(sharded.target).glob("*.safetensors"))
    assert len(files) > 1
    index = json.loads((Path(sharded.target) / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == files
    assert set(index["weight_map"]) == set(_weights(sharded.target))
