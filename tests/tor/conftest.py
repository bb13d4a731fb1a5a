"""Fixtures for the Tor control tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from tests.tor.scripted_control import ScriptedControl


@pytest.fixture
async def scripted(nursery: trio.Nursery) -> AsyncIterator[ScriptedControl]:
    server = ScriptedControl()
    await nursery.start(server.serve)
    yield server
