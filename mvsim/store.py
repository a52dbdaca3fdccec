"""The sweep result store: one SQLite file (standard library), one row per (point, claim).

A *point* is one resolved :class:`~mvsim.config.Config`; its key is :func:`config_hash`,
the SHA-256 of the config's canonical JSON (sorted keys, no whitespace), so the same
config always maps to the same key whatever grid produced it. Each row carries the full
config as JSON, the swept values, the claim's measured numbers, 95% CI, bound and verdict,
the single models' view statistics, the point's timing, and the mvsim / jax versions and
backend that produced it.

Durability: the database runs in WAL mode with ``synchronous=FULL``, and all rows of a
point are inserted in ONE transaction after the point has finished. A process killed at
any moment (SIGKILL included) therefore leaves every finished point whole and no partial
one, and ``(config_hash, claim)`` is the primary key, so no row can be duplicated.

A point whose run raised (a :class:`~mvsim.train.DivergenceError`, out of memory, a worker
that died too often) is kept in the ``failed_points`` table with its error text
(:func:`write_failure`, :func:`read_failures`), one row per point, and is not a result:
a rerun of the sweep retries it, and once it succeeds its failure row is deleted in the
transaction that stores its results.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mvsim.config import Config

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = 1

# Column name -> SQLite type, in table order. ``point_<field>`` columns are added to the
# DataFrame by :func:`read_results`, not stored.
COLUMNS: dict[str, str] = {
    "config_hash": "TEXT NOT NULL",
    "claim": "TEXT NOT NULL",
    "preset": "TEXT",
    "point_json": "TEXT",  # {field: value} of the swept axes at this point
    "config_json": "TEXT",  # the full resolved config (Config.to_json)
    "verdict": "TEXT",  # PASS | FAIL | INCONCLUSIVE
    "error_over_mu": "REAL",  # pooled E/μ of the claim's models
    "ci_lo": "REAL",  # its exact 95% CI, in units of μ
    "ci_hi": "REAL",
    "bound_lo": "REAL",  # the theorem's bound in units of μ (NULL = unbounded side)
    "bound_hi": "REAL",
    "error": "REAL",  # E, the mixture test error
    "error_single_view": "REAL",
    "error_multi_view": "REAL",
    "n_test_multi": "INTEGER",
    "n_test_single": "INTEGER",
    "finite_k_prediction": "REAL",
    "n_models": "INTEGER",  # models behind the claim (seeds, students, ...)
    "reason": "TEXT",
    "claim_json": "TEXT",  # ClaimResult.to_dict(): per-model rows, controls, ...
    "frac_one_view": "REAL",  # single models: classes with exactly one view learned
    "frac_two_views": "REAL",
    "frac_no_view": "REAL",
    "lottery_accuracy": "REAL",  # one-view classes whose larger initial alignment won
    "seconds": "REAL",  # wall time of the whole point
    "timing_json": "TEXT",  # verify.run's per-stage timing (s)
    # claims.mechanism without the memorisation points: the inits, every group's learned
    # views and the escape steps, from which race curves are drawn after the fact.
    "mechanism_json": "TEXT",
    "peak_rss_bytes": "INTEGER",  # the process's peak resident memory during the point
    # The trajectory reading (claim_json holds all of it): its verdict, the fraction of
    # t ≤ horizon at level [lo, hi], the mean time to level over models (NULL unless every
    # model reached it), distillation's mechanism-in-time verdict, and the claim's error
    # curve (its group's, and the controls' for kd and self_distillation).
    "trajectory_verdict": "TEXT",
    "fraction_at_level_lo": "REAL",
    "fraction_at_level_hi": "REAL",
    "time_to_level": "REAL",
    "mechanism_in_time": "TEXT",
    "curve_json": "TEXT",
    "started_at": "TEXT",  # ISO 8601 UTC
    "finished_at": "TEXT",
    "mvsim_version": "TEXT",
    "jax_version": "TEXT",
    "backend": "TEXT",
    "n_devices": "INTEGER",
}


# Columns added after schema 1 shipped. A store without one gains it on open (ALTER TABLE
# ADD COLUMN, NULL in the rows already there), so committed stores stay readable.
ADDED_COLUMNS = (
    "mechanism_json", "peak_rss_bytes", "trajectory_verdict", "fraction_at_level_lo",
    "fraction_at_level_hi", "time_to_level", "mechanism_in_time", "curve_json",
)  # fmt: skip


def canonical_json(cfg: Config) -> str:
    """The config as JSON with sorted keys and no whitespace (tuples become lists)."""
    return _canonical(cfg.to_dict())


def _canonical(d: Mapping[str, Any]) -> str:
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


# Config fields added after stores were first written (the learners of issue 18). While
# one holds its default it is left out of a point's key, so a point stored before the
# field existed keeps its key, and rerunning its sweep resumes instead of recomputing.
# A field added to Config later belongs here too (tests/test_sweep.py checks the list
# against a store written before it).
KEY_OMITS_AT_DEFAULT = (
    "learner", "learner_kwargs", "vit_dim", "vit_depth", "vit_heads", "mlp_width",
    "view_accuracy", "vit_kd_T", "horizon", "n_curve_multi", "n_curve_single",
)  # fmt: skip


def config_hash(cfg: Config) -> str:
    """Stable key of a point: SHA-256 hex digest of its canonical JSON (sorted keys, no
    whitespace), without the fields of :data:`KEY_OMITS_AT_DEFAULT` that hold their
    defaults."""
    d = cfg.to_dict()
    defaults = Config().to_dict()
    for section, fields in d.items():
        if isinstance(fields, dict):
            for name in KEY_OMITS_AT_DEFAULT:
                if name in fields and fields[name] == defaults[section][name]:
                    del fields[name]
    return hashlib.sha256(_canonical(d).encode()).hexdigest()


class StoreError(ValueError):
    """The file is not a store this mvsim can read (not SQLite, another schema)."""


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating if needed) a store. Autocommit mode: transactions are explicit.

    Raises StoreError for a file that is not SQLite, or a store of another schema (an
    older mvsim's): its version, or the columns it lacks, are named.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, timeout=60.0)
    try:
        _open(conn, path)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise StoreError(f"{path}: not an mvsim store ({e})") from None
    except StoreError:
        conn.close()
        raise
    return conn


def _open(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    cols = ",\n  ".join(f"{name} {tp}" for name, tp in COLUMNS.items())
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS results (\n  {cols},\n  PRIMARY KEY (config_hash, claim))"
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS experiment_rows (experiment TEXT, config_hash TEXT, "
        "row INTEGER, row_json TEXT, mvsim_version TEXT, jax_version TEXT, backend TEXT, "
        "created TEXT, PRIMARY KEY (experiment, config_hash, row))"
    )
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    _check_schema(path, int(version), None)
    have = {row[1] for row in conn.execute("PRAGMA table_info(results)")}
    for name in ADDED_COLUMNS:
        if name not in have:  # a nullable column added later: its old rows read as NULL
            conn.execute(f"ALTER TABLE results ADD COLUMN {name} {COLUMNS[name]}")
            have.add(name)
    _check_schema(path, SCHEMA_VERSION, have)


def _check_schema(path: Path, version: int, have: set[str] | None) -> None:
    """Raise StoreError for a store of another schema ``version``, or whose results table
    lacks a column of today's that is not one added later (``have``: its columns; None:
    not checked)."""
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{path}: store schema {version}, this mvsim reads {SCHEMA_VERSION}; "
            "write to a new --store (or export the old one with the mvsim that wrote it)"
        )
    missing = [] if have is None else [c for c in COLUMNS if c not in have | set(ADDED_COLUMNS)]
    if missing:
        raise StoreError(
            f"{path}: its results table lacks columns {missing} (an older mvsim wrote it); "
            "write to a new --store"
        )


def _connect_read(path: Path) -> sqlite3.Connection:
    """Open a store to read it, read-only: a store an older mvsim wrote is read as it is
    (the columns added since read as NULL, :func:`read_results`), never migrated, so
    reading a committed store leaves its file byte for byte as it was."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60.0)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = SCHEMA_VERSION  # a store without meta: as connect() would stamp it
        if "meta" in tables:
            q = "SELECT value FROM meta WHERE key = 'schema_version'"
            version = int((conn.execute(q).fetchone() or (SCHEMA_VERSION,))[0])
        have = {row[1] for row in conn.execute("PRAGMA table_info(results)")}
        _check_schema(path, version, have)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise StoreError(f"{path}: not an mvsim store ({e})") from None
    except StoreError:
        conn.close()
        raise
    return conn


