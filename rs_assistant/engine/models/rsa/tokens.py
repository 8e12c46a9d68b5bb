"""The RSA model's special tokens: the words its tokenizer adds and its config binds to ids.

Shared by configuration_rsa (``RSAConfig.bind_tokenizer``) and processing_rsa (building and using the
tokenizer), so neither imports the other for them.
"""

from __future__ import annotations

from collections.abc import Mapping

from rs_assistant.core.protocol import Task

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
IMAGE, DELTA, SEG = "<image>", "<delta>", "[SEG]"
TASK_TAGS: Mapping[Task, str] = {
    Task.CAPTION: "<caption>",
    Task.GROUND: "<ground>",
    Task.SEGMENT: "<segment>",
    Task.CHANGE: "<change>",
    Task.CHAT: "<chat>",
}
#: The special tokens in id order (build_tokenizer gives them ids 0..13; the loc tokens follow).
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, USER, ASSISTANT, IMAGE, DELTA, SEG, *TASK_TAGS.values())


def loc_token(index: int) -> str:
    """The token of location bin ``index`` (boxes are written as four of them)."""
    return f"<loc_{index}>"
