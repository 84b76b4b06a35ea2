"""EDI settings from the environment, validated at start-up (a bad value stops the process with exit status 2).

* ``HAULMESH_EDI_PARTNERS_FILE``: the trading partners (TOML, see services/edi/partners.example.toml, checked by
  services/edi/domain/_partners.py). Unset or empty: no partner; the service runs, says so in its log, and reads
  no folder.
* ``HAULMESH_EDI_ROOT``: the transport's root folder, one folder per partner with ``in/``, ``out/``,
  ``archive/`` and ``failed/`` (the SFTP door jails each partner in its own); default ``<state dir>/edi``.
* ``HAULMESH_EDI_ARCHIVE_URL``: where every interchange in or out is archived raw before anything else is done
  with it: an object store URL (``file:///dir``, a path, or ``s3://bucket/prefix?...``, see
  services/runtime/objectstore); default ``<state dir>/edi-archive``.
* ``HAULMESH_EDI_POLL_SECONDS``: how often every partner's ``in/`` is looked at (0.05 to 60, default 1).
* ``HAULMESH_EDI_FILES_PER_POLL``: the most files taken from all partners in one pass (1 to 1000, default 20).
* ``HAULMESH_EDI_DUPLICATE_DAYS``: how long a received interchange's control number is remembered, so the same
  interchange delivered again is processed once (1 to 365, default 30).
* ``HAULMESH_LANES_FILE``: the lane facts every service shares (a stop's time zone).

The runtime's own settings (port, store, TLS, tracing) are ``ServiceConfig``'s.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime import ConfigError, default_state_dir
from services.runtime.lanes import LaneFacts, load_lane_facts

from .domain import PartnerConfigError, Partners, parse_partners

__all__ = ["ARCHIVE_URL_ENV", "PARTNERS_FILE_ENV", "ROOT_ENV", "EdiConfig", "load_partners"]

PARTNERS_FILE_ENV = "HAULMESH_EDI_PARTNERS_FILE"
ROOT_ENV = "HAULMESH_EDI_ROOT"
ARCHIVE_URL_ENV = "HAULMESH_EDI_ARCHIVE_URL"
POLL_ENV = "HAULMESH_EDI_POLL_SECONDS"
FILES_PER_POLL_ENV = "HAULMESH_EDI_FILES_PER_POLL"
DUPLICATE_DAYS_ENV = "HAULMESH_EDI_DUPLICATE_DAYS"


@dataclass(frozen=True)
class EdiConfig:
    """The EDI service's own settings."""

    partners: Partners = field(default_factory=Partners)
    partners_file: Path | None = None
    root_dir: Path = Path(".haulmesh/edi")
    archive_url: str = ".haulmesh/edi-archive"
    poll_interval_seconds: float = 1.0
    files_per_poll: int = 20
    duplicate_window_days: int = 30
    #: Markets and their time zones (HAULMESH_LANES_FILE): a 204's times are the stop's local time.
    lanes: LaneFacts = field(default_factory=lambda: load_lane_facts({}))

    @property
    def duplicate_window_seconds(self) -> int:
        return self.duplicate_window_days * 86400

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EdiConfig:
        env = os.environ if env is None else env
        state = default_state_dir(env)
        raw_file = env.get(PARTNERS_FILE_ENV, "").strip()
        partners_file = Path(raw_file) if raw_file else None
        return cls(
            partners=load_partners(partners_file) if partners_file else Partners(),
            partners_file=partners_file,
            root_dir=Path(env.get(ROOT_ENV) or state / "edi"),
            archive_url=env.get(ARCHIVE_URL_ENV) or str(state / "edi-archive"),
            poll_interval_seconds=_number(env, POLL_ENV, 1.0, 0.05, 60.0),
            files_per_poll=int(_number(env, FILES_PER_POLL_ENV, 20, 1, 1000, whole=True)),
            duplicate_window_days=int(_number(env, DUPLICATE_DAYS_ENV, 30, 1, 365, whole=True)),
            lanes=load_lane_facts(env),
        )


def load_partners(path: Path) -> Partners:
    """The partners in the TOML file at ``path``; a ConfigError naming the file and every problem."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{PARTNERS_FILE_ENV}: cannot read {path}: {exc.strerror}", field=PARTNERS_FILE_ENV) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{PARTNERS_FILE_ENV}: {path} is not TOML: {exc}", field=PARTNERS_FILE_ENV) from None
    try:
        return parse_partners(data)
    except PartnerConfigError as exc:
        raise ConfigError(f"{PARTNERS_FILE_ENV}: {path}: " + "; ".join(exc.problems), field=PARTNERS_FILE_ENV) \
            from None


def _number(env: Mapping[str, str], key: str, default: float, low: float, high: float, *,
            whole: bool = False) -> float:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    kind = "a whole number" if whole else "a number"
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        raise ConfigError(f"{key} must be {kind} from {low:g} to {high:g}, got {raw!r}", field=key) from None
    if not low <= value <= high:
        raise ConfigError(f"{key} must be {kind} from {low:g} to {high:g}, got {raw!r}", field=key)
    return value
