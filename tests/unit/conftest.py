"""Fixtures the unit tests share beyond one module."""
import socket

import pytest


@pytest.fixture
def silent_endpoint(monkeypatch):
    """A loopback URL whose listen queue is full: no connection to it is ever accepted.

    What a function in a VPC without a route to a service (Secrets Manager, S3) meets: its
    connection attempts go unanswered until they time out. A region and dummy credentials
    are set, so the client gets as far as connecting.
    """
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    filler = socket.create_connection(server.getsockname())
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        filler.close()
        server.close()
