"""Which rasters the engine may read on a caller's behalf (docs/architecture.md, "Where the engine may read").

    policy = SourcePolicy.of(data_roots=["/data"], allow_remote=False)
    path = policy.check("/data/city.tif")      # what to hand GDAL: the resolved path, or ProtocolError

Every ``source`` a request names (``/v1/analyze`` images, ``/v1/batch`` sources, the command line's
``--image``) passes :meth:`SourcePolicy.check` before GDAL or rasterio sees the string:

- A remote or virtual source (a URL of any scheme, ``/vsicurl/`` or any other GDAL virtual file
  system ``/vsi...``, a driver prefix such as ``GTIFF_DIR:``, ``NETCDF:``, ``HDF5:`` or a connection
  string such as ``PG:``) is refused with REMOTE_SOURCE_REFUSED unless the engine was started with
  ``--allow-remote``. With ``--allow-remote`` and ``--data-root`` together, only sources that GDAL
  fetches over the network pass (http, https and ftp URLs, ``/vsicurl/`` of such a URL, the cloud
  storage systems ``/vsis3/`` etc., and an archive (``/vsizip/``...) over one of those): the others
  (``/vsizip/`` of a local file, ``/vsisubfile/``, driver prefixes) would reach local files outside
  the roots.
- A local path is resolved (symbolic links, ``..``, relative to the engine's working folder) and,
  when data roots are given, must lie inside one of them. A path outside the roots gets exactly the
  error a missing file gets (SOURCE_NOT_FOUND, the same message), so errors do not tell which files
  exist outside the roots. Inside the roots (or everywhere, without roots) a folder, an unreadable
  file or a file that is not a raster says so.

The policy is a small frozen dataclass, so it travels to Ray workers with the engine's settings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from rs_assistant.core.protocol import ErrorCode, ProtocolError

#: What GDAL (or rasterio) would not read as a plain local path: a GDAL virtual file system, a URL of any
#: scheme, a driver prefix or connection string ("GTIFF_DIR:1:", "NETCDF:", "PG:"; not a one-letter drive).
NOT_A_LOCAL_PATH = re.compile(r"^\s*(/vsi|[A-Za-z][A-Za-z0-9+.-]*://|[A-Za-z0-9_]{2,}:)", re.I)
#: GDAL virtual file systems that fetch over the network.
NETWORK_VSI = (
    "/vsis3/", "/vsis3_streaming/", "/vsigs/", "/vsigs_streaming/", "/vsiaz/", "/vsiaz_streaming/", "/vsiadls/",
    "/vsioss/", "/vsioss_streaming/", "/vsiswift/", "/vsiswift_streaming/", "/vsiwebhdfs/", "/vsihdfs/",
)  # fmt: skip
#: /vsicurl/ and its streaming variant: network only when followed by one of NETWORK_URL (curl also reads file://).
CURL_VSI = ("/vsicurl/", "/vsicurl_streaming/")
#: URL schemes (rasterio's too: s3://, gs://, ...) whose data comes over the network.
NETWORK_URL = re.compile(r"^(?:[a-z0-9]+\+)*(https?|ftp|s3|gs|az|azure|oss|swift)://", re.I)
#: Archives GDAL can read inside another file system (chained: "/vsizip//vsicurl/https://...").
ARCHIVE_VSI = ("/vsizip/", "/vsigzip/", "/vsitar/", "/vsi7z/", "/vsirar/")


@dataclass(frozen=True)
class SourcePolicy:
    """Where the engine may read: ``data_roots`` (resolved folders; empty: anywhere its user can read) and
    whether remote and virtual sources are allowed."""

    data_roots: tuple[str, ...] = ()
    allow_remote: bool = False

    @classmethod
    def of(cls, data_roots: Iterable[str | os.PathLike[str]] = (), allow_remote: bool = False) -> SourcePolicy:
        """A policy over ``data_roots`` (resolved here); BAD_REQUEST for a root that is not an existing folder."""
        roots = []
        for root in data_roots:
            resolved = os.path.realpath(os.path.expanduser(os.fspath(root)))
            if not os.path.isdir(resolved):
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"--data-root {os.fspath(root)!r} is not a folder")
            roots.append(resolved)
        return cls(tuple(dict.fromkeys(roots)), bool(allow_remote))

    def describe(self) -> str:
        """One line for the engine's log: where it reads."""
        where = "under " + ", ".join(self.data_roots) if self.data_roots else "any local file its user can read"
        remote = "remote and virtual sources allowed" if self.allow_remote else "remote and virtual sources refused"
        return f"reads rasters {where}; {remote}"

    def check(self, source: str) -> str:
        """The string to hand GDAL for ``source``: the resolved local path, or a remote source as given.

        REMOTE_SOURCE_REFUSED, SOURCE_NOT_FOUND (also for a path outside the roots) or UNREADABLE_SOURCE (a folder,
        a file the engine's user cannot read) otherwise.
        """
        if not isinstance(source, str) or not source:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"'source' must be a path string, got {source!r}")
        if is_remote(source):
            self._check_remote(source)
            return source
        return self._check_local(source)

    def _check_remote(self, source: str) -> None:
        if not self.allow_remote:
            raise ProtocolError(
                ErrorCode.REMOTE_SOURCE_REFUSED,
                f"source {_shown(source)} is not a local file path (a URL, a GDAL virtual file system such as "
                "/vsicurl/, or a driver prefix such as GTIFF_DIR:); this engine reads local files only. Start it "
                "with --allow-remote to read remote rasters, or save the raster to a local file.",
            )
        if self.data_roots and not is_network(source):
            raise ProtocolError(
                ErrorCode.REMOTE_SOURCE_REFUSED,
                f"source {_shown(source)} is a virtual path or driver prefix that can reach local files; with "
                "--data-root this engine reads only local files inside its data folders and remote rasters "
                "(http, https, ftp, /vsicurl/ of such a URL, /vsis3/ ...). Give the file's own path.",
            )

    def _check_local(self, source: str) -> str:
        try:
            resolved = os.path.realpath(source)
        except (OSError, ValueError):  # an embedded NUL, a path too long
            raise self._not_found(source) from None
        if self.data_roots and not any(_inside(resolved, root) for root in self.data_roots):
            raise self._not_found(source)
        if is_remote(resolved):  # "/tmp/../vsicurl/..." resolves to a GDAL virtual path: never hand GDAL that
            raise self._not_found(source)
        try:
            exists = os.path.exists(resolved)
            is_dir = os.path.isdir(resolved)
        except (OSError, ValueError):
            exists = is_dir = False
        if not exists:
            raise self._not_found(source)
        if is_dir:
            raise ProtocolError(ErrorCode.UNREADABLE_SOURCE, f"source {_shown(source)} is a folder, not a raster file")
        if not os.access(resolved, os.R_OK):
            raise ProtocolError(
                ErrorCode.UNREADABLE_SOURCE, f"source {_shown(source)} cannot be read by the engine's user"
            )
        return resolved

    def _not_found(self, source: str) -> ProtocolError:
        """SOURCE_NOT_FOUND: the one error for a missing file and, with data roots, for a file outside them."""
        if self.data_roots:
            return ProtocolError(
                ErrorCode.SOURCE_NOT_FOUND,
                f"source {_shown(source)} does not exist in the folders this engine may read (--data-root)",
            )
        return ProtocolError(ErrorCode.SOURCE_NOT_FOUND, f"source {_shown(source)} does not exist")


