"""Server configuration: TOML file, command-line overrides, validation.

Owns ``ServerConfig`` (every option with its documented default, the same
ones ``configs/server.toml`` lists) and ``load_config``. A bad value raises
``ConfigError`` whose message names the field (``[sip] port: ...``).
It must not open sockets or start anything.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # recording_delivery imports this module (ConfigError)
    from mediaserver.recording_delivery import RecordingStore

__all__ = [
    "ConfigError",
    "ServerConfig",
    "load_config",
    "parse_host_port",
    "parse_port_range",
    "worker_share",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_CODECS = ("PCMU", "PCMA", "G722", "opus", "L16")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field."""


@dataclass(frozen=True)
class ServerConfig:
    # [sip]
    sip_host: str = "127.0.0.1"  # address to bind and to advertise in Via/Contact
    sip_port: int = 5060
    user_agent: str = "jambonz-mediaserver-emulator"
    # CIDRs whose requests are served; others get 403 Forbidden. Empty = everyone.
    allowed_sources: tuple[str, ...] = ()
    # [rtp]
    rtp_host: str = ""  # address for RTP sockets and SDP c=; empty = same as sip_host
    rtp_port_low: int = 40000
    rtp_port_high: int = 40999
    rtp_timeout: float = 60.0  # seconds without RTP before the call is hung up; 0 = never
    jitter_target: float = 0.04  # seconds of jitter-buffer delay
    # [media]
    codecs: tuple[str, ...] = _CODECS  # our preference order when answering
    ptime: int = 20  # ms, when the offer does not say
    inband_dtmf: bool = True
    # [calls]
    max_calls: int = 100  # answer 503 beyond this
    app: str = ""  # verb-array JSON file, or http(s) URL POSTed per call
    app_timeout: float = 5.0  # seconds to wait for an app URL
    account_sid: str = ""
    application_sid: str = ""
    drain_seconds: float = 10.0  # on SIGTERM: how long calls get to end cleanly
    # processes sharing the SIP port (SO_REUSEPORT); each gets 1/N of the RTP range and
    # ceil(max_calls / N) calls
    workers: int = 1
    # [listen]
    listen_buffer: float = 3.0  # seconds of audio a fork buffers for a slow receiver
    tls_verify: bool = True  # verify wss:// certificates (false: lab self-signed certs)
    # [admin]
    admin_enabled: bool = True  # HTTP /health, /metrics, /calls
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081  # 0 = any free port (logged in admin.listening)
    # [log]
    log_level: str = "INFO"
    # [debug]
    dump_dir: str = ""  # write each call's decoded audio (WAV) and a JSON summary here
    # [recording]: the table as given; validated by load_config, read through .recording
    recording_options: tuple[tuple[str, Any], ...] = ()
    # not in the TOML: a worker's base URL for what the admin endpoint serves (the
    # supervisor's public one; record_call reports recordings under it)
    public_admin_url: str = ""

    @property
    def recording(self) -> RecordingStore:
        """The ``[recording]`` settings (``mediaserver.recording_delivery``)."""
        from mediaserver.recording_delivery import RecordingStore

        return RecordingStore.from_table(dict(self.recording_options))

    @property
    def rtp_address(self) -> str:
        return self.rtp_host or self.sip_host

    @property
    def allowed_networks(self) -> tuple[IPNetwork, ...]:
        """``allowed_sources`` parsed (validated by ``load_config``)."""
        return tuple(ipaddress.ip_network(s) for s in self.allowed_sources)


