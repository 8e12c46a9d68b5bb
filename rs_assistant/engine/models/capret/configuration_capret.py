"""Configuration of RS-CapRet (Silva et al., "Large Language Models for Captioning and Retrieving
Remote Sensing Images", 2024), which follows FROMAGe (Koh et al., ICML 2023).

- ``vision_config``: the frozen CLIP image encoder (a transformers ``CLIPVisionConfig`` whose
  ``projection_dim`` is the CLIP embedding size: the pooled, projected image embedding is what
  the bridge reads);
- ``text_config``: the frozen causal LM (any transformers causal LM config; Llama-2-7B in the paper);
- ``num_visual_tokens``: k, the LM input embeddings one image becomes (the linear caption bridge
  maps the CLIP embedding to k x hidden);
- ``retrieval_dim``: the shared space of the ``[RET]`` token's hidden state and the image embedding;
- ``image_token_id`` / ``ret_token_id``: the ids of ``<image>`` (k placeholders per image, replaced
  by the visual embeddings) and ``[RET]``, two tokens added to the LM's tokenizer. Ids at or past
  the LM's vocabulary are fine: their input embedding and output row are the model's own
  trainable vectors, the LM's embedding matrices stay untouched.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


@strict
class CapRetConfig(PreTrainedConfig):
    model_type = "capret"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }
    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    num_visual_tokens: int = 4
    retrieval_dim: int = 256
    image_token_id: int = 32000
    ret_token_id: int = 32001
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))

    def validate_architecture(self) -> None:
        super().validate_architecture()
        if self.num_visual_tokens < 1 or self.retrieval_dim < 1:
            raise ValueError(
                f"num_visual_tokens ({self.num_visual_tokens}) and retrieval_dim ({self.retrieval_dim}) must be "
                f"positive"
            )
        if self.image_token_id == self.ret_token_id:
            raise ValueError(f"image_token_id and ret_token_id are both {self.ret_token_id}")


__all__ = ["CapRetConfig"]
