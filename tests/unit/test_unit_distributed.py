"""Which errors of a distributed run mean its peers are gone."""

from __future__ import annotations

import pytest

from modelsphere.training.distributed import DistContext, is_peer_failure

pytestmark = pytest.mark.unit

TWO = DistContext(rank=0, world_size=2)


@pytest.mark.parametrize(
    "message",
    [
        "[../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 10000ms "
        "for recv operation to complete",
        "Application timeout caused pair closure",  # a frozen peer, seen in CI
        "[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [::1]:4022",
        "Connection reset by peer",
    ],
)
def test_transport_errors_of_a_lost_peer_are_peer_failures(message):
    assert is_peer_failure(RuntimeError(message), TWO)


def test_other_errors_and_single_processes_are_not():
    assert not is_peer_failure(RuntimeError("mat1 and mat2 shapes differ"), TWO)
    assert not is_peer_failure(ValueError("Connection closed by peer"), TWO)
    single = DistContext()
    assert not is_peer_failure(RuntimeError("pair closure"), single)
