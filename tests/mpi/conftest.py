"""Tests in this folder run under ``mpiexec -n 2 python -m pytest tests/mpi`` (launched by
``tests/test_distributed.py``, and by ``.ci/run``); in a plain ``pytest`` run, a world of one,
they are skipped. Every rank runs every test; collectives pair the ranks up."""

import pytest

import tinygrad_sgd as tg


def pytest_collection_modifyitems(config, items):
    tg.distributed.init_process_group()
    if tg.distributed.get_world_size() != 2:
        skip = pytest.mark.skip(reason="an MPI test: run under mpiexec -n 2 (tests/test_distributed.py does)")
        for item in items:
            item.add_marker(skip)
