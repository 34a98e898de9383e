import pytest

from parity_tests.compare import PRECISIONS


@pytest.fixture(params=PRECISIONS, ids=lambda p: p.name)
def precision(request):
    """Each test in float32 and float64; float64 turns JAX's x64 on for that test only."""
    with request.param.context():
        yield request.param
