import pytest


def pytest_generate_tests(metafunc):
    # PRECISIONS holds torch dtypes: imported here, not at the top, so that a run without torch
    # (`-m "not torch"`, which never collects these modules) can still load this conftest.
    if "precision" in metafunc.fixturenames:
        from parity_tests.compare import PRECISIONS

        metafunc.parametrize("precision", PRECISIONS, ids=lambda p: p.name, indirect=True)


@pytest.fixture
def precision(request):
    """Each test in float32 and float64; float64 turns JAX's x64 on for that test only."""
    with request.param.context():
        yield request.param
