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

The SFTP door (services/edi/sftp.py; docs/edi.md, "SFTP"), in front of the same folders:

* ``HAULMESH_EDI_SFTP_PORT``: its TCP port; 0 (the default) opens no door, folder mode only. ``haulmesh run`` and
  the local mesh set it (2222 beside the default ports, else a free port), the Helm chart sets 2222.
* ``HAULMESH_EDI_SFTP_BIND_HOST``: the address it listens on (default ``127.0.0.1``; the chart's ``0.0.0.0``).
* ``HAULMESH_EDI_SFTP_HOST_KEY_FILE``: its SSH host key (an OpenSSH private key, not readable by every user). Unset,
  a development key is generated (Ed25519, 0600) at ``<state dir>/edi-sftp/ssh_host_key`` and kept, and only for
  a door bound to loopback: one that faces a network is production, where partners pin the host key's
  fingerprint, so it must be a key the operator keeps (the same rule as the gateway's dev-mode features:
  loopback only). Set, the file must exist: it is never generated.
* ``HAULMESH_EDI_SFTP_MAX_CONNECTIONS``: open connections, logged in or not (1 to 10000, default 64).
* ``HAULMESH_EDI_SFTP_MAX_FILE_BYTES``: the largest file a partner may upload (1 KiB to 1 GiB, default 16 MiB).

The runtime's own settings (port, store, TLS, tracing) are ``ServiceConfig``'s.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime import ConfigError, default_state_dir
from services.runtime.lanes import LaneFacts, load_lane_facts

from .domain import PartnerConfigError, Partners, parse_partners
from .sftp import SftpLimits

__all__ = ["ARCHIVE_URL_ENV", "PARTNERS_FILE_ENV", "ROOT_ENV", "SFTP_PORT_ENV", "EdiConfig", "SftpConfig",
           "load_partners"]

PARTNERS_FILE_ENV = "HAULMESH_EDI_PARTNERS_FILE"
ROOT_ENV = "HAULMESH_EDI_ROOT"
ARCHIVE_URL_ENV = "HAULMESH_EDI_ARCHIVE_URL"
POLL_ENV = "HAULMESH_EDI_POLL_SECONDS"
FILES_PER_POLL_ENV = "HAULMESH_EDI_FILES_PER_POLL"
DUPLICATE_DAYS_ENV = "HAULMESH_EDI_DUPLICATE_DAYS"
SFTP_PORT_ENV = "HAULMESH_EDI_SFTP_PORT"
SFTP_BIND_HOST_ENV = "HAULMESH_EDI_SFTP_BIND_HOST"
SFTP_HOST_KEY_FILE_ENV = "HAULMESH_EDI_SFTP_HOST_KEY_FILE"
SFTP_MAX_CONNECTIONS_ENV = "HAULMESH_EDI_SFTP_MAX_CONNECTIONS"
SFTP_MAX_FILE_BYTES_ENV = "HAULMESH_EDI_SFTP_MAX_FILE_BYTES"
_SFTP_DEFAULTS = SftpLimits()


@dataclass(frozen=True)
class SftpConfig:
    """The SFTP door's settings; :attr:`port` 0 is no door."""

    port: int = 0
    bind_host: str = "127.0.0.1"
    host_key_file: Path = Path(".haulmesh/edi-sftp/ssh_host_key")
    #: True when HAULMESH_EDI_SFTP_HOST_KEY_FILE is unset: a development key, made on first start.
    generate_host_key: bool = False
    max_connections: int = _SFTP_DEFAULTS.max_connections
    max_file_bytes: int = _SFTP_DEFAULTS.max_file_bytes

    @property
    def enabled(self) -> bool:
        return self.port != 0

    @property
    def limits(self) -> SftpLimits:
        return SftpLimits(max_connections=self.max_connections, max_file_bytes=self.max_file_bytes)

    @classmethod
    def from_env(cls, env: Mapping[str, str], state: Path) -> SftpConfig:
        port = int(_number(env, SFTP_PORT_ENV, 0, 0, 65535, whole=True))
        host = env.get(SFTP_BIND_HOST_ENV, "").strip() or "127.0.0.1"
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            if host != "localhost":
                raise ConfigError(f"{SFTP_BIND_HOST_ENV} must be an IP address (or localhost), got {host!r}",
                                  field=SFTP_BIND_HOST_ENV) from None
            loopback = True
        raw_key = env.get(SFTP_HOST_KEY_FILE_ENV, "").strip()
        key_file = Path(raw_key) if raw_key else state / "edi-sftp" / "ssh_host_key"
        config = cls(port=port, bind_host=host, host_key_file=key_file, generate_host_key=not raw_key,
                     max_connections=int(_number(env, SFTP_MAX_CONNECTIONS_ENV, _SFTP_DEFAULTS.max_connections, 1,
                                                 10_000, whole=True)),
                     max_file_bytes=int(_number(env, SFTP_MAX_FILE_BYTES_ENV, _SFTP_DEFAULTS.max_file_bytes, 1024,
                                                1 << 30, whole=True)))
        if not config.enabled:
            return config
        if not raw_key and not loopback:
            raise ConfigError(f"{SFTP_HOST_KEY_FILE_ENV} is required for an SFTP door on {host} (not loopback): "
                              "partners pin the host key's fingerprint, so production brings a key it keeps "
                              "(`ssh-keygen -t ed25519 -N '' -f ssh_host_key`); a key is generated for a door on "
                              "loopback only", field=SFTP_HOST_KEY_FILE_ENV)
        if raw_key:
            _check_host_key(key_file)
        return config


def _check_host_key(path: Path) -> None:
    """The host key file exists and is not open to every user (the door reads it at start: this says it first)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{SFTP_HOST_KEY_FILE_ENV}: cannot read {path}: {exc.strerror}",
                          field=SFTP_HOST_KEY_FILE_ENV) from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{SFTP_HOST_KEY_FILE_ENV}: {path} is not a file", field=SFTP_HOST_KEY_FILE_ENV)
    if mode & stat.S_IRWXO:
        raise ConfigError(f"{SFTP_HOST_KEY_FILE_ENV}: {path} is open to every user (mode "
                          f"{stat.S_IMODE(mode):04o}); chmod 600 it", field=SFTP_HOST_KEY_FILE_ENV)


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
    sftp: SftpConfig = field(default_factory=SftpConfig)

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
            sftp=SftpConfig.from_env(env, state),
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
