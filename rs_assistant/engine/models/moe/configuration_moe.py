"""Configuration of RS-MoE (Lin, Hong, Ge, Luo, Jiang, Jin, Wen, "RS-MoE: A Vision-Language Model with
Mixture of Experts for Remote Sensing Image Captioning and Visual Question Answering", TGRS 2025,
arXiv 2411.01595).

- ``vision_config``: the shared image encoder (a transformers ``CLIPVisionConfig``); its patch
  tokens go through the shared bridge (LLaVA-1.5's two-layer MLP) into the experts' input width;
- ``text_config``: one lightweight causal LM config that every expert has (the experts start as
  copies of one pretrained LM and diverge in stage 2 through their own LoRA adapters);
- ``num_experts`` / ``expert_names``: K experts; the paper's three sub-tasks are theme
  comprehension, object recognition and relationship inference;
- ``prompt_tokens``: the length P of the sub-task prompt the router writes for each expert (soft
  prompt vectors in the experts' input space, prepended to the image tokens and the instruction);
- ``router_layers`` / ``router_heads``: the instruction router, a small transformer over learned
  sub-task queries, one routing token per expert, the image tokens and the instruction;
- ``compose``: how the answer is made of the experts' outputs: ``top1`` (the expert the router
  weighs most answers; what VQA uses), ``concat`` (the ``top_k`` most weighted experts each write
  their part, joined in expert order, as the paper composes a caption from its sub-task experts);
- ``max_positions``: tokens an expert reads (prompt + image + text + answer).
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

COMPOSE = ("top1", "concat")
DEFAULT_EXPERTS = ("theme", "object", "relationship")


@strict
class MoEConfig(PreTrainedConfig):
    model_type = "rs_moe"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
    }
    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    num_experts: int = 3
    expert_names: list | None = None
    prompt_tokens: int = 4
    router_layers: int = 2
    router_heads: int = 4
    compose: str = "top1"
    top_k: int = 1
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        if self.expert_names is None:
            names = list(DEFAULT_EXPERTS[: self.num_experts])
            names += [f"expert_{i}" for i in range(len(names), self.num_experts)]
            self.expert_names = names
        self.expert_names = [str(n) for n in self.expert_names]

    def validate_architecture(self) -> None:
        super().validate_architecture()
        if self.num_experts < 1 or self.prompt_tokens < 1 or self.router_layers < 1:
            raise ValueError(
                f"num_experts ({self.num_experts}), prompt_tokens ({self.prompt_tokens}) and router_layers "
                f"({self.router_layers}) must be positive"
            )
        if len(self.expert_names) != self.num_experts:
            raise ValueError(f"{len(self.expert_names)} expert_names for {self.num_experts} experts")
        if self.compose not in COMPOSE:
            raise ValueError(f"compose must be one of {', '.join(COMPOSE)}, got {self.compose!r}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k must be in 1..{self.num_experts}, got {self.top_k}")
        hidden = getattr(self.text_config, "hidden_size", None)
        if hidden is not None and hidden % self.router_heads:
            raise ValueError(f"router_heads ({self.router_heads}) must divide the experts' hidden size ({hidden})")


__all__ = ["COMPOSE", "DEFAULT_EXPERTS", "MoEConfig"]
