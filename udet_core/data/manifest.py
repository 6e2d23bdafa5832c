"""The one manifest schema every data source maps onto (DESIGN §3).

label: 0 = real, 1 = fake (CRAFT's y). FakeClue's JSON uses 1 = real; its reader converts explicitly.
role: 'real', 'seen' (fake family used in training), 'held_out' (fake family only at test), or '' (unassigned).
Relative paths are relative to the folder holding the manifest file.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from udet_core.core.errors import DataError
from udet_core.core.io import atomic_write_text
from udet_core.data.images import load_many

COLUMNS = ("path", "label", "family", "generator", "domain", "split", "role", "source", "seed",
           "caption", "explanation")
REQUIRED = ("path", "label", "split")   # the others are optional in a manifest file: '' (seed -1) when absent
SPLITS = ("train", "val", "test")
ROLES = ("real", "seen", "held_out", "")
REAL, FAKE = 0, 1


def with_optional_columns(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with every optional column it lacks added ('' for text, -1 for seed), in `COLUMNS` order."""
    df = df.copy()
    for c in COLUMNS:
        if c not in df:
            df[c] = -1 if c == "seed" else ""
    return df[list(COLUMNS) + [c for c in df.columns if c not in COLUMNS]]


def new_manifest(rows: list[dict]) -> pd.DataFrame:
    """Build a manifest from row dicts, filling optional text columns with '' and seed with -1."""
    df = with_optional_columns(pd.DataFrame(rows))[list(COLUMNS)]
    df["label"] = df["label"].astype(int)
    df["seed"] = df["seed"].astype(int)
    for c in COLUMNS:
        if c not in ("label", "seed"):
            df[c] = df[c].fillna("").astype(str)
    return df


def _lines(df: pd.DataFrame, bad) -> str:
    """Rows named as a CSV's lines (the header is line 1, the first row line 2)."""
    return f"CSV line(s) {[df.index.get_loc(i) + 2 for i in bad[:10]]}"


def validate(df: pd.DataFrame, where="manifest") -> pd.DataFrame:
    """Check columns and values; raise `DataError` naming `where` and the offending rows by CSV line."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(where, f"missing column(s) {missing}; a manifest needs {list(REQUIRED)} (optional: "
                               f"{[c for c in COLUMNS if c not in REQUIRED]})")
    if len(df) == 0:
        raise DataError(where, "manifest has no rows")
    df = with_optional_columns(df)
    labels = pd.to_numeric(df["label"], errors="coerce")
    bad_label = df.index[~labels.isin([REAL, FAKE])].tolist()
    if bad_label:
        raise DataError(where, f"label must be 0 (real) or 1 (fake); {_lines(df, bad_label)} have "
                               f"{df.loc[bad_label[:10], 'label'].tolist()}")
    df["label"] = labels.astype(int)
    bad_split = df.index[~df["split"].isin(SPLITS)].tolist()
    if bad_split:
        raise DataError(where, f"split must be one of {SPLITS}; {_lines(df, bad_split)} have "
                               f"{df.loc[bad_split[:10], 'split'].tolist()}")
    bad_role = df.index[~df["role"].isin(ROLES)].tolist()
    if bad_role:
        raise DataError(where, f"role must be one of {ROLES}; {_lines(df, bad_role)} have "
                               f"{df.loc[bad_role[:10], 'role'].tolist()}")
    dup = df["path"][df["path"].duplicated()].tolist()
    if dup:
        raise DataError(where, f"duplicate paths, e.g. {dup[:3]}")
    return df


def write_manifest(df: pd.DataFrame, path) -> Path:
    validate(df, path)
    return atomic_write_text(path, df.to_csv(index=False))


def read_manifest(path) -> pd.DataFrame:
    """Read and validate a manifest CSV; relative paths are resolved against its folder."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "manifest file does not exist")
    try:
        df = pd.read_csv(path, dtype={"caption": str, "explanation": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(path, f"not a readable CSV manifest ({e})") from None
    df = validate(df, path)
    df["path"] = [p if Path(p).is_absolute() else str(path.parent / p) for p in df["path"]]
    return df


def load_images(df: pd.DataFrame, progress: bool = False):
    """Load the manifest's images; bad files are skipped and reported, labels are never changed.

    Returns (uint8 array (n, H, W, 3), the manifest rows that loaded, problems [(path, problem)]).
    """
    import numpy as np

    arrays, kept, problems = load_many(df["path"], progress=progress)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(df["path"].iloc[0], f"images in this manifest differ in size {sorted(shapes)[:4]}; "
                                            "resize or crop them first (udet_core.data.images.to_tensor(size=...))")
    return (np.stack(arrays) if arrays else np.empty((0, 0, 0, 3), np.uint8)), df.iloc[kept].reset_index(drop=True), problems
