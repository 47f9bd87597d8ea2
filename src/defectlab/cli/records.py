"""``defectlab records list | export | export-dataset | check | review | refit``: the inspection record store.

STORE is a folder (SQLite, created on first use) or a database URL (then ``--images DIR``).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

from defectlab.errors import ConfigError

app = typer.Typer(
    help="Inspection records: list, export, review, and the reviewed data as a dataset.", no_args_is_help=True
)

STORE = typer.Argument(..., help="Record store: a folder (SQLite) or a database URL (postgresql://...).")
IMAGES = typer.Option(None, "--images", help="Image folder of a database-URL store.")


def _open(store: str, images: Optional[Path]):  # type: ignore[no-untyped-def]
    from defectlab.records import open_store

    return open_store(store, images=images, create=False)


def _time(text: Optional[str], name: str) -> Optional[datetime]:
    if text is None:
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--{name}: not an ISO date/time: '{text}' (e.g. 2026-03-01 or 2026-03-01T08:00)"
        ) from None
    from defectlab.records.store import utc

    return utc(dt)


def _filter(since, until, verdict, type_, model, source, reviewed):  # type: ignore[no-untyped-def]
    from defectlab.records import RecordFilter

    return RecordFilter(
        since=_time(since, "since"),
        until=_time(until, "until"),
        verdict=verdict,
        type=type_,
        model=model,
        source=source,
        reviewed=reviewed,
    )


SINCE = typer.Option(None, help="From this time on (ISO, UTC unless it names a zone).")
UNTIL = typer.Option(None, help="Before this time.")
VERDICT = typer.Option(None, help="good | defect")
TYPE = typer.Option(None, "--type", help="Predicted defect type.")
MODEL = typer.Option(None, help="Model version (a prefix is enough).")
SOURCE = typer.Option(None, help="Line/station tag.")
REVIEWED = typer.Option(None, "--reviewed/--unreviewed", help="Only reviewed / only unreviewed records.")


@app.command("list")
def list_cmd(
    store: str = STORE,
    images: Optional[Path] = IMAGES,
    since: Optional[str] = SINCE,
    until: Optional[str] = UNTIL,
    verdict: Optional[str] = VERDICT,
    type_: Optional[str] = TYPE,
    model: Optional[str] = MODEL,
    source: Optional[str] = SOURCE,
    reviewed: Optional[bool] = REVIEWED,
    limit: int = typer.Option(20, help="Rows to show (newest first)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Show records, newest first, filtered by time, verdict, type, model, source or review state."""
    st = _open(store, images)
    f = _filter(since, until, verdict, type_, model, source, reviewed)
    rows = st.list(f, limit=limit)
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r))
        return
    typer.echo(
        f"{'id':>8}  {'time (UTC)':19}  {'verdict':7}  {'score':>8}  {'type':10}  {'model':16}  "
        f"{'review':14}  name"
    )
    for r in rows:
        review = f"{r['review_label']} ({r['reviewer']})" if r["review_label"] else r["review_state"]
        typer.echo(
            f"{r['id']:>8}  {r['created_at'][:19]:19}  {r['verdict']:7}  {r['score']:8.4g}  "
            f"{(r['type'] or '-'):10}  {r['model_version']:16}  {review:14}  {r['image_name']}"
        )
    typer.echo(f"{st.count(f)} matching records")


@app.command("export")
def export_cmd(
    store: str = STORE,
    out: Path = typer.Argument(..., help="CSV or .parquet file to write."),
    images: Optional[Path] = IMAGES,
    since: Optional[str] = SINCE,
    until: Optional[str] = UNTIL,
    verdict: Optional[str] = VERDICT,
    type_: Optional[str] = TYPE,
    model: Optional[str] = MODEL,
    source: Optional[str] = SOURCE,
    reviewed: Optional[bool] = REVIEWED,
) -> None:
    """Write the matching records as CSV or Parquet (by the file's suffix), oldest first."""
    from defectlab.records import export_table

    n = export_table(
        _open(store, images), out, _filter(since, until, verdict, type_, model, source, reviewed)
    )
    typer.echo(f"{n} records -> {out}")


@app.command("export-dataset")
def export_dataset_cmd(
    store: str = STORE,
    out: Path = typer.Argument(..., help="Dataset folder to write."),
    images: Optional[Path] = IMAGES,
    fmt: str = typer.Option("mvtec", "--format", help="mvtec | coco"),
) -> None:
    """The reviewed records as a dataset: MVTec (train/good, test/<type>, ground_truth masks) or COCO."""
    from defectlab.records import export_dataset

    s = export_dataset(_open(store, images), out, fmt=fmt)
    typer.echo(
        f"{s['images']} reviewed images -> {out} ({fmt}): "
        + ", ".join(f"{k} {v}" for k, v in sorted(s["per_label"].items()))
    )


@app.command("check")
def check_cmd(
    store: str = STORE,
    images: Optional[Path] = IMAGES,
    hashes: bool = typer.Option(True, "--hashes/--no-hashes", help="Re-hash every image."),
) -> None:
    """Integrity: every row's image present (and matching its hash), valid fields, review history whole."""
    from defectlab.records import check

    report = check(_open(store, images), hashes=hashes)
    typer.echo(json.dumps(report, indent=2))
    if not report["ok"]:
        raise typer.Exit(1)


@app.command("review")
def review_cmd(
    store: str = STORE,
    record_id: int = typer.Argument(..., help="Record id."),
    label: str = typer.Option(..., help="good | defect"),
    reviewer: str = typer.Option(..., help="Your name."),
    version: int = typer.Option(..., help="The record's version you looked at (see `list --json`)."),
    type_: Optional[str] = typer.Option(None, "--type", help="Defect type (defect only)."),
    box: Optional[list[str]] = typer.Option(
        None, help="Region x0,y0,x1,y1 (repeatable); none = accept the predicted boxes."
    ),
    images: Optional[Path] = IMAGES,
) -> None:
    """Review one record from the command line (the service's /review page does the same)."""
    from defectlab.records import BadReview, ReviewConflict, ReviewInput, UnknownRecord, apply_review

    regions = None
    if box:
        try:
            regions = [{"box": [int(v) for v in b.split(",")], "mask": "map"} for b in box]
        except ValueError:
            raise ConfigError(f"--box: expected x0,y0,x1,y1 integers, got {box}") from None
    try:
        r = apply_review(
            _open(store, images), record_id, ReviewInput(label, reviewer, version, type_, regions)
        )
    except (BadReview, UnknownRecord, ReviewConflict) as exc:
        raise ConfigError(f"record {record_id}: {exc}") from None
    typer.echo(
        f"record {record_id} reviewed as {r['review_label']} by {r['reviewer']} (now version {r['version']})"
    )


@app.command("refit")
def refit_cmd(
    store: str = STORE,
    like: Path = typer.Option(..., help="Run folder whose settings to reuse."),
    out: Path = typer.Option(..., help="New run folder (the dataset goes to OUT/dataset)."),
    images: Optional[Path] = IMAGES,
) -> None:
    """Export the reviewed records and fit a new detector on them, with the settings of an existing run."""
    from defectlab.records.refit import refit

    s = refit(_open(store, images), like, out)
    typer.echo(
        f"fitted on {s['dataset']['images']} reviewed images -> {out} (model version {s['model_version']})"
    )
