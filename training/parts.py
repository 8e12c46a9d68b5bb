"""The folders a recipe starts from, checked before anything is loaded: pretrained parts (a CLIP
folder, a causal-LM folder, or tiny random ones built in ``work_dir``) and checkpoint folders.

Each check raises a ValueError naming the config key, the folder, what it holds and what was
expected, so a wrong path fails at once with a message that says how to fix it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from training.loop import describe_found

CLIP_TYPES = ("clip", "clip_vision_model")
CAUSAL_LM_EXPECTED = (
    "a causal language model folder (config.json whose model_type has a causal-LM class in transformers, "
    "e.g. llama or qwen2; weights; tokenizer)"
)


def config_json(folder: Path, what: str, expected: str) -> dict:
    """``folder/config.json``; ``what`` names the folder in errors (e.g. the config key ``init_from``)."""
    path = folder / "config.json"
    if not path.is_file():
        found = describe_found(folder) if folder.is_dir() else "no such folder"
        raise ValueError(f"{what} {folder}: holds {found}; expected {expected}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{what} {path} is not JSON ({exc}); expected {expected}") from None


def check_model_type(folder: Path, what: str, types: Collection[str], expected: str, wrong: str = "") -> str:
    """The model_type of ``folder``'s config.json, one of ``types``; ``wrong`` is added to the error otherwise."""
    model_type = config_json(folder, what, expected).get("model_type")
    if model_type not in types:
        raise ValueError(
            f"{what} {folder} holds a {model_type!r} model (config.json model_type){wrong}; expected {expected}"
        )
    return model_type


def check_clip(folder: Path, what: str, files: str = "weights") -> None:
    """A transformers CLIP or CLIP-vision folder (``files``: what else it must hold, for the message)."""
    check_model_type(
        folder,
        what,
        CLIP_TYPES,
        f"a CLIP checkpoint folder (config.json model_type 'clip' or 'clip_vision_model', {files})",
    )


def check_causal_lm(folder: Path, what: str) -> None:
    """A folder with a transformers causal LM (its model_type has a causal-LM class)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    check_model_type(folder, what, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, CAUSAL_LM_EXPECTED, ", which is not a causal LM")


def check_loading_info(folder: Path, info: Mapping[str, Any]) -> None:
    """``from_pretrained(..., output_loading_info=True)``'s report: every weight found, none left over."""
    wrong = [k for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)]
    if wrong:
        raise ValueError(
            f"init_from {folder}: config.json does not match the weights "
            f"({'; '.join(f'{k}: {sorted(map(str, info[k]))[:3]}' for k in wrong)})"
        )


def vision_and_lm(work_dir: str | Path, vision_path: str, lm_path: str) -> tuple[Path, Path]:
    """The CLIP and causal-LM folders; an empty path builds a tiny random one in ``work_dir`` (tiny.toml, tests)."""
    from training.tiny_checkpoints import tiny_causal_lm, tiny_clip

    work = Path(work_dir)
    vision = Path(vision_path) if vision_path else tiny_clip(work / "tiny-clip")
    lm = Path(lm_path) if lm_path else tiny_causal_lm(work / "tiny-lm")
    return vision, lm


def lora_config(c: Any) -> Any:
    """peft's LoraConfig from a recipe config's ``lora_r``, ``lora_alpha``, ``lora_dropout``, ``lora_targets``."""
    from peft import LoraConfig

    return LoraConfig(
        r=c.lora_r,
        lora_alpha=c.lora_alpha,
        lora_dropout=c.lora_dropout,
        target_modules=list(c.lora_targets),
        bias="none",
    )