_SECTIONS: dict[str, dict[str, str]] = {
    "sip": {
        "host": "sip_host",
        "port": "sip_port",
        "user_agent": "user_agent",
        "allowed_sources": "allowed_sources",
    },
    "rtp": {
        "host": "rtp_host",
        "port_low": "rtp_port_low",
        "port_high": "rtp_port_high",
        "timeout": "rtp_timeout",
        "jitter_target": "jitter_target",
    },
    "media": {"codecs": "codecs", "ptime": "ptime", "inband_dtmf": "inband_dtmf"},
    "calls": {
        "max_calls": "max_calls",
        "app": "app",
        "app_timeout": "app_timeout",
        "account_sid": "account_sid",
        "application_sid": "application_sid",
        "drain_seconds": "drain_seconds",
        "workers": "workers",
    },
    "listen": {"buffer_seconds": "listen_buffer", "tls_verify": "tls_verify"},
    "admin": {"enabled": "admin_enabled", "host": "admin_host", "port": "admin_port"},
    "log": {"level": "log_level"},
    "debug": {"dump_dir": "dump_dir"},
}
_FIELD_NAMES = {
    f"[{sec}] {key}": attr for sec, keys in _SECTIONS.items() for key, attr in keys.items()
}
_TYPES = {f.name: f.type for f in fields(ServerConfig)}


