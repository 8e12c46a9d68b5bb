"""RS-MoE (Lin et al., TGRS 2025): a shared vision encoder and bridge, an instruction router that
writes a sub-task prompt for each of K lightweight LLM experts and weighs them, and the experts.

Trained by training/recipes/moe (two stages); served by rs_assistant/engine/backends/moe.py.
"""

from rs_assistant.engine.models.moe.configuration_moe import MoEConfig
from rs_assistant.engine.models.moe.modeling_moe import InstructionRouter, MoEForConditionalGeneration, MoEOutput
from rs_assistant.engine.models.moe.processing_moe import CAPTION_INSTRUCTION, MoEProcessor

__all__ = [
    "CAPTION_INSTRUCTION",
    "InstructionRouter",
    "MoEConfig",
    "MoEForConditionalGeneration",
    "MoEOutput",
    "MoEProcessor",
]
