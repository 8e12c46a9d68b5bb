"""WebDataset tar shards (RS5M-scale image-text pretraining), streamed member by member.

RS5M's release (``pub11-train-0000.tar`` ... ``rs3-val-0031.tar``, read by the authors'
``dataloader.py`` with ``{pub11,rs3}-train-{0000..0031}.tar``) names a sample's members
``<key>.img_content`` (the encoded image), ``<key>.img_name`` (its original file name) and
``<key>.caption`` (UTF-8 text); ``image()`` and ``text()`` read those as well as the usual
``jpg``/``png``/``txt`` members.

A shard is a plain tar file whose members that share a *key* form one sample, WebDataset's
convention: the key is the member path up to the first dot of its file name, the rest is the
(lower-cased) extension::

    shard-000000.tar
        00000017.jpg   00000017.txt   00000017.json
        00000018.jpg   00000018.txt   00000018.json   ...

Members of one sample are consecutive; a sample ends when the key changes or the shard ends.
Directories, links and ``__meta__``-style members are skipped; a repeated extension within one
key is an error. Shards are read with ``tarfile`` in streaming mode (``r|*``): one member's bytes
in memory at a time, plus the samples held by the optional shuffle buffer. Shard lists take
brace patterns, ``shard-{000000..000009}.tar``, ``{a,b}.tar``, several patterns joined by ``::``.

    for sample in iter_shards("/data/rs5m/pub11-{0000..0099}.tar", shuffle_buffer=1000, seed=0):
        image, caption = sample.image(), sample.text()

:class:`WebShards` is the same stream as a ``torch.utils.data.IterableDataset`` that gives each
DataLoader worker (and each distributed rank) its own shards.
"""

from __future__ import annotations

import json
import logging
import random
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from training.data.formats._common import DataFormatError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "tif", "tiff", "img_content")  # img_content: RS5M
TEXT_EXTENSIONS = ("txt", "caption", "text")  # caption: RS5M
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # WebDataset's base_plus_ext: key, extensions
_META = re.compile(r"__[^/]*__($|/)")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


