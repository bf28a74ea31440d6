"""Local paths of a run's models: the tiny names are built on demand (nwor.tiny), others pass through."""
from __future__ import annotations

from nwor.config import TINY_DRAFT, TINY_TARGET, RunSpec


def resolve_models(spec: RunSpec) -> dict:
    """Local paths for the engine: the tiny names are built on demand (nwor.tiny), others pass through."""
    paths = {"target_model": spec.target_model, "draft_model": spec.draft_model}
    if TINY_TARGET in (spec.target_model, spec.draft_model) or spec.draft_model == TINY_DRAFT:
        from nwor.tiny import RECIPES, ensure_tiny_models


        tiny = ensure_tiny_models(RECIPES[spec.tiny_models])
        if spec.target_model == TINY_TARGET:
            paths["target_model"] = tiny.target
        if spec.draft_model == TINY_DRAFT:
            paths["draft_model"] = tiny.draft
    if spec.method == "ngram":
        paths["draft_model"] = None
    return paths