def parse_host_port(
    value: str, what: str = "--sip", *, allow_zero: bool = False
) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``HOST`` alone (port 5060); port 0 if ``allow_zero``."""
    host, port = value, "5060"
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ConfigError(f"{what}: unterminated IPv6 address in {value!r}")
        host, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"{what}: expected [ADDR]:PORT, got {value!r}")
            port = rest[1:]
    elif value.count(":") == 1:
        host, port = value.split(":")
    low = 0 if allow_zero else 1
    if not port.isdigit() or not low <= int(port) < 65536:
        raise ConfigError(f"{what}: port must be {low}..65535, got {port!r}")
    _check_host(host, what)
    return host, int(port)


def parse_port_range(value: str, what: str = "--rtp-ports") -> tuple[int, int]:
    low, sep, high = value.partition("-")
    if not sep or not low.isdigit() or not high.isdigit():
        raise ConfigError(f"{what}: expected LOW-HIGH, got {value!r}")
    return int(low), int(high)


def _check_host(host: str, what: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(f"{what}: need an IP address (or localhost), got {host!r}") from None


def _coerce(name: str, attr: str, value: Any) -> Any:
    kind = _TYPES[attr]
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: must be true or false, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: must be an integer, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name}: must be a number, got {value!r}")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{name}: must be a string, got {value!r}")
        return value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name}: must be a list of strings, got {value!r}")
    return tuple(value)


def _validate(cfg: ServerConfig) -> ServerConfig:
    _check_host(cfg.sip_host, "[sip] host")
    if cfg.rtp_host:
        _check_host(cfg.rtp_host, "[rtp] host")
    for source in cfg.allowed_sources:
        try:
            ipaddress.ip_network(source)
        except ValueError as exc:
            raise ConfigError(
                f"[sip] allowed_sources: {source!r} is not a CIDR like 10.0.0.0/8 ({exc})"
            ) from None
    if not 0 < cfg.sip_port < 65536:
        raise ConfigError(f"[sip] port: must be 1..65535, got {cfg.sip_port}")
    if not 1024 <= cfg.rtp_port_low <= cfg.rtp_port_high < 65536:
        raise ConfigError(
            "[rtp] port_low/port_high: need 1024 <= low <= high <= 65535, got "
            f"{cfg.rtp_port_low}-{cfg.rtp_port_high}"
        )
    if cfg.rtp_timeout < 0:
        raise ConfigError(f"[rtp] timeout: must be >= 0 (0 = never), got {cfg.rtp_timeout}")
    if not 0 <= cfg.jitter_target <= 0.25:
        raise ConfigError(f"[rtp] jitter_target: must be 0..0.25 s, got {cfg.jitter_target}")
    bad = [c for c in cfg.codecs if c.lower() not in {x.lower() for x in _CODECS}]
    if bad or not cfg.codecs:
        raise ConfigError(
            f"[media] codecs: choose from {', '.join(_CODECS)}, got {list(cfg.codecs)}"
        )
    if cfg.ptime not in (10, 20, 30, 40, 60):
        raise ConfigError(f"[media] ptime: must be 10, 20, 30, 40 or 60 ms, got {cfg.ptime}")
    if cfg.max_calls < 1:
        raise ConfigError(f"[calls] max_calls: must be >= 1, got {cfg.max_calls}")
    if cfg.workers < 1:
        raise ConfigError(f"[calls] workers: must be >= 1, got {cfg.workers}")
    ports = cfg.rtp_port_high - cfg.rtp_port_low + 1
    if ports < 2 * cfg.workers:
        raise ConfigError(
            f"[rtp] port_low/port_high: {cfg.workers} workers need at least {2 * cfg.workers} "
            f"ports (2 each), got {ports} ({cfg.rtp_port_low}-{cfg.rtp_port_high})"
        )
    if cfg.app_timeout <= 0:
        raise ConfigError(f"[calls] app_timeout: must be > 0, got {cfg.app_timeout}")
    if not 0 <= cfg.drain_seconds <= 3600:
        raise ConfigError(f"[calls] drain_seconds: must be 0..3600, got {cfg.drain_seconds}")
    _check_host(cfg.admin_host, "[admin] host")
    if not 0 <= cfg.admin_port < 65536:
        raise ConfigError(
            f"[admin] port: must be 0..65535 (0 = any free port), got {cfg.admin_port}"
        )
    if not 0.1 <= cfg.listen_buffer <= 60:
        raise ConfigError(f"[listen] buffer_seconds: must be 0.1..60, got {cfg.listen_buffer}")
    if cfg.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"[log] level: DEBUG, INFO, WARNING or ERROR, got {cfg.log_level!r}")
    return cfg


def worker_share(cfg: ServerConfig, index: int) -> ServerConfig:
    """The configuration worker ``index`` of ``cfg.workers`` runs with.

    Each worker gets its own slice of the RTP range (equal, even-sized and
    disjoint, so every slice holds the same number of even ports; a
    remainder at the top goes unused) and ``ceil(max_calls / workers)``
    calls. Its admin endpoint is private (loopback, any free port): the
    supervisor serves the public one.
    """
    if not 0 <= index < cfg.workers:
        raise ValueError(f"worker index {index} out of 0..{cfg.workers - 1}")
    size = (cfg.rtp_port_high - cfg.rtp_port_low + 1) // cfg.workers // 2 * 2
    low = cfg.rtp_port_low + index * size
    public = ""
    if cfg.admin_enabled and cfg.admin_port:
        host = f"[{cfg.admin_host}]" if ":" in cfg.admin_host else cfg.admin_host
        public = f"http://{host}:{cfg.admin_port}"
    return replace(
        cfg,
        rtp_port_low=low,
        rtp_port_high=low + size - 1,
        max_calls=-(-cfg.max_calls // cfg.workers),
        admin_host="127.0.0.1",
        admin_port=0,
        public_admin_url=public,
    )


def load_config(path: str | Path | None = None, **overrides: Any) -> ServerConfig:
    """Defaults, then the TOML file (if any), then non-None ``overrides``."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"--config: no such file {str(path)!r}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config {path}: not valid TOML: {exc}") from None
        for section, table in data.items():
            if section == "recording" and isinstance(table, dict):
                values["recording_options"] = tuple(table.items())
                continue
            if section not in _SECTIONS or not isinstance(table, dict):
                known = ", ".join([*_SECTIONS, "recording"])
                raise ConfigError(f"[{section}]: unknown section; known: {known}")
            for key, value in table.items():
                name = f"[{section}] {key}"
                attr = _FIELD_NAMES.get(name)
                if attr is None:
                    known = ", ".join(_SECTIONS[section])
                    raise ConfigError(f"{name}: unknown option; [{section}] has {known}")
                values[attr] = _coerce(name, attr, value)
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = _validate(replace(ServerConfig(), **values))
    _ = config.recording  # [recording] errors name the field now, not at the first call
    return config
