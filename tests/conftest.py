import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def short_tmp():
    """A short directory for AF_UNIX sockets (paths are limited to 107 bytes)."""
    d = tempfile.mkdtemp(prefix="sqz-", dir="/tmp")
    yield Path(d)
    import shutil

    shutil.rmtree(d, ignore_errors=True)
