"""Content-addressed image folder beside the store: ``<root>/<sha[:2]>/<sha>.<ext>``.

A file is written once (temp file + rename) and never overwritten: the same bytes always land on the
same path, so a second inspection of the same image reuses it. The store keeps paths relative to the root.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from defectlab.errors import BadInputError

TMP_SUFFIX = ".part"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ImageFolder:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInputError(
                self.root, f"cannot create the record image folder ({exc.strerror})"
            ) from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise BadInputError(self.root, "the record image folder is not writable")

    def put(self, data: bytes, ext: str = ".png", digest: str | None = None) -> tuple[str, str]:
        """Store ``data`` (if not already there); returns (sha256, path relative to the root)."""
        digest = digest or sha256_bytes(data)
        ext = ext.lower() if ext.startswith(".") and len(ext) <= 6 and ext[1:].isalnum() else ".bin"
        rel = f"{digest[:2]}/{digest}{ext}"
        target = self.root / rel
        if not target.exists():
            target.parent.mkdir(exist_ok=True)
            tmp = target.with_name(f"{target.name}.{os.getpid()}.{id(data)}{TMP_SUFFIX}")
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)  # same bytes under the same name: a concurrent writer is harmless
        return digest, rel

    def path(self, rel: str) -> Path:
        return self.root / rel

    def files(self) -> list[str]:
        """Every stored file (relative), temp files excluded."""
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in self.root.glob("*/*")
            if p.is_file() and not p.name.endswith(TMP_SUFFIX)
        )

    def leftovers(self) -> list[Path]:
        """Temp files of writers killed mid-write (safe to delete when no writer runs)."""
        return sorted(self.root.glob(f"*/*{TMP_SUFFIX}"))
