"""Fixtures the unit tests share beyond one module."""
import socket

import pytest


@pytest.fixture
def silent_endpoint():
    """A loopback URL whose listen queue is full: no connection to it is ever accepted.

    What a function in a VPC without a route to a service (Secrets Manager, S3) meets: its
    connection attempts go unanswered until they time out.
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    filler = socket.create_connection(server.getsockname())
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        filler.close()
        server.close()
