"""``defectlab records check``: the table and the image folder agree, and no row is half-written."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from defectlab.records.images import sha256_bytes
from defectlab.records.models import QUEUED, REVIEWED, SKIPPED, Inspection, Review
from defectlab.records.store import VERDICTS, RecordStore


def check(store: RecordStore, *, hashes: bool = True, limit: int = 20) -> dict[str, Any]:
    """Every row's image (and map) exists (and hashes to its sha256 with ``hashes``); fields are valid;
    each reviewed row's history ends at its version. Unreferenced images (a crash between the image
    write and the commit) are counted, not errors; temp files of killed writers are listed."""
    problems: list[str] = []
    referenced: set[str] = set()
    rows = 0
    t = Inspection.__table__
    last = 0
    with store.engine.connect() as conn:
        while True:
            chunk = conn.execute(
                select(
                    t.c.id,
                    t.c.image_path,
                    t.c.image_sha256,
                    t.c.map_path,
                    t.c.verdict,
                    t.c.review_state,
                    t.c.review_label,
                    t.c.version,
                )
                .where(t.c.id > last)
                .order_by(t.c.id)
                .limit(5000)
            ).all()
            if not chunk:
                break
            for r in chunk:
                rows += 1
                referenced.add(r.image_path)
                path = store.images.path(r.image_path)
                if not path.is_file():
                    problems.append(f"record {r.id}: image {r.image_path} missing")
                elif hashes and sha256_bytes(path.read_bytes()) != r.image_sha256:
                    problems.append(f"record {r.id}: image {r.image_path} does not match its sha256")
                if r.map_path:
                    referenced.add(r.map_path)
                    if not store.images.path(r.map_path).is_file():
                        problems.append(f"record {r.id}: map {r.map_path} missing")
                if (
                    r.verdict not in VERDICTS
                    or r.review_state not in (QUEUED, SKIPPED, REVIEWED)
                    or r.version < 1
                ):
                    problems.append(f"record {r.id}: invalid verdict/state/version")
                if (r.review_state == REVIEWED) != (r.review_label is not None):
                    problems.append(f"record {r.id}: review state and label disagree")
            last = chunk[-1].id
        latest = dict(
            conn.execute(
                select(Review.inspection_id, func.max(Review.version)).group_by(Review.inspection_id)
            ).all()
        )
        versions = dict(conn.execute(select(t.c.id, t.c.version).where(t.c.review_state == REVIEWED)).all())
    for rid, version in versions.items():
        if latest.get(rid) != version:
            problems.append(f"record {rid}: version {version} but review history ends at {latest.get(rid)}")
    for rid in set(latest) - set(versions):
        problems.append(f"record {rid}: review history but no review state")
    files = set(store.images.files())
    leftovers = [p.as_posix() for p in store.images.leftovers()]
    return {
        "ok": not problems,
        "records": rows,
        "images": len(files),
        "unreferenced_images": len(files - referenced),
        "temp_files": leftovers[:limit],
        "problems": problems[:limit],
        "n_problems": len(problems),
    }
