"""The lab's etcd processes never outlive the process that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.waiting import wait_for_sync

pytestmark = pytest.mark.etcd

SCRIPT = """
import sys, time
from pathlib import Path
from hvcluster.lab.etcd import EtcdCluster
cluster = EtcdCluster(1, Path(sys.argv[1]))
cluster.start()
print(cluster.members[0].pid, flush=True)
time.sleep(60)
"""


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.mark.timeout(60)
def test_etcd_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    pid = None
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline())
        assert running(pid)
        owner.kill()  # no finally, no atexit: only the kernel can clean up now
        owner.wait()
        wait_for_sync(lambda: not running(pid), 10, "etcd to end with its owner")
    finally:
        owner.kill()
        owner.wait()
        if pid is not None and running(pid):
            os.kill(pid, signal.SIGKILL)