def is_remote(source: str) -> bool:
    """Whether GDAL would read ``source`` as something other than a plain local path."""
    if NOT_A_LOCAL_PATH.match(source):
        return True
    return os.name == "nt" and source.lstrip().startswith(("\\\\", "//"))  # a UNC path: a network share


def is_network(source: str) -> bool:
    """Whether ``source`` names data fetched over the network only (never a local file): see NETWORK_VSI."""
    text = source.strip()
    for archive in ARCHIVE_VSI:  # an archive over a network source: "/vsizip//vsicurl/https://..." or "{...}"
        if text.lower().startswith(archive):
            inner = text[len(archive) :].lstrip("{")
            return inner.lower().startswith(NETWORK_VSI + CURL_VSI) and is_network(inner)
    lower = text.lower()
    if lower.startswith(NETWORK_VSI):
        return True
    for curl in CURL_VSI:
        if lower.startswith(curl):
            return bool(re.match(r"^(https?|ftp)://", text[len(curl) :], re.I))
    return bool(NETWORK_URL.match(text)) and not text.lower().startswith(("file:", "zip+file:"))


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives (Windows)
        return False


def _shown(source: str) -> str:
    """``source`` as an error message quotes it: the caller's own string, cut short."""
    return repr(source if len(source) <= 300 else source[:300] + "...")


def default_policy() -> SourcePolicy:
    """Local files anywhere the engine's user can read, nothing remote: what an engine gets without settings."""
    return SourcePolicy()


__all__ = ["NOT_A_LOCAL_PATH", "SourcePolicy", "default_policy", "is_network", "is_remote"]
