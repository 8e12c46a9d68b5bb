"""The checkpoints the model manager offers to download: what each is, how big, under which licence.

    from rs_assistant.core.catalog import CATALOG, catalog_entry
    entry = catalog_entry("florence2-base")      # KeyError naming the known names otherwise

Every entry names a repository on the Hugging Face Hub whose files one of the engine's backends
loads as they are (``allow_patterns`` lists only those files), so a pulled entry answers without
any conversion. Pure standard library: the plugin reads this in QGIS's own Python.

Figures: ``size_gb`` is the download (the files ``allow_patterns`` selects); ``memory_cpu_gb`` is
the weights in float32 plus about 1 GB of activations and processor for one 1024-pixel window;
``memory_gpu_gb`` the same in bfloat16. Where a figure was not read on a model card it is computed
from the parameter count (parameters x bytes per parameter) and the comment says so.

Left out on purpose (the engine cannot run them yet, and the catalogue never lists such a model):
- SAM 2.1 (facebook/sam2.1-hiera-*): the sam backend loads transformers' SamModel only.
- GeoRSCLIP / RemoteCLIP / SkyCLIP: their Hub repositories hold a bare ``*.pt`` state dict
  without ``open_clip_config.json`` or the BPE vocabulary the clip backend needs beside it; put
  those files next to the weights and ``models import FOLDER --backend clip`` registers them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rs_assistant.core.protocol import Task

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: Backends a catalogue entry may use (those that read a checkpoint folder).
CATALOG_BACKENDS = frozenset({"qwen2_5_vl", "florence2", "sam", "clip", "rsa"})


@dataclass(frozen=True)
class CatalogEntry:
    name: str  # short name, also the model's name in the models file
    repo_id: str  # owner/name on the Hugging Face Hub
    revision: str  # "main" or a pinned commit
    backend: str
    tasks: tuple[Task, ...]
    size_gb: float  # download size
    licence: str
    gated: bool  # the Hub asks the user to accept the licence (and a token) before downloading
    memory_cpu_gb: float  # float32 on the CPU
    memory_gpu_gb: float  # bfloat16 on a GPU
    description: str
    allow_patterns: tuple[str, ...]  # the files the backend needs (fnmatch patterns on repo paths)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or self.name in ("auto", "default"):
            raise ValueError(f"catalogue name {self.name!r} must be lower-case letters, digits, '.', '_' or '-', not auto/default")
        if not _REPO.match(self.repo_id):
            raise ValueError(f"catalogue entry {self.name}: repo_id {self.repo_id!r} must be owner/name")
        if not self.revision:
            raise ValueError(f"catalogue entry {self.name}: revision must not be empty")
        if self.backend not in CATALOG_BACKENDS:
            raise ValueError(f"catalogue entry {self.name}: backend {self.backend!r} is not one of {sorted(CATALOG_BACKENDS)}")
        object.__setattr__(self, "tasks", tuple(Task(t) for t in self.tasks))
        if not self.tasks:
            raise ValueError(f"catalogue entry {self.name}: tasks must not be empty")
        for field_name in ("size_gb", "memory_cpu_gb", "memory_gpu_gb"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"catalogue entry {self.name}: {field_name} must be a positive number, got {value!r}")
        if not self.allow_patterns or not all(isinstance(p, str) and p for p in self.allow_patterns):
            raise ValueError(f"catalogue entry {self.name}: allow_patterns must list the files the backend needs")
        object.__setattr__(self, "allow_patterns", tuple(self.allow_patterns))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "repo_id": self.repo_id,
            "revision": self.revision,
            "backend": self.backend,
            "tasks": [t.value for t in self.tasks],
            "size_gb": self.size_gb,
            "licence": self.licence,
            "gated": self.gated,
            "memory_cpu_gb": self.memory_cpu_gb,
            "memory_gpu_gb": self.memory_gpu_gb,
            "description": self.description,
            "allow_patterns": list(self.allow_patterns),
        }


#: Files of a transformers checkpoint in safetensors form (skips the duplicate .bin/.h5/.onnx copies).
_TRANSFORMERS_FILES = ("*.json", "*.safetensors", "*.txt", "*.jinja", "*.model")

CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        name="florence2-base",
        # The transformers-native conversion: microsoft/Florence-2-base needs remote code, which the
        # florence2 backend refuses (rs_assistant/engine/backends/florence2.py).
        repo_id="florence-community/Florence-2-base",
        revision="main",
        backend="florence2",
        tasks=(Task.CAPTION, Task.GROUND, Task.SEGMENT),
        # 0.23 B parameters (microsoft/Florence-2-base model card) x 4 bytes (float32 safetensors): computed.
        size_gb=0.93,
        # MIT: microsoft/Florence-2-base's licence (its model card); the community conversion keeps it.
        licence="MIT",
        gated=False,
        memory_cpu_gb=2.0,  # computed: 0.93 GB of weights + ~1 GB working memory
        memory_gpu_gb=1.5,
        description="Small, fast captions, phrase grounding and referring segmentation (Microsoft Florence-2).",
        allow_patterns=_TRANSFORMERS_FILES,
    ),
    CatalogEntry(
        name="florence2-large",
        repo_id="florence-community/Florence-2-large",
        revision="main",
        backend="florence2",
        tasks=(Task.CAPTION, Task.GROUND, Task.SEGMENT),
        # 0.77 B parameters (microsoft/Florence-2-large model card) x 2 bytes (float16 safetensors): computed.
        size_gb=1.55,
        licence="MIT",  # microsoft/Florence-2-large's model card
        gated=False,
        memory_cpu_gb=4.1,  # computed: 0.77 B x 4 bytes + ~1 GB
        memory_gpu_gb=2.6,
        description="Florence-2 large: better grounding and captions than base, still fits a laptop.",
        allow_patterns=_TRANSFORMERS_FILES,
    ),
    CatalogEntry(
        name="qwen2.5-vl-3b",
        repo_id="Qwen/Qwen2.5-VL-3B-Instruct",
        revision="main",
        backend="qwen2_5_vl",
        tasks=(Task.CAPTION, Task.GROUND, Task.CHAT, Task.CHANGE),
        # 3.75 B parameters x 2 bytes (bfloat16 safetensors, two shards): computed.
        size_gb=7.5,
        # "Qwen Research License": non-commercial (read on gr.tbb.rip/models/Qwen/Qwen2.5-VL-3B-Instruct
        # and openlaboratory.ai/models/qwen2_5-vl-3b-instruct, which quote the model card).
        licence="Qwen Research License (non-commercial)",
        gated=False,
        memory_cpu_gb=16.0,  # computed: 3.75 B x 4 bytes + ~1 GB
        memory_gpu_gb=9.0,
        description="Chat, captions, grounding and change description in one model; slow on a CPU.",
        allow_patterns=_TRANSFORMERS_FILES,
    ),
    CatalogEntry(
        name="qwen2.5-vl-7b",
        repo_id="Qwen/Qwen2.5-VL-7B-Instruct",
        revision="main",
        backend="qwen2_5_vl",
        tasks=(Task.CAPTION, Task.GROUND, Task.CHAT, Task.CHANGE),
        # 8.29 B parameters x 2 bytes (bfloat16 safetensors, five shards): computed.
        size_gb=16.6,
        licence="Apache-2.0",  # the Qwen2.5-VL-7B-Instruct model card's licence field (not re-read here)
        gated=False,
        memory_cpu_gb=34.0,  # computed: 8.29 B x 4 bytes + ~1 GB
        memory_gpu_gb=18.0,
        description="The stronger Qwen2.5-VL: better answers and boxes; needs a GPU with 18 GB or more.",
        allow_patterns=_TRANSFORMERS_FILES,
    ),
    CatalogEntry(
        name="sam-vit-base",
        repo_id="facebook/sam-vit-base",
        revision="main",
        backend="sam",
        tasks=(Task.SEGMENT,),
        # 94 M parameters x 4 bytes (float32 model.safetensors): computed.
        size_gb=0.38,
        licence="Apache-2.0",  # facebook/sam-vit-base model card (license: apache-2.0)
        gated=False,
        memory_cpu_gb=1.5,
        memory_gpu_gb=1.0,
        description="Segment Anything (ViT-B): turns boxes from any grounding model into masks.",
        allow_patterns=("*.json", "model.safetensors"),
    ),
)


def catalog_entry(name: str) -> CatalogEntry:
    """The catalogue entry called ``name``; KeyError naming the known names otherwise."""
    for entry in CATALOG:
        if entry.name == name:
            return entry
    raise KeyError(f"{name!r} is not in the catalogue; known: {', '.join(e.name for e in CATALOG)}")


def find_entry(name: str) -> CatalogEntry | None:
    """The catalogue entry called ``name``, or None."""
    return next((e for e in CATALOG if e.name == name), None)
