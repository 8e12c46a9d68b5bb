"""The checkpoints the model manager offers to download: what each is, how big, under which licence.

    from rs_assistant.core.catalog import CATALOG, catalog_entry
    entry = catalog_entry("florence2-base")      # KeyError naming the known names otherwise

Every entry names a repository on the Hugging Face Hub whose files one of the engine's backends
loads as they are (``allow_patterns`` lists only those files), so a pulled entry answers without
any conversion. Pure standard library: the plugin reads this in QGIS's own Python.

A few checkpoints are published without the files their backend needs beside the weights (the
remote-sensing CLIPs: a bare open_clip ``*.pt``). Their entry also names ``companions`` (exact files
of other Hub repositories, e.g. the CLIP BPE vocabulary) and ``generated_files`` (small text files
the catalogue carries as data, e.g. the published open_clip architecture config, with its source);
``models pull`` then assembles one checkpoint folder from the three (rs_assistant.engine.hub).

Figures: ``size_gb`` is the download (the files ``allow_patterns`` selects); ``memory_cpu_gb`` is
the weights in float32 plus about 1 GB of activations and processor for one 1024-pixel window;
``memory_gpu_gb`` the same in bfloat16. Where a figure was not read on a model card it is computed
from the parameter count (parameters x bytes per parameter) and the comment says so.

Left out on purpose: RemoteCLIP (chendelong/RemoteCLIP, RemoteCLIP-ViT-B-32.pt / -ViT-L-14.pt /
-RN50.pt) states no licence on the Hub or in its code repository (chendelong1999/remoteclip issue
#23 asks for one); SkyCLIP is not on the Hub. GeoRSCLIP (CC-BY-4.0) is the remote-sensing CLIP here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from rs_assistant.core.protocol import Task

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: Backends a catalogue entry may use (those that read a checkpoint folder).
CATALOG_BACKENDS = frozenset({"qwen2_5_vl", "florence2", "sam", "clip", "rsa"})


_WILDCARDS = frozenset("*?[]")


@dataclass(frozen=True)
class Companion:
    """Exact files of another Hub repository that a catalogue entry's checkpoint folder also needs."""

    repo_id: str
    revision: str
    files: tuple[str, ...]  # exact paths in that repository (no wildcards); they land in the folder by name
    why: str  # what they are, for people reading the catalogue

    def __post_init__(self) -> None:
        if not _REPO.match(self.repo_id):
            raise ValueError(f"companion repo_id {self.repo_id!r} must be owner/name")
        if not self.revision:
            raise ValueError(f"companion {self.repo_id}: revision must not be empty")
        object.__setattr__(self, "files", tuple(self.files))
        if not self.files or any(not f or _WILDCARDS & set(f) for f in self.files):
            raise ValueError(f"companion {self.repo_id}: files must list exact paths, got {self.files!r}")

    def to_dict(self) -> dict:
        return {"repo_id": self.repo_id, "revision": self.revision, "files": list(self.files), "why": self.why}


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
    #: Files of other repositories the checkpoint folder also needs (an assembled folder, see the module doc).
    companions: tuple[Companion, ...] = ()
    #: (file name, text) written into the assembled checkpoint folder.
    generated_files: tuple[tuple[str, str], ...] = ()

    @property
    def assembled(self) -> bool:
        """True when ``pull`` builds a folder from several sources rather than using the snapshot as is."""
        return bool(self.companions or self.generated_files)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or self.name in ("auto", "default"):
            raise ValueError(
                f"catalogue name {self.name!r} must be lower-case letters, digits, '.', '_' or '-', not auto/default"
            )
        if not _REPO.match(self.repo_id):
            raise ValueError(f"catalogue entry {self.name}: repo_id {self.repo_id!r} must be owner/name")
        if not self.revision:
            raise ValueError(f"catalogue entry {self.name}: revision must not be empty")
        if self.backend not in CATALOG_BACKENDS:
            raise ValueError(
                f"catalogue entry {self.name}: backend {self.backend!r} is not one of {sorted(CATALOG_BACKENDS)}"
            )
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
        object.__setattr__(self, "companions", tuple(self.companions))
        object.__setattr__(self, "generated_files", tuple((str(n), str(t)) for n, t in self.generated_files))
        if not all(isinstance(c, Companion) for c in self.companions):
            raise ValueError(f"catalogue entry {self.name}: companions must be Companion records")
        for file_name, _ in self.generated_files:
            if not file_name or "/" in file_name or "\\" in file_name or file_name.startswith("."):
                raise ValueError(
                    f"catalogue entry {self.name}: generated file name {file_name!r} must be a plain file name"
                )

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
            "companions": [c.to_dict() for c in self.companions],
            "generated_files": [name for name, _ in self.generated_files],
        }


