"""CLIP backend: zero-shot ``classify`` and text-to-image ``retrieve``, plus embeddings.

Models file::

    [models.georsclip]
    backend = "clip"
    path = "/models/GeoRSCLIP-ViT-B-32"
    template = "a satellite image of {label}."   # optional: the classify prompt per label
    batch_size = 16                               # optional: images or texts per forward pass
    weights = "RS5M_ViT-B-32.pt"                  # optional: which weights file (open_clip folders)

Two folder layouts are read, both from local disk only:

1. **transformers CLIP** (e.g. openai/clip-vit-base-patch32, or any CLIPModel fine-tune):
   ``config.json`` with model_type "clip", the weights (``model.safetensors`` or
   ``pytorch_model.bin``), the tokenizer (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``)
   and the image processor's ``preprocessor_config.json`` or ``processor_config.json``, as
   ``CLIPModel.save_pretrained`` and ``CLIPProcessor.save_pretrained`` write them.
2. **open_clip** checkpoints with a standard ViT image tower and the CLIP text transformer
   (GeoRSCLIP, RemoteCLIP, SkyCLIP ViT variants), without open_clip installed:

   - ``open_clip_config.json``: ``{"model_cfg": {...}, "preprocess_cfg": {...}}`` as on the
     Hugging Face hub, or a bare open_clip model config (``{"embed_dim": 512, "vision_cfg":
     {...}, "text_cfg": {...}}``, i.e. open_clip's ``model_configs/ViT-B-32.json`` copied under
     this name). Read: ``embed_dim``, ``quick_gelu``; ``vision_cfg``: ``image_size``,
     ``layers``, ``width``, ``patch_size``, ``head_width`` (64), ``mlp_ratio`` (4);
     ``text_cfg``: ``context_length`` (77), ``vocab_size`` (49408), ``width`` (512), ``heads``
     (8), ``layers`` (12), ``mlp_ratio`` (4); ``preprocess_cfg``: ``mean``, ``std``
     (OpenAI's CLIP values when absent), ``interpolation``, ``resize_mode``.
   - the weights, the first found of: the models file's ``weights``,
     ``open_clip_model.safetensors``, ``open_clip_pytorch_model.bin``, the only ``*.pt`` file.
     A training checkpoint (``{"state_dict": ...}``, keys prefixed ``module.``) is accepted.
   - the BPE vocabulary: ``vocab.json`` + ``merges.txt`` (Hugging Face format) or open_clip's
     ``bpe_simple_vocab_16e6.txt.gz``.

   The open_clip state dict (``visual.conv1``, ``visual.transformer.resblocks.N.attn.in_proj_weight``,
   ``text_projection``, ...) is renamed onto a transformers ``CLIPModel`` on load: the fused
   ``in_proj`` is split into q/k/v and the two projections are transposed. Towers that differ
   from that layout (ResNet, timm or Hugging Face text towers, layer scale, attentional pooling)
   are refused with what was found.

Tasks:

- ``classify``: the window against ``options.labels`` (or, without labels, the comma-separated
  labels of the prompt), each put into ``template``. Softmax of CLIP's scaled cosine
  similarities. The text is the best label, then one ``label: probability`` line per label,
  most likely first. One box feature covering the window carries the best label and its
  probability, so the map shows the answer where it was asked; it is returned whatever its
  probability (``score_threshold`` does not apply to a forced choice).
- ``retrieve``: the request's images (up to 64 windows) ranked by cosine similarity to the
  prompt text (used as is, without the template). The ``options.top_k`` best come back, each as
  a box feature covering *its own* image with properties ``rank`` (1 = best), ``image`` (the
  image's position in the request's ``images``: the box is in that image's pixels, and the engine
  maps it through that image's window) and ``similarity`` (cosine); ``score`` is the softmax of
  the scaled similarities over the request's images (the share of the match each image takes
  among those given). The text lists the same ranking.

``embed_images`` and ``embed_texts`` return L2-normalised embeddings for other engine code
(large-area search) and for training. Images are preprocessed as the checkpoint was trained:
resize of the shorter side and centre crop to the model's square input.
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file as load_safetensors
from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from rs_assistant.core.protocol import ErrorCode, FeatureKind, ProtocolError, Task
from rs_assistant.engine.backends.base import Backend, BackendCall, BackendResult, Detection
from rs_assistant.engine.backends.hf import check_memory, load_failed, weight_files
from rs_assistant.engine.device import attn_implementation, torch_dtype

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "a satellite image of {label}."
DEFAULT_BATCH_SIZE = 16

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
BPE_GZ = "bpe_simple_vocab_16e6.txt.gz"
EXPECTED_LAYOUTS = (
    "expected either a transformers CLIP folder (config.json with model_type 'clip', model.safetensors or "
    "pytorch_model.bin, tokenizer, preprocessor_config.json) or an open_clip folder (open_clip_config.json, "
    f"{' or '.join(OPEN_CLIP_WEIGHTS)} or one *.pt file, vocab.json + merges.txt or {BPE_GZ})"
)

# open_clip config entries that change the architecture away from the standard CLIP ViT.
UNSUPPORTED_CFG = {
    "vision_cfg": (
        "timm_model_name",
        "ls_init_value",
        "attentional_pool",
        "no_ln_pre",
        "final_ln_after_pool",
        "input_patchnorm",
    ),
    "text_cfg": ("hf_model_name", "ls_init_value", "embed_cls", "no_causal_mask", "proj_bias"),
}
SUPPORTED_POOLING = {"vision_cfg": "tok", "text_cfg": "argmax"}
# Entries some checkpoints carry beside the weights (OpenAI's archives, open_clip's causal mask).
NON_WEIGHT_KEYS = frozenset({"input_resolution", "context_length", "vocab_size", "attn_mask"})
RESAMPLING = {"bicubic": PILImageResampling.BICUBIC, "bilinear": PILImageResampling.BILINEAR}


class ClipBackend(Backend):
    name = "clip"
    tasks = frozenset({Task.CLASSIFY, Task.RETRIEVE})
    TILE_BATCH_SIZE = DEFAULT_BATCH_SIZE  # a search embeds this many tiles per forward pass anyway

    model: CLIPModel
    tokenizer: CLIPTokenizer
    image_processor: Any  # CLIPImageProcessor(Pil), whichever the folder names
    template: str
    batch_size: int
    dtype: torch.dtype
    context_length: int

    def load(self) -> None:
        path = self.local_path(required_files=())
        self.template = str(self.config.get("template", DEFAULT_TEMPLATE))
        try:
            usable = "{label}" in self.template and bool(self.template.format(label="x"))
        except (KeyError, IndexError, ValueError):  # other {fields}, or a lone brace
            usable = False
        if not usable:
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"model '{self.model_name}': template {self.template!r} must contain '{{label}}' and no other braces",
            )
        self.batch_size = self.config.get("batch_size", DEFAULT_BATCH_SIZE)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"model '{self.model_name}': batch_size must be a positive integer, got {self.batch_size!r}",
            )
        self.dtype = torch_dtype(self.device)
        if (path / OPEN_CLIP_CONFIG).exists():
            self._load_open_clip(path)
        elif (path / "config.json").exists():
            self._load_transformers(path)
        else:
            names = sorted(p.name for p in path.iterdir())
            found = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "") or "nothing"
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED, f"model '{self.model_name}': {path} holds {found}; {EXPECTED_LAYOUTS}"
            )
        self.model.to(self.device, self.dtype).eval()
        self.context_length = self.model.config.text_config.max_position_embeddings

    def _load_transformers(self, path: Path) -> None:
        model_type = _read_json(self.model_name, path / "config.json").get("model_type")
        if model_type != "clip":
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"model '{self.model_name}': {path / 'config.json'} is for model_type {model_type!r}; "
                f"{EXPECTED_LAYOUTS}",
            )
        check_memory(self, weight_files(path))
        try:
            processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
            self.model = CLIPModel.from_pretrained(
                path, local_files_only=True, dtype=self.dtype, attn_implementation=attn_implementation(self.device)
            )
        except Exception as exc:  # transformers raises many types; all mean the same to the caller
            raise load_failed(self, path, exc) from exc
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        log.info("loaded transformers CLIP '%s' from %s on %s", self.model_name, path, self.device)

    def _load_open_clip(self, path: Path) -> None:
        raw = _read_json(self.model_name, path / OPEN_CLIP_CONFIG)
        model_cfg = raw.get("model_cfg", raw)
        preprocess_cfg = raw.get("preprocess_cfg", {})
        if not (
            isinstance(model_cfg, Mapping)
            and isinstance(model_cfg.get("vision_cfg"), Mapping)
            and isinstance(model_cfg.get("text_cfg"), Mapping)
            and isinstance(preprocess_cfg, Mapping)
        ):
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"model '{self.model_name}': {path / OPEN_CLIP_CONFIG} has no vision_cfg and text_cfg "
                "(expected {'model_cfg': {'embed_dim', 'vision_cfg', 'text_cfg'}} or that model config alone)",
            )
        try:
            vocab, merges = read_bpe(path)
            self.tokenizer = CLIPTokenizer(
                vocab=vocab, merges=merges, model_max_length=_text_cfg(model_cfg)["context_length"]
            )
            config = clip_config_from_open_clip(model_cfg, self.tokenizer)
            if len(vocab) > config.text_config.vocab_size:
                raise ValueError(
                    f"the BPE vocabulary has {len(vocab)} tokens, the text tower only {config.text_config.vocab_size}"
                )
            self.image_processor = image_processor_from_open_clip(model_cfg, preprocess_cfg)
            weights = self._open_clip_weights(path)
            state_dict = convert_open_clip_state_dict(load_open_clip_state_dict(weights))
            self.model = CLIPModel(config)
            self.model.load_state_dict(state_dict, strict=True)
        except Exception as exc:  # a bad file, a missing tensor, a shape mismatch: all a failed load
            log.exception("model '%s': converting the open_clip checkpoint in %s failed", self.model_name, path)
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"model '{self.model_name}': could not convert the open_clip checkpoint in {path}: "
                f"{type(exc).__name__}: {exc}",
            ) from exc
        log.info("loaded open_clip CLIP '%s' from %s (%s) on %s", self.model_name, path, weights.name, self.device)

    def _open_clip_weights(self, path: Path) -> Path:
        if self.config.get("weights"):
            chosen = path / str(self.config["weights"])
            if not chosen.is_file():
                raise FileNotFoundError(f"the models file names weights {chosen}, which does not exist")
            return chosen
        for name in OPEN_CLIP_WEIGHTS:
            if (path / name).is_file():
                return path / name
        pt_files = sorted(path.glob("*.pt"))
        if len(pt_files) == 1:
            return pt_files[0]
        if pt_files:
            raise FileNotFoundError(
                f"several *.pt files ({', '.join(p.name for p in pt_files)}); name one with 'weights = ...' in the "
                f"models file"
            )
        raise FileNotFoundError(f"no weights: expected {' or '.join(OPEN_CLIP_WEIGHTS)} or one *.pt file")

    # --- tasks ----------------------------------------------------------------------------------

    def run(self, call: BackendCall) -> BackendResult:
        self.check_task(call.task)
        self.ensure_loaded()
        if call.task == Task.CLASSIFY:
            return self._classify(call)
        return self._retrieve(call)

    def run_batch(self, calls: Sequence[BackendCall]) -> list[BackendResult]:
        """Classify calls (the tiles of a batch job) with their windows embedded together, ``batch_size`` per forward
        pass, and each set of labels embedded once for all the calls that share it; other calls one at a time. Each
        answer is the one :meth:`run` gives its call alone."""
        for call in calls:
            self.check_task(call.task)
        self.ensure_loaded()
        results: dict[int, BackendResult] = {}
        by_labels: dict[tuple[str, ...], list[int]] = {}
        for index, call in enumerate(calls):
            if call.task is Task.CLASSIFY:
                by_labels.setdefault(tuple(self._labels(call)), []).append(index)
            else:
                results[index] = self.run(call)
        for labels, indexes in by_labels.items():
            cancel = calls[indexes[0]].cancel
            image_embeds = np.concatenate(self.in_batches([calls[i] for i in indexes], self._embed_windows))
            text_embeds = self.embed_texts([self.template.format(label=label) for label in labels], cancel)
            for i, embedding in zip(indexes, image_embeds):
                results[i] = self._classified(list(labels), calls[i].images[0], embedding, text_embeds)
        return [results[i] for i in range(len(calls))]

    def _embed_windows(self, calls: Sequence[BackendCall]) -> list[np.ndarray]:
        return [self.embed_images([call.images[0] for call in calls], calls[0].cancel)]

    def _labels(self, call: BackendCall) -> list[str]:
        labels = list(call.options.labels) or call.prompt.split(",")
        labels = list(dict.fromkeys(label.strip() for label in labels if label.strip()))
        if not labels:
            raise ProtocolError(
                ErrorCode.INVALID_VALUE, "classify needs candidate labels (options.labels or a comma-separated prompt)"
            )
        return labels

    def _classify(self, call: BackendCall) -> BackendResult:
        labels = self._labels(call)
        image = call.images[0]
        image_embeds = self.embed_images([image], call.cancel)
        text_embeds = self.embed_texts([self.template.format(label=label) for label in labels], call.cancel)
        return self._classified(labels, image, image_embeds[0], text_embeds)

    def _classified(
        self, labels: list[str], image: np.ndarray, image_embed: np.ndarray, text_embeds: np.ndarray
    ) -> BackendResult:
        probs = _softmax(self.logit_scale * (image_embed[None] @ text_embeds.T)[0])
        order = np.argsort(-probs, kind="stable")
        best = int(order[0])
        text = "\n".join([labels[best]] + [f"{labels[i]}: {probs[i]:.3f}" for i in order])
        height, width = image.shape[:2]
        detection = Detection(
            kind=FeatureKind.BOX,
            label=labels[best],
            score=float(probs[best]),
            box=(0.0, 0.0, float(width), float(height)),
        )
        return BackendResult(text=text, detections=[detection])

    def _retrieve(self, call: BackendCall) -> BackendResult:
        query = call.prompt.strip()
        if not query:
            raise ProtocolError(ErrorCode.INVALID_VALUE, "retrieve needs a text prompt describing what to look for")
        image_embeds = self.embed_images(call.images, call.cancel)
        similarity = image_embeds @ self.embed_texts([query], call.cancel)[0]
        scores = _softmax(self.logit_scale * similarity)
        order = np.argsort(-similarity, kind="stable")[: call.options.top_k]
        detections = []
        lines = []
        for rank, index in enumerate(order.tolist(), start=1):
            height, width = call.images[index].shape[:2]
            sim = float(similarity[index])
            detections.append(
                Detection(
                    kind=FeatureKind.BOX,
                    label=query,
                    score=float(scores[index]),
                    box=(0.0, 0.0, float(width), float(height)),
                    properties={"rank": rank, "image": index, "similarity": sim},
                )
            )
            lines.append(f"{rank}. image {index}: similarity {sim:.3f}, score {scores[index]:.3f}")
        return BackendResult(text="\n".join(lines), detections=detections)

    # --- embeddings -----------------------------------------------------------------------------

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp())

    def embed_images(self, images: Sequence[np.ndarray], cancel: threading.Event | None = None) -> np.ndarray:
        """N x D float32 L2-normalised image embeddings of H x W x 3 uint8 RGB arrays."""
        self.ensure_loaded()
        out = []
        for batch in _batches(images, self.batch_size, cancel):
            pixels = self.image_processor(images=list(batch), input_data_format="channels_last", return_tensors="pt")
            with torch.inference_mode():
                features = self.model.get_image_features(
                    pixel_values=pixels["pixel_values"].to(self.device, self.dtype)
                )
            out.append(F.normalize(features.pooler_output.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.projection_dim), np.float32)

    def score_text(self, embeddings: np.ndarray, text: str, cancel: threading.Event | None = None) -> np.ndarray:
        """Cosine similarities of ``text`` to images given by their :meth:`embed_images` embeddings (a layer search)."""
        query = self.embed_texts([text.strip()], cancel)[0]
        return np.asarray(embeddings, np.float32).reshape(len(embeddings), -1) @ query

    def embed_texts(self, texts: Sequence[str], cancel: threading.Event | None = None) -> np.ndarray:
        """N x D float32 L2-normalised text embeddings (texts longer than the context are cut)."""
        self.ensure_loaded()
        out = []
        for batch in _batches(texts, self.batch_size, cancel):
            tokens = self.tokenizer(
                list(batch), padding=True, truncation=True, max_length=self.context_length, return_tensors="pt"
            ).to(self.device)
            with torch.inference_mode():
                features = self.model.get_text_features(
                    input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                )
            out.append(F.normalize(features.pooler_output.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.projection_dim), np.float32)


def _batches(items: Sequence[Any], size: int, cancel: threading.Event | None) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        if cancel is not None and cancel.is_set():
            raise ProtocolError(ErrorCode.CANCELLED, "the request was cancelled")
        yield items[start : start + size]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits.astype(np.float64) - logits.max())
    return z / z.sum()


def _read_json(model_name: str, path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED, f"model '{model_name}': cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED, f"model '{model_name}': {path} is not a JSON object")
    return data


# --- open_clip: configuration -------------------------------------------------------------------


def _vision_cfg(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """open_clip's CLIPVisionCfg defaults, overridden by the checkpoint's vision_cfg."""
    defaults = {"layers": 12, "width": 768, "head_width": 64, "mlp_ratio": 4.0, "patch_size": 16, "image_size": 224}
    return {**defaults, **model_cfg["vision_cfg"]}


def _text_cfg(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """open_clip's CLIPTextCfg defaults, overridden by the checkpoint's text_cfg."""
    defaults = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12, "mlp_ratio": 4.0}
    return {**defaults, **model_cfg["text_cfg"]}


def _square_image_size(vision: Mapping[str, Any]) -> int:
    size = vision["image_size"]
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"vision_cfg.image_size {size} is not square")
        size = size[0]
    return int(size)


def clip_config_from_open_clip(model_cfg: Mapping[str, Any], tokenizer: CLIPTokenizer) -> CLIPConfig:
    """The transformers CLIPConfig of an open_clip ViT model config; refuses other towers."""
    vision, text = _vision_cfg(model_cfg), _text_cfg(model_cfg)
    if isinstance(vision["layers"], (list, tuple)):
        raise ValueError(
            f"vision_cfg.layers {vision['layers']} describes a ResNet image tower; only ViT towers are supported"
        )
    found = [f"{tower}.{key}" for tower, keys in UNSUPPORTED_CFG.items() for key in keys if model_cfg[tower].get(key)]
    found += [
        f"{tower}.pool_type={model_cfg[tower]['pool_type']!r}"
        for tower, pool in SUPPORTED_POOLING.items()
        if model_cfg[tower].get("pool_type", pool) != pool
    ]
    if found:
        raise ValueError(f"the open_clip config uses {', '.join(found)}, which the standard CLIP layout does not have")
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    width = int(vision["width"])
    return CLIPConfig(
        projection_dim=int(model_cfg["embed_dim"]),
        vision_config={
            "hidden_size": width,
            "intermediate_size": int(width * vision["mlp_ratio"]),
            "num_hidden_layers": int(vision["layers"]),
            "num_attention_heads": width // int(vision["head_width"]),
            "image_size": _square_image_size(vision),
            "patch_size": int(vision["patch_size"]),
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
        },
        text_config={
            "vocab_size": int(text["vocab_size"]),
            "hidden_size": int(text["width"]),
            "intermediate_size": int(text["width"] * text["mlp_ratio"]),
            "num_hidden_layers": int(text["layers"]),
            "num_attention_heads": int(text["heads"]),
            "max_position_embeddings": int(text["context_length"]),
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
    )


def image_processor_from_open_clip(
    model_cfg: Mapping[str, Any], preprocess_cfg: Mapping[str, Any]
) -> CLIPImageProcessorPil:
    """open_clip's eval transform: resize (shorter side, or squash), centre crop, normalise."""
    vision = _vision_cfg(model_cfg)
    size = _square_image_size(vision)
    mean = preprocess_cfg.get("mean", vision.get("image_mean", OPENAI_CLIP_MEAN))
    std = preprocess_cfg.get("std", vision.get("image_std", OPENAI_CLIP_STD))
    interpolation = preprocess_cfg.get("interpolation", "bicubic")
    resize_mode = preprocess_cfg.get("resize_mode", "shortest")
    if interpolation not in RESAMPLING or resize_mode not in ("shortest", "squash"):
        raise ValueError(
            f"preprocess_cfg interpolation {interpolation!r} / resize_mode {resize_mode!r} is not supported"
        )
    resize = {"shortest_edge": size} if resize_mode == "shortest" else {"height": size, "width": size}
    return CLIPImageProcessorPil(
        size=resize,
        crop_size={"height": size, "width": size},
        do_center_crop=resize_mode == "shortest",
        resample=RESAMPLING[interpolation],
        image_mean=list(mean),
        image_std=list(std),
    )