def stored_claims(conn: sqlite3.Connection) -> dict[str, set[str]]:
    """{config_hash: claims stored for it}."""
    out: dict[str, set[str]] = {}
    for h, claim in conn.execute("SELECT config_hash, claim FROM results"):
        out.setdefault(h, set()).add(claim)
    return out


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def write_point(
    conn: sqlite3.Connection,
    cfg: Config,
    point: Mapping[str, Any],
    claims: Sequence[Mapping[str, Any]],
    mechanism: Mapping[str, Any],
    *,
    seconds: float,
    timing: Mapping[str, float],
    started_at: str,
    env: Mapping[str, Any],
    peak_rss_bytes: int | None = None,
    curves: Mapping[str, Any] | None = None,
) -> int:
    """Insert all rows of one finished point in one transaction; returns rows written.

    ``claims`` are :meth:`ClaimResult.to_dict` dicts, ``mechanism`` is
    :func:`mvsim.claims.mechanism`, ``env`` has mvsim_version, jax_version, backend and
    n_devices, ``curves`` is :func:`mvsim.report.curves` (None: no curve columns). A row
    already stored for (config_hash, claim) is kept, not replaced.
    """
    from mvsim.report import json_default

    h = config_hash(cfg)
    finished = utc_now()
    rows = []
    for c in claims:
        t = c.get("trajectory") or {}
        ttl = (t.get("time_to_level") or {}).get("mean")
        row = {
            "config_hash": h,
            "claim": c["id"],
            "preset": cfg.preset,
            "point_json": json.dumps(dict(point), sort_keys=True, default=json_default),
            "config_json": canonical_json(cfg),
            "verdict": c["verdict"],
            "error_over_mu": c["error_over_mu"],
            "ci_lo": c["ci95"][0],
            "ci_hi": c["ci95"][1],
            "bound_lo": c["bound"]["lo"],
            "bound_hi": c["bound"]["hi"],
            "error": c["error"],
            "error_single_view": c["error_single_view"],
            "error_multi_view": c["error_multi_view"],
            "n_test_multi": c["n_test_multi"],
            "n_test_single": c["n_test_single"],
            "finite_k_prediction": c.get("finite_k_prediction"),
            "n_models": c["seeds"],
            "reason": c["reason"],
            "claim_json": json.dumps(c, default=json_default),
            "frac_one_view": mechanism["frac_one_view"],
            "frac_two_views": mechanism["frac_two_views"],
            "frac_no_view": mechanism["frac_no_view"],
            "lottery_accuracy": mechanism.get("lottery_prediction_accuracy"),
            "seconds": seconds,
            "timing_json": json.dumps(dict(timing), default=json_default),
            "mechanism_json": json.dumps(_compact(mechanism), default=json_default),
            "peak_rss_bytes": peak_rss_bytes,
            "trajectory_verdict": t.get("verdict"),
            "fraction_at_level_lo": t["fraction_at_level"][0] if t else None,
            "fraction_at_level_hi": t["fraction_at_level"][1] if t else None,
            "time_to_level": ttl,
            "mechanism_in_time": (t.get("mechanism") or {}).get("verdict"),
            "curve_json": _claim_curves(c["id"], curves),
            "started_at": started_at,
            "finished_at": finished,
            **{k: env[k] for k in ("mvsim_version", "jax_version", "backend", "n_devices")},
        }
        rows.append(tuple(row[k] for k in COLUMNS))
    # Named, not positional: a store migrated on open has the added columns at the end of
    # its table, not where COLUMNS lists them.
    names, marks = ", ".join(COLUMNS), ", ".join("?" * len(COLUMNS))
    conn.execute("BEGIN IMMEDIATE")
    try:
        cur = conn.executemany(f"INSERT OR IGNORE INTO results ({names}) VALUES ({marks})", rows)
        n = cur.rowcount
        if _has_failures(conn):
            conn.execute("DELETE FROM failed_points WHERE config_hash = ?", (h,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return n


# The failed points of a store, created by its first failure (so that reading a store, a
# committed one included, never changes its file).
FAILURES_TABLE = (
    "CREATE TABLE IF NOT EXISTS failed_points (config_hash TEXT PRIMARY KEY, preset TEXT, "
    "point_json TEXT, config_json TEXT, claims_json TEXT, error TEXT, attempts INTEGER, "
    "started_at TEXT, finished_at TEXT, worker TEXT, mvsim_version TEXT, jax_version TEXT, "
    "backend TEXT)"
)


def _has_failures(conn: sqlite3.Connection) -> bool:
    q = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'failed_points'"
    return conn.execute(q).fetchone() is not None


def write_failure(
    conn: sqlite3.Connection,
    cfg: Config,
    point: Mapping[str, Any],
    claims: Sequence[str],
    error: str,
    *,
    started_at: str,
    env: Mapping[str, Any],
    worker: str = "local",
) -> None:
    """Record that a point's run raised ``error`` (its text), in one transaction: one row
    per point, its ``attempts`` counted up on each failure. Its results, if any claims were
    stored before, are untouched."""
    from mvsim.report import json_default

    point_json = json.dumps(dict(point), sort_keys=True, default=json_default)
    versions = tuple(env.get(k) for k in ("mvsim_version", "jax_version", "backend"))
    row = (config_hash(cfg), cfg.preset, point_json, canonical_json(cfg),
           json.dumps(list(claims)), error, started_at, utc_now(), worker, *versions)  # fmt: skip
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(FAILURES_TABLE)
        conn.execute(
            "INSERT INTO failed_points VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(config_hash) DO UPDATE SET error = excluded.error, "
            "claims_json = excluded.claims_json, attempts = attempts + 1, "
            "started_at = excluded.started_at, finished_at = excluded.finished_at, "
            "worker = excluded.worker, mvsim_version = excluded.mvsim_version, "
            "jax_version = excluded.jax_version, backend = excluded.backend",
            row,
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def read_failures(path: str | Path) -> pd.DataFrame:
    """The store's failed points as a DataFrame (columns of the ``failed_points`` table,
    plus ``point_<field>`` for each swept field), oldest first; empty when none failed."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no result store at {path}")
    conn = _connect_read(path)
    try:
        if not _has_failures(conn):  # none failed yet: an empty table, in memory only
            conn.execute(FAILURES_TABLE.replace("TABLE IF NOT EXISTS", "TEMP TABLE"))
        df = pd.read_sql_query("SELECT * FROM failed_points ORDER BY rowid", conn)
    finally:
        conn.close()
    points = [json.loads(p) for p in df["point_json"]]
    for ax in sorted({k for p in points for k in p}):
        df[f"point_{ax}"] = [_scalar(p.get(ax)) for p in points]
    return df


def _claim_curves(claim: str, curves: Mapping[str, Any] | None) -> str | None:
    """The error curves a claim's trajectory reads, as JSON: its group's, and for the
    distillation claims their controls' ({group: curve}, plus horizon and μ)."""
    if not curves:
        return None
    names = [claim] + (["control"] if claim in ("kd", "self_distillation") else [])
    groups = {n: curves["groups"][n] for n in names if n in curves["groups"]}
    return json.dumps({"horizon": curves["horizon"], "mu": curves["mu"], "groups": groups})


def _compact(mechanism: Mapping[str, Any]) -> dict[str, Any]:
    """The mechanism without the per-point memorisation rows (its summary stays)."""
    out = dict(mechanism)
    if isinstance(out.get("memorisation"), Mapping):
        out["memorisation"] = {k: v for k, v in out["memorisation"].items() if k != "points"}
    return out


def read_results(path: str | Path) -> pd.DataFrame:
    """The store as a pandas DataFrame, one row per (point, claim), in insertion order.

    Columns: :data:`COLUMNS`, plus ``point_<field>`` for each swept field (the values of
    ``point_json``). ``df.attrs['axes']`` lists the swept fields.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no result store at {path}")
    conn = _connect_read(path)
    try:
        df = pd.read_sql_query("SELECT * FROM results ORDER BY rowid", conn)
    finally:
        conn.close()
    for col in ADDED_COLUMNS:  # added since the store was written: NULL, as a migration gives
        if col not in df:
            df[col] = None
    for col, kind in COLUMNS.items():  # a REAL column NULL in every row reads as None
        if kind == "REAL" and col in df:
            df[col] = df[col].astype(float)
    points = [json.loads(p) for p in df["point_json"]]
    axes: list[str] = sorted({k for p in points for k in p})
    for ax in axes:
        df[f"point_{ax}"] = [_scalar(p.get(ax)) for p in points]
    df.attrs["axes"] = axes
    return df


def write_experiment(path: str | Path, rep: Mapping[str, Any]) -> int:
    """Store a supporting experiment's report (``mvsim experiment``): its flat ``rows``,
    keyed by (experiment, hash of its config, row index), in one transaction, so a report
    is stored whole or not at all and storing it again replaces it. Returns the row count."""
    h = config_hash(Config.from_dict(rep["config"]))  # the sweep rows' key for the same config
    rows = [
        (rep["experiment"], h, i, json.dumps(r, sort_keys=True), rep.get("mvsim_version"),
         rep.get("jax_version"), rep.get("backend"), utc_now())
        for i, r in enumerate(rep["rows"])
    ]  # fmt: skip
    conn = connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "DELETE FROM experiment_rows WHERE experiment = ? AND config_hash = ?",
            (rep["experiment"], h),
        )
        conn.executemany("INSERT INTO experiment_rows VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
    return len(rows)


def read_experiments(path: str | Path, experiment: str | None = None) -> pd.DataFrame:
    """The stored experiment rows as a DataFrame: ``experiment``, ``config_hash``, ``row``,
    versions, ``created``, and one column per field of the rows."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no result store at {path}")
    conn = _connect_read(path)
    try:
        q = "SELECT * FROM experiment_rows"
        args: tuple = ()
        if experiment is not None:
            q, args = q + " WHERE experiment = ?", (experiment,)
        df = pd.read_sql_query(q + " ORDER BY experiment, config_hash, row", conn, params=args)
    finally:
        conn.close()
    fields = pd.DataFrame([json.loads(r) for r in df.pop("row_json")], index=df.index)
    return pd.concat([df, fields], axis=1)


def _scalar(v: Any) -> Any:
    """A pair-valued field (ρ, Γ, ...) as the string 'lo,hi' so it fits one column."""
    if isinstance(v, list | tuple):
        return ",".join(f"{x:g}" for x in v)
    return v


def export(
    path: str | Path, *, csv: str | Path | None = None, parquet: str | Path | None = None
) -> list[str]:
    """Write the store as CSV and/or Parquet (Parquet needs pyarrow). Returns the paths."""
    if parquet is not None:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ImportError(
                "--parquet needs pyarrow, which mvsim does not install by default: "
                "python -m pip install pyarrow"
            ) from None
    df = read_results(path)
    written = []
    for target, write in ((csv, lambda p: df.to_csv(p, index=False)),
                          (parquet, lambda p: df.to_parquet(p, index=False))):  # fmt: skip
        if target is None:
            continue
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        write(tmp)
        tmp.replace(target)  # atomic: a reader never sees half a file
        written.append(str(target))
    return written
