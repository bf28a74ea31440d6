"""Prompt sets: built-in generated ones (no downloads), Hugging Face datasets, and local files."""
from __future__ import annotations

import json
import random
from pathlib import Path

from nwor.errors import ConfigError

# Named Hugging Face sets: where the prompt text lives and which rows are prompts.
HF_SETS = {
    "OpenAssistant/oasst1": {"split": "train", "field": "text", "where": {"role": "prompter"}},
    "bigcode/bigcodebench": {"split": "v0.1.4", "field": "instruct_prompt", "where": {}},
    "euclaise/writingprompts": {"split": "train", "field": "prompt", "where": {}},
}
BUILTIN_SIZE = 256

_TOPICS = ["water", "time", "people", "a river", "the castle", "numbers", "sound", "a long day", "the night"]
_CHAT = ["Can you help me with {t}?", "What do you know about {t}?", "Please explain {t} to me like I am new.",
         "I have a question about {t}: how does it work?", "Thanks! Now tell me more about {t} and why it matters."]
_CODE = ["Write a Python function that returns the {t} of a list.", "def {f}(values):\n    \"\"\"Return the {t}.\"\"\"\n",
         "Complete this code:\nclass {F}:\n    def {f}(self):\n        return", "Fix the bug: print({f}(list))  # {t}"]
_CREATIVE = ["Write a story about {t} and a dragon.", "A wizard finds {t} in the old castle. Continue the story.",
             "Write a poem about {t} at night.", "Once upon a time there was {t} near the river, and"]


def _builtin(kind: str) -> list[str]:
    templates = {"chat": _CHAT, "code": _CODE, "creative": _CREATIVE}.get(kind)
    if templates is None:
        raise ConfigError(f"unknown built-in prompt set {kind!r} (known: chat, code, creative)")
    rng = random.Random(f"nwor-builtin-{kind}")
    funcs = ["total", "mean", "longest", "count_words", "find_first", "merge"]
    prompts = []
    for i in range(BUILTIN_SIZE):
        f = rng.choice(funcs)
        text = rng.choice(templates).format(t=rng.choice(_TOPICS), f=f, F=f.title().replace("_", ""))
        prompts.append(f"{text} ({i})")  # distinct prompts: no accidental prefix-cache hits across requests
    return prompts


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"prompt file {path}: not UTF-8 text (byte {err.start})") from None


