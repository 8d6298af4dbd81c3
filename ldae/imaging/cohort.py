"""Cohort tables: one row per scan, read from a manifest or a BIDS-like tree.

Both readers return the same validated frame: columns ``subject``, ``session``,
``months``, ``path`` (absolute), then ``diagnosis``, ``age`` and ``sex`` when
known, then any other column; sorted by subject and months. Subject and
session ids are read as strings and kept verbatim (``sub-001``, ``ses-M06``).
"""

import os
import re
import warnings
from pathlib import Path

import pandas as pd

from ..exceptions import InputError
from .nifti import why_not_a_file

_SESSION_MONTHS = re.compile(r"^ses-M(\d+)$", re.IGNORECASE)
_LEADING_COLUMNS = ["subject", "session", "months", "path", "diagnosis", "age", "sex"]
_NUMERIC_COLUMNS = ["months", "age"]
_SEPARATORS = {".tsv": "\t", ".csv": ","}


def read_manifest(path, *, check_files=True):
    """Read a CSV/TSV manifest of scans.

    Parameters
    ----------
    path : str or path-like
        A ``.csv`` or ``.tsv`` file with columns ``subject``, ``session`` and
        ``path`` (relative paths are relative to the manifest's folder), and
        optionally ``months``, ``diagnosis``, ``age``, ``sex`` and any other.
        Without a ``months`` column, sessions named like ``ses-M06`` give
        months = 6.
    check_files : bool, default=True
        Refuse a manifest naming a scan file that does not exist. False leaves
        that to the loader (e.g. to skip such scans with ``on_error="skip"``).

    Returns
    -------
    pandas.DataFrame
        One row per scan, sorted by (subject, months).

    Raises
    ------
    InputError
        If the file is unreadable, lists no scans, a row has more fields than
        the header, a required column or value is missing, a (subject, session)
        pair is duplicated, a numeric column holds text, or
        a scan file does not exist (with `check_files`); the message names the
        file, column and line.
    """
    path = Path(path).absolute()
    if path.suffix.lower() not in _SEPARATORS:
        raise InputError(f"{path}: a manifest must be a .csv or .tsv file")
    frame = _read_table(path, _SEPARATORS[path.suffix.lower()], ["subject", "session", "path"])
    _require_columns(frame, ["subject", "session", "path"], path)
    if frame.empty:
        raise InputError(f"{path}: lists no scans (a header and no rows)")
    missing = frame[["subject", "session", "path"]].isna().any(axis=1)
    if missing.any():
        raise InputError(f"{path}: empty subject, session or path on {_lines(missing)}")
    frame["path"] = [
        os.path.normpath(path.parent / os.path.expanduser(scan)) for scan in frame["path"]
    ]
    lines = (frame.index + 2).map(lambda line: f"{path}, line {line}")
    return _finish(frame, lines, check_files)