#: Files of a transformers checkpoint in safetensors form (skips the duplicate .bin/.h5/.onnx copies).
_TRANSFORMERS_FILES = ("*.json", "*.safetensors", "*.txt", "*.jinja", "*.model")

#: open_clip's ViT-B-32 with QuickGELU, the architecture of OpenAI's CLIP ViT-B/32 that GeoRSCLIP fine-tuned
#: (its model card loads it with ``open_clip.create_model_and_transforms("ViT-B/32", pretrained="openai")``).
#: Values of mlfoundations/open_clip src/open_clip/model_configs/ViT-B-32-quickgelu.json (commit 7bbd90e);
#: preprocessing as GeoRSCLIP's inference (shorter side to 224, bicubic, centre crop, OpenAI's mean/std).
OPEN_CLIP_VIT_B_32_QUICKGELU = {
    "model_cfg": {
        "embed_dim": 512,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    },
}
#: OpenAI's CLIP BPE vocabulary (the one open_clip's tokenizer ships as bpe_simple_vocab_16e6.txt.gz) in
#: Hugging Face form: what the clip backend reads beside an open_clip checkpoint.
CLIP_BPE_VOCABULARY = Companion(
    repo_id="openai/clip-vit-base-patch32",
    revision="main",
    files=("vocab.json", "merges.txt"),
    why="CLIP's BPE vocabulary (the tokenizer of every OpenAI-initialised open_clip ViT)",
)

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
        # "Qwen Research License": non-commercial (read in two pages that quote the model card; the
        # card itself was not reachable from here).
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
    CatalogEntry(
        name="sam2.1-base-plus",
        # The transformers weights (model_type sam2_video; the sam backend loads its image part with
        # Sam2Model) were added to Meta's own repository ("Add Transformers weights", #2, b732075);
        # it also holds the original sam2.1_hiera_base_plus.pt (324 MB), which allow_patterns skips.
        # Base+ (80.8 M parameters) is the middle of the four: tiny and small (38.9 M / 46 M) are faster but
        # give visibly rougher masks; large (224 M, 0.9 GB) is about a point better but three times the
        # download and ~1.6x slower (64.1 against 39.5 FPS on an A100 in facebookresearch/sam2's README
        # table, as quoted downstream; not re-read here), which matters most on a CPU.
        repo_id="facebook/sam2.1-hiera-base-plus",
        revision="main",
        backend="sam",
        tasks=(Task.SEGMENT,),
        # 80.8 M parameters x 4 bytes (float32 model.safetensors): computed.
        size_gb=0.32,
        licence="Apache-2.0",  # facebook/sam2.1-hiera-base-plus model card (license: apache-2.0)
        gated=False,
        memory_cpu_gb=1.4,  # computed: 0.32 GB of weights + ~1 GB for one 1024-pixel window
        memory_gpu_gb=0.9,  # computed: 0.16 GB in bfloat16 + activations
        description="Segment Anything 2.1 (Hiera base+): more accurate and faster masks than SAM ViT-B from the "
        "boxes of any grounding model.",
        allow_patterns=("config.json", "model.safetensors", "preprocessor_config.json", "processor_config.json"),
    ),
    CatalogEntry(
        name="georsclip-vit-b-32",
        # Zilun/GeoRSCLIP: CLIP ViT-B/32 fine-tuned on RS5M (5 million remote-sensing image-text pairs).
        # ckpt/ holds several bare open_clip state dicts (RS5M_ViT-B-32.pt, _RET-2, _RSICD, ViT-L-14,
        # ViT-H-14); only the general ViT-B-32 one is pulled. The folder is assembled with the
        # architecture config (generated_files) and CLIP's BPE vocabulary (companions).
        repo_id="Zilun/GeoRSCLIP",
        revision="main",
        backend="clip",
        tasks=(Task.CLASSIFY, Task.RETRIEVE),
        # 151 M parameters x 4 bytes (the Hub lists RS5M_ViT-B-32.pt at 605 MB) + 1.4 MB of vocabulary.
        size_gb=0.61,
        # The model card's metadata says "cc"; its README was cc-by-4.0 when it was written (commit 76302bb).
        licence="CC-BY-4.0",
        gated=False,
        memory_cpu_gb=1.2,  # computed: 0.61 GB of weights + ~0.5 GB for a batch of 16 224-pixel windows
        memory_gpu_gb=0.6,  # computed: 0.3 GB in bfloat16 + activations
        description="Remote-sensing CLIP (GeoRSCLIP ViT-B/32): zero-shot land-cover classification and "
        "text-to-image search of map windows.",
        allow_patterns=("ckpt/RS5M_ViT-B-32.pt",),
        companions=(CLIP_BPE_VOCABULARY,),
        generated_files=(("open_clip_config.json", json.dumps(OPEN_CLIP_VIT_B_32_QUICKGELU, indent=1)),),
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
