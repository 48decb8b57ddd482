"""Shared fixtures: the Docker ones live in docker_fixtures.py, the Hub server in hubserver.py."""

from tests.docker_fixtures import (  # noqa: F401
    base_image,
    container_hub,
    docker_client,
    empty_setup,
    preflight_image,
    ready_setup,
)
from tests.hubserver import hub_server  # noqa: F401

import os  # noqa: E402

# In-process downloads open every connection at once (no look at the first one's rate,
# which depends on timing); tests/test_transfer.py covers the ramp with its own setting.
os.environ.setdefault("PREFLIGHT_RAMP", "0")