def _json_rows(path: Path) -> list[tuple[int, object]]:
    """(line number, value) per JSON line, or per element of a JSON list (numbered by position)."""
    text = _read_text(path)
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise ConfigError(f"prompt file {path} line {number}: not valid JSON ({err.msg})") from None
        return rows
    try:
        doc = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as err:
        raise ConfigError(f"prompt file {path} line {err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(doc, list):
        raise ConfigError(f"prompt file {path}: expected a JSON list of objects or strings, got a "
                          f"{type(doc).__name__}; or write one object per line as .jsonl")
    return list(enumerate(doc, 1))


def _parquet_rows(path: Path) -> list[tuple[int, object]]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow's ArrowInvalid, OSError, ...: all mean "not a parquet file nwor can read"
        raise ConfigError(f"prompt file {path}: not a readable parquet file ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''})") from None
    # NaN (a missing value in a numeric or object column) reads as None below, like JSON's null.
    return list(enumerate(frame.astype(object).where(frame.notna(), None).to_dict("records"), 1))


def _prompt_of(path: Path, where: str, number: int, row, names: list[str]) -> str:
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        raise ConfigError(f"prompt file {path} {where} {number}: expected an object or a string, "
                          f"got {type(row).__name__}")
    name = next((n for n in names if n in row), None)
    if name is None:
        raise ConfigError(f"prompt file {path} {where} {number}: no field {' or '.join(map(repr, names))}")
    if not isinstance(row[name], str):
        raise ConfigError(f"prompt file {path} {where} {number}: field {name!r} is "
                          f"{'null' if row[name] is None else type(row[name]).__name__}, not text")
    return row[name]


def _local(path: Path, field: str | None) -> list[str]:
    """Prompts of a local file; any fault is a ConfigError naming the file and the line (a run then is
    `refused`, a bad input, not `failed`)."""
    if not path.is_file():
        raise ConfigError(f"prompt file {path} does not exist")
    if path.suffix not in (".jsonl", ".json", ".parquet", ".txt"):
        raise ConfigError(f"prompt file {path}: use .jsonl, .json, .parquet or .txt")
    if path.stat().st_size == 0:
        raise ConfigError(f"prompt file {path} is empty")
    if path.suffix == ".txt":
        return [line for line in _read_text(path).splitlines() if line.strip()]
    rows = _parquet_rows(path) if path.suffix == ".parquet" else _json_rows(path)
    if not rows:
        raise ConfigError(f"prompt file {path} holds no prompts")
    where = "row" if path.suffix == ".parquet" else "line" if path.suffix == ".jsonl" else "item"
    # The field is chosen once, from the first row, so that every prompt comes from the same field.
    names = [field] if field else ["prompt", "text", "instruction"]
    if isinstance(rows[0][1], dict):
        names = [n for n in names if n in rows[0][1]][:1] or names
    return [_prompt_of(path, where, number, row, names) for number, row in rows]


def _huggingface(name: str) -> list[str]:
    conf = HF_SETS.get(name, {"split": "train", "field": "prompt", "where": {}})
    hint = (f"point nwor at a local copy instead: prompt_set: /path/to/prompts.jsonl "
            f"(one JSON object per line with a '{conf['field']}' field)")
    try:
        import datasets

        table = datasets.load_dataset(name, split=conf["split"])
    except Exception as err:  # offline, missing, gated: all end the same way for the user
        raise ConfigError(f"cannot load prompt dataset {name!r} ({type(err).__name__}); {hint}") from None
    rows = table.filter(lambda r: all(r.get(k) == v for k, v in conf["where"].items())) if conf["where"] else table
    if conf["field"] not in rows.column_names:
        raise ConfigError(f"prompt dataset {name!r} has no field {conf['field']!r}; {hint}")
    return [str(t) for t in rows[conf["field"]]]


def load_prompts(source: str, *, min_chars: int = 1, max_chars: int = 800, shuffle_seed: int = 42) -> list[str]:
    """Load, filter by length, de-duplicate and shuffle a prompt set.

    `source` is `builtin:chat|code|creative`, `hf:ORG/NAME`, or a local file path (optionally
    `path.jsonl#field`).

    Raises:
        ConfigError: the source is unknown or unreadable, or no prompt passes the length filter.
    """
    if source.startswith("builtin:"):
        prompts = _builtin(source.split(":", 1)[1])
    elif source.startswith("hf:"):
        prompts = _huggingface(source.split(":", 1)[1])
    else:
        path, _, field = source.partition("#")
        prompts = _local(Path(path).expanduser(), field or None)
    kept = list(dict.fromkeys(p for p in prompts if min_chars <= len(p) <= max_chars))
    if not kept:
        raise ConfigError(f"prompt set {source!r}: no prompt of {min_chars}-{max_chars} characters")
    random.Random(shuffle_seed).shuffle(kept)
    return kept


def batch_prompts(prompts: list[str], batch_index: int, num_requests: int) -> list[str]:
    """The prompts of one batch: consecutive slices of the shuffled set, wrapping around."""
    start = batch_index * num_requests
    return [prompts[(start + j) % len(prompts)] for j in range(num_requests)]


def prompts_for(spec) -> list[str]:
    """The prompt set a RunSpec names, filtered and shuffled as the spec says.

    Raises:
        ConfigError: as load_prompts.
    """
    return load_prompts(spec.prompt_set, min_chars=spec.prompt_min_chars, max_chars=spec.prompt_max_chars,
                        shuffle_seed=spec.prompt_shuffle_seed)
