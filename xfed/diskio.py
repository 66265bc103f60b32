"""Turn a failed write (full disk, read-only folder, safetensors' own error) into one line naming the path.

safetensors raises its own `SafetensorError` (not an OSError) for an I/O failure, and an ENOSPC
raised while a model loads is about the folder being written (a work dir, a temp dir), never the
model folder being read: both used to surface without the path or with the wrong one.
"""
from __future__ import annotations

import errno
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from xfed.errors import JobError

FULL_HINT = "the disk holding it is full: free space there, or point the output/work dir elsewhere"


def is_disk_full(err: BaseException) -> bool:
    return (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in str(err)


def write_error(path: str | Path, err: BaseException) -> JobError:
    where = getattr(err, "filename", None) or path
    detail = getattr(err, "strerror", None) or " ".join(str(err).split())[:200]
    return JobError(f"cannot write {where}: {detail}" + (f" ({FULL_HINT})" if is_disk_full(err) else ""))


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Run a write of `path`; OSError or SafetensorError -> JobError naming it (and a full disk)."""
    try:
        yield
    except OSError as err:
        raise write_error(path, err) from None
    except Exception as err:
        if type(err).__name__ != "SafetensorError":
            raise
        raise write_error(path, err) from None
