"""Tests in this folder run under ``mpiexec -n 2 python -m pytest tests/mpi`` (launched by
``tests/test_distributed.py``, and by ``.ci/run``); in a plain ``pytest`` run, a world of one,
they are skipped. Every rank runs every test; collectives pair the ranks up."""

from pathlib import Path

import pytest

import tinygrad_sgd as tg

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    # This hook sees the whole session's items: mark only the ones in this folder.
    tg.distributed.init_process_group()
    if tg.distributed.get_world_size() == 2:
        return
    skip = pytest.mark.skip(reason="an MPI test: run under mpiexec -n 2 (tests/test_distributed.py does)")
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)
