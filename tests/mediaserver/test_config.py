"""Server configuration: defaults, the shipped TOML, overrides, named errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediaserver.config import (
    ConfigError,
    ServerConfig,
    load_config,
    parse_host_port,
    parse_port_range,
    worker_share,
)
from mediaserver.recording_delivery import RecordingStore

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "server.toml"


def test_shipped_config_documents_exactly_the_defaults() -> None:
    shipped = load_config(SHIPPED)
    assert replace(shipped, recording_options=()) == ServerConfig()
    assert shipped.recording == RecordingStore() == ServerConfig().recording


def test_recording_section_reaches_the_store(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[recording]\ndirectory = "/tmp/r"\nretries = 2\nretry_delay = 1\n')
    store = load_config(path).recording
    assert (store.directory, store.retries, store.retry_delay) == ("/tmp/r", 2, 1.0)


def test_overrides_beat_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[sip]\nport = 5080\n[calls]\nmax_calls = 7\n[rtp]\nhost = "::1"\n')
    cfg = load_config(path, max_calls=3, app=None)
    assert (cfg.sip_port, cfg.max_calls, cfg.rtp_address) == (5080, 3, "::1")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[sip]\nport = 70000\n", "[sip] port: must be 1..65535"),
        ('[sip]\nport = "x"\n', "[sip] port: must be an integer"),
        ("[rtp]\nport_low = 5000\nport_high = 4000\n", "[rtp] port_low/port_high"),
        ('[media]\ncodecs = ["GSM"]\n', "[media] codecs: choose from"),
        ("[media]\nptime = 25\n", "[media] ptime"),
        ("[media]\ninband_dtmf = 1\n", "[media] inband_dtmf: must be true or false"),
        ('[sip]\nhots = "x"\n', "[sip] hots: unknown option; [sip] has host, port"),
        ("[video]\nx = 1\n", "[video]: unknown section"),
        ('[sip]\nhost = "example"\n', "[sip] host: need an IP address"),
        ('[log]\nlevel = "LOUD"\n', "[log] level"),
        ("not toml [", "not valid TOML"),
        ('[sip]\nallowed_sources = ["10.0.0.0/33"]\n', "[sip] allowed_sources: '10.0.0.0/33'"),
        ('[sip]\nallowed_sources = ["10.0.0.1/8"]\n', "[sip] allowed_sources: '10.0.0.1/8'"),
        ('[sip]\nallowed_sources = "10.0.0.0/8"\n', "[sip] allowed_sources: must be a list"),
        ("[calls]\ndrain_seconds = -1\n", "[calls] drain_seconds: must be 0..3600"),
        ("[admin]\nport = 70000\n", "[admin] port: must be 0..65535"),
        ('[admin]\nhost = "admin.lan"\n', "[admin] host: need an IP address"),
        ('[admin]\nenabled = "yes"\n', "[admin] enabled: must be true or false"),
        ("[calls]\nworkers = 0\n", "[calls] workers: must be >= 1, got 0"),
        ("[recording]\nretries = -1\n", "[recording] retries: must be >= 0, got -1"),
        ("[recording]\nbucket = 1\n", "[recording] bucket: unknown option"),
        ('[recording]\nstore_recordings = "yes"\n', "[recording] store_recordings: must be"),
        (
            "[calls]\nworkers = 3\n[rtp]\nport_low = 40000\nport_high = 40004\n",
            "[rtp] port_low/port_high: 3 workers need at least 6 ports (2 each), got 5",
        ),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)


def test_host_port_and_range_parsing() -> None:
    assert parse_host_port("127.0.0.1:5070") == ("127.0.0.1", 5070)
    assert parse_host_port("[::1]:5080") == ("::1", 5080)
    assert parse_host_port("::1") == ("::1", 5060)
    assert parse_port_range("40000-40100") == (40000, 40100)
    with pytest.raises(ConfigError, match="--rtp-ports: expected LOW-HIGH"):
        parse_port_range("40000")
    with pytest.raises(ConfigError, match="--config: no such file"):
        load_config("/nonexistent.toml")


def test_operations_options(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        '[sip]\nallowed_sources = ["127.0.0.0/8", "::1/128", "192.168.1.7"]\n'
        '[calls]\ndrain_seconds = 2.5\n[admin]\nenabled = false\nhost = "::1"\nport = 0\n'
    )
    cfg = load_config(path)
    assert (cfg.admin_enabled, cfg.admin_host, cfg.admin_port) == (False, "::1", 0)
    assert cfg.drain_seconds == 2.5
    nets = cfg.allowed_networks
    assert [str(n) for n in nets] == ["127.0.0.0/8", "::1/128", "192.168.1.7/32"]
    defaults = ServerConfig()  # allow everyone, admin on loopback:8081, 10 s to drain
    assert (defaults.allowed_networks, defaults.admin_host, defaults.admin_port) == (
        (),
        "127.0.0.1",
        8081,
    )
    assert defaults.drain_seconds == 10.0


@given(
    workers=st.integers(1, 8),
    low=st.integers(1024, 60000),
    size=st.integers(2, 4000),
    max_calls=st.integers(1, 5000),
)
def test_workers_get_disjoint_equal_rtp_slices_and_their_share_of_calls(
    workers: int, low: int, size: int, max_calls: int
) -> None:
    if size < 2 * workers:
        size = 2 * workers
    cfg = load_config(
        None, workers=workers, rtp_port_low=low, rtp_port_high=low + size - 1, max_calls=max_calls
    )
    shares = [worker_share(cfg, i) for i in range(workers)]
    previous_high = low - 1
    for share in shares:
        # inside the range, after the previous slice, the same even size for everyone
        assert previous_high < share.rtp_port_low <= share.rtp_port_high <= cfg.rtp_port_high
        slice_size = share.rtp_port_high - share.rtp_port_low + 1
        assert slice_size % 2 == 0 and slice_size >= 2
        assert slice_size == shares[0].rtp_port_high - shares[0].rtp_port_low + 1
        previous_high = share.rtp_port_high
        assert share.max_calls == -(-max_calls // workers)  # ceil: together at least max_calls
        assert (share.admin_host, share.admin_port) == ("127.0.0.1", 0)  # private, any port
        assert (share.sip_host, share.sip_port, share.app) == (cfg.sip_host, cfg.sip_port, cfg.app)
    assert cfg.rtp_port_high - previous_high < 2 * workers  # at most a remainder is unused
    with pytest.raises(ValueError):
        worker_share(cfg, workers)


def test_workers_option(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("[calls]\nworkers = 2\n")
    assert load_config(path).workers == 2
    assert load_config(path, workers=4).workers == 4
    assert ServerConfig().workers == 1
