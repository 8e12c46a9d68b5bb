"""RSA, RS Assistant's own vision-language model family (configs as data in ``configs/``).

    from rs_assistant.engine.models.rsa import RSAConfig, RSAForConditionalGeneration, RSAProcessor

configuration_rsa.py holds the sizes, modeling_rsa.py the whole forward pass, processing_rsa.py
the tokenizer, the prompt and answer formats and the location tokens.
"""

from rs_assistant.engine.models.rsa.configuration_rsa import CONFIGS_DIR, RSAConfig, load_named_config
from rs_assistant.engine.models.rsa.modeling_rsa import RSAForConditionalGeneration, RSAOutput, RSAVisualFeatures
from rs_assistant.engine.models.rsa.processing_rsa import (
    Answer,
    LocatedPhrase,
    RSAProcessor,
    SegRequest,
    build_tokenizer,
    extend_tokenizer,
)

__all__ = [
    "Answer",
    "CONFIGS_DIR",
    "LocatedPhrase",
    "RSAConfig",
    "RSAForConditionalGeneration",
    "RSAOutput",
    "RSAProcessor",
    "RSAVisualFeatures",
    "SegRequest",
    "build_tokenizer",
    "extend_tokenizer",
    "load_named_config",
]
