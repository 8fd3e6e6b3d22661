"""tests/conftest.py's order for xdist workers: a permutation of the collection; the chunk each
worker starts with holds the cluster-exclusive test first (chunk 0) or the local demo (chunk 1),
and no other chunk starts a real-cluster test before its own work."""

from __future__ import annotations

import pytest

from tests.conftest import order_for_workers


class Item:
    def __init__(self, nodeid: str, slurm: bool = False):
        self.nodeid, self.slurm = nodeid, slurm

    def get_closest_marker(self, name: str):
        return name == "slurm" and self.slurm or None


def _collection() -> list[Item]:
    items = [Item(f"tests/launch/test_x.py::test_{n}") for n in range(40)]
    items += [Item(f"tests/slurm/test_cluster.py::test_{n}", slurm=True) for n in range(5)]
    items += [Item("tests/e2e/test_pipeline.py::test_slurm_pipeline", slurm=True),
              Item("tests/reliability/test_faults.py::test_node_down", slurm=True),
              Item("tests/docs/test_documented_commands.py::test_sweep_and_status_commands_on_slurm",
                   slurm=True),
              Item("tests/docs/test_documented_commands.py::test_local_demo_commands"),
              Item("tests/kd/test_export.py::test_a"), Item("tests/kd/test_parity.py::test_b")]
    return items


def _chunks(items: list, workers: int) -> list[list]:
    out, left = [], list(items)
    for k in range(workers, 0, -1):
        out.append(left[:len(left) // k])
        left = left[len(out[-1]):]
    return out


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_order_for_workers(workers):
    items = _collection()
    ordered = order_for_workers(items, workers)
    assert sorted(i.nodeid for i in ordered) == sorted(i.nodeid for i in items)
    chunks = _chunks(ordered, workers)
    assert chunks[0][0].nodeid.startswith("tests/reliability/test_faults.py::")
    assert chunks[0][1].nodeid.endswith("test_slurm_pipeline")
    assert [i.nodeid.rsplit("::", 1)[1] for i in chunks[1][:2]] == [
        "test_local_demo_commands", "test_sweep_and_status_commands_on_slurm"]
    # every other real-cluster test is in chunk 0; the heavy compute tests start other chunks
    assert not any(i.slurm for i in chunks[1][2:])
    assert not any(i.slurm for c in chunks[2:] for i in c)
    starts = {c[0].nodeid for c in chunks[2:]}
    assert starts <= {"tests/kd/test_export.py::test_a", "tests/kd/test_parity.py::test_b"}
