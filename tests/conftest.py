"""Shared test fixtures: the real S3 server process (moto) comes from tests/s3server.py."""

pytest_plugins = ["tests.s3server", "tests.cluster.fixture"]