# --- open_clip: tokenizer -----------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from bytes to printable unicode characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def vocab_from_merges(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """The vocabulary the original CLIP tokenizer builds from its merges."""
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


def read_bpe(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary and merges in ``path``: vocab.json + merges.txt, else open_clip's gzip."""
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
        lines = (path / "merges.txt").read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
        return vocab, merges  # type: ignore[return-value]
    if (path / BPE_GZ).is_file():
        with gzip.open(path / BPE_GZ, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        # As the original CLIP tokenizer: skip the header, keep 49152 - 256 - 2 merges.
        merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1] if line.strip()]
        return vocab_from_merges(merges), merges  # type: ignore[arg-type]
    raise FileNotFoundError(f"no BPE vocabulary: expected vocab.json + merges.txt or {BPE_GZ}")


# --- open_clip: weights -------------------------------------------------------------------------


def load_open_clip_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    """The state dict in an open_clip weights file, unwrapped from a training checkpoint."""
    if weights.suffix == ".safetensors":
        return load_safetensors(str(weights))
    data = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise ValueError(f"{weights.name} holds a {type(data).__name__}, not a state dict")
    return {key.removeprefix("module."): value for key, value in data.items()}


RESBLOCK_RENAMES = (
    ("ln_1", "layer_norm1"),
    ("ln_2", "layer_norm2"),
    ("mlp.c_fc", "mlp.fc1"),
    ("mlp.c_proj", "mlp.fc2"),
    ("attn.out_proj", "self_attn.out_proj"),
)


