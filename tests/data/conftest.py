"""The data set tests never see the machine's data directory."""
import pytest


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    """Data sets come from the test's files, never from the machine's GPUBRAID_DATA."""
    monkeypatch.delenv("GPUBRAID_DATA", raising=False)
