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