def convert_open_clip_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an open_clip ViT CLIP state dict onto transformers' CLIPModel.

    Every open_clip tensor must be used: a key left over means a layout this mapping does not
    know, and is reported rather than silently dropped.
    """
    src = {k: v for k, v in state_dict.items() if k not in NON_WEIGHT_KEYS}
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        if key not in src:
            raise ValueError(f"the state dict has no '{key}' (expected the open_clip ViT layout)")
        return src.pop(key)

    def move(old: str, new: str, transpose: bool = False) -> None:
        tensor = take(old)
        out[new] = tensor.t().contiguous() if transpose else tensor

    def move_norm(old: str, new: str) -> None:
        move(f"{old}.weight", f"{new}.weight")
        move(f"{old}.bias", f"{new}.bias")

    for old_tower, new_tower in (("visual.transformer", "vision_model.encoder"), ("transformer", "text_model.encoder")):
        layer = 0
        while f"{old_tower}.resblocks.{layer}.ln_1.weight" in src:
            old, new = f"{old_tower}.resblocks.{layer}", f"{new_tower}.layers.{layer}"
            for kind in ("weight", "bias"):
                q, k, v = take(f"{old}.attn.in_proj_{kind}").chunk(3, dim=0)
                out[f"{new}.self_attn.q_proj.{kind}"] = q.contiguous()
                out[f"{new}.self_attn.k_proj.{kind}"] = k.contiguous()
                out[f"{new}.self_attn.v_proj.{kind}"] = v.contiguous()
            for old_name, new_name in RESBLOCK_RENAMES:
                move_norm(f"{old}.{old_name}", f"{new}.{new_name}")
            layer += 1
        if layer == 0:
            raise ValueError(f"the state dict has no '{old_tower}.resblocks.0' (expected the open_clip ViT layout)")

    move("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight")
    move("visual.class_embedding", "vision_model.embeddings.class_embedding")
    move("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight")
    move_norm("visual.ln_pre", "vision_model.pre_layrnorm")
    move_norm("visual.ln_post", "vision_model.post_layernorm")
    move("visual.proj", "visual_projection.weight", transpose=True)
    move("token_embedding.weight", "text_model.embeddings.token_embedding.weight")
    move("positional_embedding", "text_model.embeddings.position_embedding.weight")
    move_norm("ln_final", "text_model.final_layer_norm")
    move("text_projection", "text_projection.weight", transpose=True)
    move("logit_scale", "logit_scale")
    if src:
        shown = ", ".join(sorted(src)[:8]) + (" ..." if len(src) > 8 else "")
        raise ValueError(f"the state dict has {len(src)} tensor(s) the standard CLIP layout does not have: {shown}")
    return out
