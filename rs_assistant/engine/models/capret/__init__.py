"""RS-CapRet (frozen CLIP + frozen causal LM + trained linear bridge, with a [RET] retrieval token).

Trained by training/recipes/capret; served by rs_assistant/engine/backends/capret.py.
"""

from rs_assistant.engine.models.capret.configuration_capret import CapRetConfig
from rs_assistant.engine.models.capret.modeling_capret import CapRetForCausalLM, CapRetOutput
from rs_assistant.engine.models.capret.processing_capret import (
    IMAGE_TOKEN,
    RET_TOKEN,
    CapRetProcessor,
    add_special_tokens,
)

__all__ = [
    "IMAGE_TOKEN",
    "RET_TOKEN",
    "CapRetConfig",
    "CapRetForCausalLM",
    "CapRetOutput",
    "CapRetProcessor",
    "add_special_tokens",
]
