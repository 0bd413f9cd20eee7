"""Invalid configuration fails at construction, naming the field and the fix."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from wsclient import Client, ClientConfig, ConfigError, Heartbeat, Reconnect


def test_defaults_are_valid() -> None:
    config = ClientConfig()
    assert config.heartbeat.mode == "protocol"
    assert config.compression is None
    assert config.reconnect.initial_delay <= config.reconnect.max_delay


def test_interval_must_be_below_server_idle_timeout() -> None:
    with pytest.raises(ValidationError) as info:
        Heartbeat(interval=60, server_idle_timeout=60)
    text = str(info.value)
    assert "interval" in text and "server_idle_timeout" in text
    assert "lower interval" in text
    assert Heartbeat(interval=30, server_idle_timeout=60).interval == 30


@pytest.mark.parametrize("field", ["interval", "timeout", "receive_timeout", "server_idle_timeout"])
@pytest.mark.parametrize("value", [0, -1])
def test_heartbeat_times_must_be_positive(field: str, value: float) -> None:
    with pytest.raises(ValidationError) as info:
        Heartbeat(**{field: value})
    assert field in str(info.value)
    assert "greater than 0" in str(info.value)


@pytest.mark.parametrize("field", ["open_timeout", "close_timeout"])
def test_client_timeouts_must_be_positive(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        ClientConfig(**{field: 0})


def test_initial_delay_above_max_delay() -> None:
    with pytest.raises(ValidationError) as info:
        Reconnect(initial_delay=5, max_delay=1)
    assert "initial_delay" in str(info.value) and "max_delay" in str(info.value)


def test_message_mode_needs_payload_and_predicate() -> None:
    with pytest.raises(ValidationError, match="is_pong"):
        Heartbeat(mode="message", message={"op": "ping"})
    hb = Heartbeat(mode="message", message="ping", is_pong=lambda f: f == "pong")
    assert hb.is_pong is not None and hb.is_pong("pong")


def test_unknown_field_is_rejected() -> None:
    with pytest.raises(ValidationError, match="intervall"):
        Heartbeat(intervall=5)  # type: ignore[call-arg]


def test_models_are_frozen() -> None:
    config = ClientConfig()
    with pytest.raises(ValidationError):
        config.open_timeout = 3  # type: ignore[misc]


def test_enum_fields_name_the_choices() -> None:
    with pytest.raises(ValidationError, match="drop_oldest"):
        ClientConfig(inbound_overflow="explode")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="max_attempts"):
        Reconnect(max_attempts=0)


@pytest.mark.parametrize(
    ("url", "fix"),
    [
        ("http://example.com/ws", "ws://"),
        ("https://example.com/ws", "wss://"),
        ("example.com/ws", "ws(s)://"),
        ("ws:///path", "no host"),
        ("ws://host:99999/", "malformed"),
    ],
)
def test_bad_urls(url: str, fix: str) -> None:
    with pytest.raises(ConfigError, match="url") as info:
        Client(url)
    assert fix in str(info.value)


def test_good_urls() -> None:
    assert Client("ws://127.0.0.1:1/x").url == "ws://127.0.0.1:1/x"
    assert Client("wss://example.com/ws?x=1").url == "wss://example.com/ws?x=1"