@dataclass(frozen=True)
class ShardSample:
    """The members of one key: ``fields`` maps extension ("jpg", "txt", "json", ...) to raw bytes."""

    key: str
    shard: str
    fields: Mapping[str, bytes]

    def __getitem__(self, extension: str) -> bytes:
        return self.fields[extension]

    def _first(self, extensions: Sequence[str], what: str) -> tuple[str, bytes]:
        for extension in extensions:
            if extension in self.fields:
                return extension, self.fields[extension]
        raise DataFormatError(
            f"{self.shard}: sample {self.key!r} has no {what} (members: "
            f"{', '.join(sorted(self.fields))}); expected one of {', '.join(extensions)}"
        )

    def image(self, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> Image.Image:
        """The sample's image as RGB, decoded now."""
        extension, data = self._first(extensions, "image")
        try:
            with Image.open(BytesIO(data)) as image:
                return image.convert("RGB")
        except OSError as error:
            raise DataFormatError(
                f"{self.shard}: {self.key}.{extension} is not a readable image ({error}); "
                f"expected an encoded {'image' if extension == 'img_content' else extension.upper()}"
            ) from error

    def text(self, extensions: Sequence[str] = TEXT_EXTENSIONS) -> str:
        extension, data = self._first(extensions, "caption")
        try:
            return data.decode("utf-8").strip()
        except UnicodeDecodeError as error:
            raise DataFormatError(
                f"{self.shard}: {self.key}.{extension} is not UTF-8 text; expected a caption"
            ) from error

    def json(self) -> Any:
        _, data = self._first(("json",), "json metadata")
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataFormatError(
                f"{self.shard}: {self.key}.json is not valid JSON ({error}); expected metadata"
            ) from error


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{000..012}`` ranges (zero padding kept) and ``{a,b}`` choices, left to right."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end() :]
    numbers = _RANGE.match(body)
    if numbers:
        first, last = numbers.groups()
        padded = any(len(n.lstrip("-")) > 1 and n.lstrip("-").startswith("0") for n in (first, last))
        width = max(len(first), len(last)) if padded else 0
        step = 1 if int(last) >= int(first) else -1
        choices = [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    elif "," in body:
        choices = body.split(",")
    else:
        return [head + "{" + body + "}" + t for t in expand_braces(tail)]
    return [head + choice + t for choice in choices for t in expand_braces(tail)]


def shard_list(urls: str | Path | Iterable[str | Path]) -> list[str]:
    """Shard paths from a pattern (``::`` between patterns) or a list of patterns."""
    patterns = str(urls).split("::") if isinstance(urls, (str, Path)) else [str(u) for u in urls]
    shards = [shard for pattern in patterns if pattern.strip() for shard in expand_braces(pattern.strip())]
    if not shards:
        raise DataFormatError(f"{urls!r}: no shards; expected a path pattern such as shard-{{000000..000009}}.tar")
    return shards


def _members(shard: str) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of the regular files of one shard, streamed."""
    path = Path(shard)
    if not path.is_file():
        raise DataFormatError(f"{shard}: shard not found; expected a WebDataset tar file")
    try:
        with path.open("rb") as handle, tarfile.open(fileobj=handle, mode="r|*") as stream:
            for info in stream:
                if info.isreg() and not _META.match(info.name):
                    member = stream.extractfile(info)
                    yield info.name, member.read() if member is not None else b""
                stream.members = []  # streaming: forget the headers already read
            # tarfile ends quietly at a corrupt header after the first; say so instead of losing the rest
            if path.suffix not in (".gz", ".tgz", ".bz2", ".xz") and not shard.endswith((".tar.gz", ".tar.xz")):
                handle.seek(stream.offset)
                block = handle.read(tarfile.BLOCKSIZE)
                if block.strip(b"\0"):
                    raise tarfile.ReadError(f"invalid member header at byte {stream.offset}")
                if not block:
                    log.warning("%s: no end-of-archive marker (truncated at a member boundary?)", shard)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataFormatError(
            f"{shard}: not a readable tar archive ({error}); expected a WebDataset shard (a tar of <key>.<ext> members)"
        ) from error


def _group(shard: str, suffixes: set[str] | None) -> Iterator[ShardSample]:
    key, fields = None, {}
    for name, data in _members(shard):
        match = _KEY.match(name)
        if match is None:
            log.debug("%s: member %s has no extension, skipped", shard, name)
            continue
        member_key, extension = match.group(1), match.group(2).lower()
        if member_key != key:
            if fields:
                yield ShardSample(key, shard, fields)
            key, fields = member_key, {}
        if extension in fields:
            raise DataFormatError(
                f"{shard}: sample {key!r} has two '{extension}' members; expected one file per "
                f"extension per key, the members of a key next to each other"
            )
        if suffixes is None or extension in suffixes:
            fields[extension] = data
    if fields:
        yield ShardSample(key, shard, fields)


def _shuffled(samples: Iterable[ShardSample], size: int, rng: random.Random) -> Iterator[ShardSample]:
    buffer: list[ShardSample] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = sample
    rng.shuffle(buffer)
    yield from buffer


def iter_shards(
    urls: str | Path | Iterable[str | Path],
    *,
    shuffle_buffer: int = 0,
    seed: int | None = None,
    shuffle_shards: bool = False,
    suffixes: Iterable[str] | None = None,
) -> Iterator[ShardSample]:
    """Samples of every shard in order (shards shuffled first if asked, samples through a shuffle buffer).

    ``suffixes`` keeps only those extensions (others are skipped without being kept in memory).
    """
    shards = shard_list(urls)
    rng = random.Random(seed)
    if shuffle_shards:
        rng.shuffle(shards)
    keep = {s.lower() for s in suffixes} if suffixes is not None else None
    samples = (sample for shard in shards for sample in _group(shard, keep))
    if shuffle_buffer > 1:
        samples = _shuffled(samples, shuffle_buffer, rng)
    return samples


class WebShards(IterableDataset):
    """WebDataset shards as an IterableDataset; shards are split over ranks, then DataLoader workers.

    With ``rank``/``world_size`` left None they come from ``torch.distributed`` when it is
    initialised. Call ``set_epoch`` before each epoch to reshuffle shards and samples.
    """

    def __init__(
        self,
        urls: str | Path | Iterable[str | Path],
        *,
        shuffle_buffer: int = 0,
        seed: int = 0,
        shuffle_shards: bool = False,
        suffixes: Iterable[str] | None = None,
        transform: Callable[[ShardSample], Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.shards = shard_list(urls)
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.shuffle_shards = shuffle_shards
        self.suffixes = list(suffixes) if suffixes is not None else None
        self.transform = transform
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _my_shards(self) -> list[str]:
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            import torch.distributed as dist

            initialised = dist.is_available() and dist.is_initialized()
            rank, world = (dist.get_rank(), dist.get_world_size()) if initialised else (0, 1)
        shards = list(self.shards)
        if self.shuffle_shards:
            random.Random(self.seed + self.epoch).shuffle(shards)
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        consumers, me = world * workers, rank * workers + worker_id
        if len(shards) < consumers:
            log.warning("%d shard(s) for %d readers (ranks x workers): some readers get none", len(shards), consumers)
        return shards[me::consumers]

    def __iter__(self) -> Iterator[Any]:
        worker = get_worker_info()
        seed = self.seed + 1000 * self.epoch + (worker.id if worker is not None else 0)
        shards = self._my_shards()
        if not shards:
            return
        for sample in iter_shards(shards, shuffle_buffer=self.shuffle_buffer, seed=seed, suffixes=self.suffixes):
            yield self.transform(sample) if self.transform is not None else sample
