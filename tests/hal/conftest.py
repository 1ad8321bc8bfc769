"""Fixtures for the driver tests (helpers live in halsim.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin
from halsim import EventLog

from hal.drivers.base import EventSink


@pytest.fixture
def pin_factory() -> Iterator[MockFactory]:
    factory = MockFactory(pin_class=MockPWMPin)
    yield factory
    factory.reset()


@pytest.fixture
def events() -> EventLog:
    return EventLog()


@pytest.fixture
def sink(events: EventLog) -> EventSink:
    s = EventSink()
    s.attach(events)
    return s
