"""The worker's Faust application carries the configured consumer-group settings."""

from __future__ import annotations

import msgspec
import pytest

from streamproc.config import Config
from streamproc.worker.app import build_app

pytestmark = pytest.mark.integration


def test_session_timeout_reaches_faust_with_a_heartbeat_at_most_a_third_of_it(
    config: Config,
) -> None:
    app = build_app(config)
    assert app.conf.broker_session_timeout == 10.0  # Faust's own default is 60 s
    assert app.conf.broker_heartbeat_interval == 3.0

    short = msgspec.structs.replace(
        config, worker=msgspec.structs.replace(config.worker, session_timeout_s=6.0)
    )
    app = build_app(short)
    assert app.conf.broker_session_timeout == 6.0
    assert app.conf.broker_heartbeat_interval == 2.0