def read_bids(root):
    """Read the T1-weighted scans of a BIDS-like tree.

    Scans are found at ``sub-*/ses-*/anat/*_T1w.nii[.gz]``. Subject and
    session columns come from ``participants.tsv`` (``participant_id``, ...)
    and from each ``sub-*/sub-*_sessions.tsv`` (``session_id``, ...) when they
    exist; session values fill a column first, participant values the gaps.
    Without a ``months`` column, sessions named like ``ses-M06`` give
    months = 6. ``n/a`` reads as a missing value.

    Parameters
    ----------
    root : str or path-like
        The dataset's root folder.

    Returns
    -------
    pandas.DataFrame
        One row per scan, sorted by (subject, months).

    Raises
    ------
    InputError
        If the root holds no scan, a table is unreadable, lacks its id
        column or repeats an id, or one session holds several T1w scans.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    scans = sorted(
        scan
        for scan in root.glob("sub-*/ses-*/anat/*_T1w.nii*")
        if scan.name.endswith((".nii", ".nii.gz"))
    )
    if not scans:
        raise InputError(f"{root}: no sub-*/ses-*/anat/*_T1w.nii[.gz] file")
    frame = pd.DataFrame(
        {
            "subject": [scan.parts[-4] for scan in scans],
            "session": [scan.parts[-3] for scan in scans],
            "path": [str(scan) for scan in scans],
        }
    )
    sessions = [
        _read_ids_table(table, "session_id", "session").assign(subject=table.parent.name)
        for table in sorted(root.glob("sub-*/sub-*_sessions.tsv"))
        if table.name == f"{table.parent.name}_sessions.tsv"
    ]
    if sessions:
        frame = _merge_filling(
            frame, pd.concat(sessions, ignore_index=True), ["subject", "session"]
        )
    participants = root / "participants.tsv"
    if participants.is_file():
        frame = _merge_filling(
            frame, _read_ids_table(participants, "participant_id", "subject"), ["subject"]
        )
    return _finish(frame, frame["path"])


def _read_table(path, separator, id_columns):
    """A table whose id columns stay strings ("001" is not 1)."""
    try:
        with warnings.catch_warnings():
            # a row with more fields than the header: pandas would drop them, or
            # (without index_col=False) turn the first columns into an index
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, sep=separator, dtype={column: str for column in id_columns},
                               na_values=["n/a"], index_col=False)
    except pd.errors.ParserWarning as exc:
        raise InputError(f"{path}: a row has more fields than the header ({exc})") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: cannot read the table ({exc})") from exc


def _read_ids_table(path, id_column, renamed):
    """A BIDS .tsv keyed by `id_column` (renamed to `renamed`), one row per id."""
    table = _read_table(path, "\t", [id_column])
    _require_columns(table, [id_column], path)
    if table[id_column].isna().any():
        raise InputError(f"{path}: empty {id_column} on {_lines(table[id_column].isna())}")
    repeated = table[id_column].duplicated(keep=False)
    if repeated.any():
        raise InputError(
            f"{path}: {id_column} repeated on {_lines(repeated)}: "
            f"{sorted(set(table.loc[repeated, id_column]))}"
        )
    return table.drop(columns=renamed, errors="ignore").rename(columns={id_column: renamed})


def _merge_filling(frame, table, keys):
    """Left-merge `table` on `keys`; for shared columns, frame's values win."""
    merged = frame.merge(table, on=keys, how="left", suffixes=("", "_table"))
    for column in table.columns.difference(keys):
        if column in frame:
            merged[column] = merged[column].fillna(merged.pop(f"{column}_table"))
    return merged


def _finish(frame, where, check_files=True):
    """Validate the scan table and give it its column order and row order.

    `where` names each row in errors (a manifest line, or the scan's path).
    """
    for column in _NUMERIC_COLUMNS:
        if column in frame:
            values = pd.to_numeric(frame[column], errors="coerce")
            bad = values.isna() & frame[column].notna()
            if bad.any():
                raise InputError(
                    f"{where[bad.idxmax()]}: column {column!r} holds "
                    f"{frame.loc[bad.idxmax(), column]!r}, not a number"
                )
            frame[column] = values
    from_names = frame["session"].str.extract(_SESSION_MONTHS, expand=False).astype(float)
    months = frame["months"].fillna(from_names) if "months" in frame else from_names
    frame["months"] = months.astype(float)

    repeated = frame.duplicated(["subject", "session"], keep=False)
    if repeated.any():
        first = frame[repeated].iloc[0]
        same = (frame["subject"] == first["subject"]) & (frame["session"] == first["session"])
        others = where[same]
        raise InputError(
            f"subject {first['subject']}, session {first['session']} has several scans: "
            + "; ".join(others)
        )
    absent = ~frame["path"].map(os.path.isfile)
    if check_files and absent.any():
        first = frame.loc[absent.idxmax(), "path"]
        raise InputError(
            f"{where[absent.idxmax()]}: scan file {first} {why_not_a_file(first)} "
            f"({int(absent.sum())} unusable paths in all)"
        )
    columns = [c for c in _LEADING_COLUMNS if c in frame]
    columns += [c for c in frame.columns if c not in columns]
    return (
        frame[columns]
        .sort_values(["subject", "months", "session"], kind="stable", na_position="last")
        .reset_index(drop=True)
    )


def _require_columns(table, columns, path):
    absent = [column for column in columns if column not in table]
    if absent:
        raise InputError(
            f"{path}: missing column(s) {absent}; the columns are {list(table.columns)}"
        )


def _lines(rows):
    """File line numbers (the header is line 1) of a boolean row mask."""
    return "line(s) " + ", ".join(str(i + 2) for i in rows[rows].index[:10])
