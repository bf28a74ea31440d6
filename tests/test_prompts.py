"""Tests for nwor.prompts: built-in sets, filtering, shuffling, batching, local files, and the errors for
missing sources (including a Hugging Face dataset while offline)."""
from __future__ import annotations

import json
import sys

import pytest

from nwor.errors import ConfigError
from nwor.prompts import BUILTIN_SIZE, batch_prompts, load_prompts


@pytest.mark.parametrize("kind", ["chat", "code", "creative"])
def test_builtin_deterministic_and_distinct(kind):
    a = load_prompts(f"builtin:{kind}")
    b = load_prompts(f"builtin:{kind}")
    assert a == b
    assert len(a) == len(set(a)) == BUILTIN_SIZE
    assert all(isinstance(p, str) and p for p in a)


def test_builtin_sets_differ():
    chat, code, creative = (set(load_prompts(f"builtin:{k}")) for k in ("chat", "code", "creative"))
    assert not chat & code and not chat & creative and not code & creative
    assert any("def " in p or "Python" in p for p in code)
    assert any("story" in p or "poem" in p for p in creative)


def test_length_filter():
    everything = load_prompts("builtin:chat", max_chars=10_000)
    short = load_prompts("builtin:chat", min_chars=1, max_chars=40)
    assert short and all(len(p) <= 40 for p in short)
    assert set(short) < set(everything)
    long = load_prompts("builtin:chat", min_chars=50, max_chars=10_000)
    assert long and all(len(p) >= 50 for p in long)


def test_nothing_passes_filter():
    with pytest.raises(ConfigError, match="no prompt of 5000-6000 characters"):
        load_prompts("builtin:chat", min_chars=5000, max_chars=6000)


def test_shuffle_seed_changes_order_only():
    a = load_prompts("builtin:code", shuffle_seed=1)
    b = load_prompts("builtin:code", shuffle_seed=2)
    assert a != b
    assert sorted(a) == sorted(b)
    assert load_prompts("builtin:code", shuffle_seed=1) == a


def test_batch_prompts_wraps():
    prompts = ["a", "b", "c", "d", "e"]
    assert batch_prompts(prompts, 0, 3) == ["a", "b", "c"]
    assert batch_prompts(prompts, 1, 3) == ["d", "e", "a"]
    assert batch_prompts(prompts, 2, 3) == ["b", "c", "d"]
    assert batch_prompts(prompts, 0, 7) == ["a", "b", "c", "d", "e", "a", "b"]


def test_local_jsonl(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"hello {i}", "other": i}) for i in range(5)) + "\n\n")
    assert sorted(load_prompts(str(path))) == [f"hello {i}" for i in range(5)]


def test_local_jsonl_named_field(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"q{i}", "prompt": "x"}) for i in range(3)))
    assert sorted(load_prompts(f"{path}#question")) == ["q0", "q1", "q2"]
    with pytest.raises(ConfigError, match="line 1: no field 'answer'"):
        load_prompts(f"{path}#answer")


def test_local_json_text_field_and_dedup(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"text": "one"}, {"text": "two"}, {"text": "one"}]))
    assert sorted(load_prompts(str(path))) == ["one", "two"]


def _write(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


@pytest.mark.parametrize(("name", "content", "needle"), [
    # the blank line 2 counts: the message names the line a person sees in an editor
    ("p.jsonl", '{"prompt": "a"}\n\n{"prompt": "b"\n', "p.jsonl line 3: not valid JSON"),
    ("p.jsonl", "", "p.jsonl is empty"),
    ("p.jsonl", "\n\n", "p.jsonl holds no prompts"),
    ("p.jsonl", '{"prompt": "a"}\n{"text": "b"}\n', "p.jsonl line 2: no field 'prompt'"),
    ("p.jsonl", '{"other": "a"}\n', "p.jsonl line 1: no field 'prompt' or 'text' or 'instruction'"),
    ("p.jsonl", '{"prompt": "a"}\n{"prompt": null}\n', "p.jsonl line 2: field 'prompt' is null, not text"),
    ("p.jsonl", '{"prompt": 7}\n', "p.jsonl line 1: field 'prompt' is int, not text"),
    ("p.jsonl", '["a"]\n', "p.jsonl line 1: expected an object or a string, got list"),
    ("p.json", '{"prompt": "a"}', "p.json: expected a JSON list of objects or strings, got a dict"),
    ("p.json", '[{"prompt": "a"},\n {"prompt": }]', "p.json line 2: not valid JSON"),
    ("p.parquet", b"PAR1 this is not parquet", "p.parquet: not a readable parquet file"),
    ("p.txt", b"caf\xe9\n", "p.txt: not UTF-8 text (byte 3)"),
])
def test_local_file_faults_are_one_config_error_naming_file_and_line(tmp_path, name, content, needle):
    with pytest.raises(ConfigError) as info:
        load_prompts(_write(tmp_path / name, content))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_local_parquet_and_null_row(tmp_path):
    import pandas as pd

    path = tmp_path / "p.parquet"
    pd.DataFrame({"prompt": ["x", "y"]}).to_parquet(path)
    assert sorted(load_prompts(str(path))) == ["x", "y"]
    pd.DataFrame({"prompt": ["x", None]}).to_parquet(path)
    with pytest.raises(ConfigError, match="p.parquet row 2: field 'prompt' is null"):
        load_prompts(str(path))


def test_local_json_list_of_strings(tmp_path):
    assert sorted(load_prompts(_write(tmp_path / "p.json", '["b", "a"]'))) == ["a", "b"]


def test_local_txt(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("first line\n\n   \nsecond line\nthird\n")
    assert sorted(load_prompts(str(path))) == ["first line", "second line", "third"]


def test_local_wrong_suffix(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt\nx\n")
    with pytest.raises(ConfigError, match=r"use \.jsonl"):
        load_prompts(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_prompts(str(tmp_path / "none.jsonl"))


def test_unknown_builtin():
    with pytest.raises(ConfigError, match="unknown built-in prompt set 'poetry'"):
        load_prompts("builtin:poetry")


def test_hf_offline_names_dataset_and_local_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # Both libraries read these once at import; patch them too where already imported.
    if "huggingface_hub" in sys.modules:
        monkeypatch.setattr(sys.modules["huggingface_hub"].constants, "HF_HUB_OFFLINE", True)
    if "datasets" in sys.modules:
        monkeypatch.setattr(sys.modules["datasets"].config, "HF_HUB_OFFLINE", True, raising=False)
        monkeypatch.setattr(sys.modules["datasets"].config, "HF_DATASETS_OFFLINE", True, raising=False)
    with pytest.raises(ConfigError) as info:
        load_prompts("hf:nwor-test/does-not-exist")
    message = str(info.value)
    assert "'nwor-test/does-not-exist'" in message
    assert "local" in message and ".jsonl" in message
