"""What an interrupted batch job had done, kept beside its output so that a rerun resumes it: the Processing
algorithms' outputs (rs_assistant.processing.batch_algorithm) and the engine's ``batch --output``.

    journal = Journal.open(Journal.path_for("/data/boats.gpkg"), fingerprint)   # None: start afresh
    journal.record_tile(tile_id, features_written, pending_pieces)             # after each tile
    journal.remove()                                                            # once the job is done

The file (``<output>.rsa-journal.json``) names the job (the request without ``skip_tiles``,
``pending`` and ``batch_size``, which do not change its result), and for each finished tile how
many features were written to the output for it and its seam pieces (the ``pending`` features
that wait for the final merge). It is rewritten atomically (a temporary file renamed over it)
after every tile, so it never holds half a record: a crash leaves the previous tile's state.

A rerun keeps the output's features of the tiles whose count still matches (:meth:`Journal.keep_intact`;
the others are done again), and sends the tile ids as ``skip_tiles`` and their pieces as ``pending``, which the
engine merges exactly as an uninterrupted run would. Pure standard library.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUFFIX = ".rsa-journal.json"
VERSION = 1
#: Request fields that do not change a job's result (and so may differ between a run and its resume).
NOT_IN_FINGERPRINT = frozenset({"skip_tiles", "pending", "batch_size"})


def fingerprint(request: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a batch request (its ``to_dict()``) that names the job."""
    return json.loads(json.dumps({k: v for k, v in request.items() if k not in NOT_IN_FINGERPRINT}, sort_keys=True))


@dataclass
class TileRecord:
    features: int  # features written to the output for this tile
    pending: list[dict[str, Any]] = field(default_factory=list)  # its seam pieces, for the final merge


@dataclass
class Journal:
    path: Path
    job: dict[str, Any]
    tiles: dict[int, TileRecord] = field(default_factory=dict)

    @staticmethod
    def path_for(output_file: str | os.PathLike) -> Path:
        return Path(f"{os.fspath(output_file)}{SUFFIX}")

    @classmethod
    def open(cls, path: Path, job: Mapping[str, Any]) -> Journal | None:
        """The journal at ``path`` if it records this very job; None when absent, unreadable or for another job."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring the unreadable journal %s: %s", path, exc)
            return None
        if not isinstance(data, dict) or data.get("version") != VERSION or data.get("job") != fingerprint(job):
            log.info("the journal %s records another job: starting afresh", path)
            return None
        try:
            tiles = {
                int(tile): TileRecord(int(rec["features"]), list(rec.get("pending") or []))
                for tile, rec in (data.get("tiles") or {}).items()
            }
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring the malformed journal %s: %s", path, exc)
            return None
        return cls(path, fingerprint(job), tiles)

    @classmethod
    def create(cls, path: Path, job: Mapping[str, Any]) -> Journal:
        journal = cls(path, fingerprint(job))
        journal.save()
        return journal

    # --- what a rerun sends -----------------------------------------------------------------
    def skip_tiles(self) -> tuple[int, ...]:
        return tuple(sorted(self.tiles))

    def pending(self) -> tuple[dict[str, Any], ...]:
        return tuple(piece for tile in sorted(self.tiles) for piece in self.tiles[tile].pending)

    def written(self) -> int:
        return sum(record.features for record in self.tiles.values())

    # --- changes ----------------------------------------------------------------------------
    def record_tile(self, tile: int, features: int, pending: list[dict[str, Any]]) -> None:
        self.tiles[int(tile)] = TileRecord(int(features), list(pending))
        self.save()

    def keep_intact(self, counts: Mapping[int, int]) -> set[int]:
        """Keeps the tiles whose features the output holds in full (``counts``: the features found there per tile),
        forgets the others (a rerun does them again) and returns the tiles kept."""
        intact = {tile for tile, record in self.tiles.items() if counts.get(tile, 0) == record.features}
        self.keep_only(intact)
        return intact

    def keep_only(self, tiles: set[int]) -> None:
        """Forgets every tile not in ``tiles`` (their features were not found intact in the output)."""
        dropped = set(self.tiles) - set(tiles)
        if dropped:
            for tile in dropped:
                del self.tiles[tile]
            self.save()

    def save(self) -> None:
        data = {
            "version": VERSION,
            "job": self.job,
            "tiles": {str(t): {"features": r.features, "pending": r.pending} for t, r in sorted(self.tiles.items())},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(data, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
