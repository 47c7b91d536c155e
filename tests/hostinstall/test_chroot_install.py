"""The host install in a fresh Debian 12 root, as on a new host: ``scripts/host-install``
from a checkout, offline from a wheelhouse, then the units' ExecStart commands started by
hand (no systemd runs in a chroot): the watchdog serves its socket, the agent refuses an
etcd that does not answer with a clear error. Then again (idempotent), then uninstall.

Runs as root (CI does); the Debian root is cached (see :mod:`tests.hostinstall.debian_root`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from hvcluster.lab.etcd import free_ports
from tests.hostinstall.debian_root import CACHE, fresh_root, mounts_under

REPO = Path(__file__).resolve().parents[2]
UNITS = "etc/systemd/system"

pytestmark = [
    pytest.mark.chroot,
    pytest.mark.slow,
    pytest.mark.timeout(1500),
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot and mounts need root"),
]


def wheelhouse(dist: Path) -> Path:
    """The dependencies' wheels (cached, refreshed when pyproject.toml's content changes)
    and this checkout's own wheel, built fresh into ``dist``. The stamp holds a hash of
    pyproject.toml, not a time: every fresh clone (each CI run) has a new pyproject.toml
    mtime, and the refresh asks the package index for every dependency (10 to 60 s)."""
    wheels = CACHE / "wheels"
    stamp = wheels / ".stamp"
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check"]
    wanted = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text().strip() != wanted:
        subprocess.run([*pip, "-w", str(wheels), str(REPO)], check=True, timeout=600)
        stamp.write_text(wanted + "\n")
    for own in wheels.glob("hvcluster-*.whl"):
        own.unlink()  # the package comes from dist/, never a stale build
    # setuptools builds in the checkout's build/lib and never removes from it: a module
    # deleted from src/ would still be in the wheel.
    shutil.rmtree(REPO / "build" / "lib", ignore_errors=True)
    subprocess.run([*pip, "--no-deps", "-w", str(dist), str(REPO)], check=True, timeout=300)
    return wheels


def exec_start_line(unit: Path) -> str:
    text = unit.read_text().replace("\\\n", " ")
    found = re.search(r"(?m)^ExecStart=(.+)$", text)
    assert found, f"no ExecStart in {unit}"
    return found.group(1)


def exec_start(unit: Path) -> list[str]:
    return exec_start_line(unit).split()


def in_root(root: Path, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["chroot", str(root), *argv], capture_output=True, text=True, timeout=timeout, check=False
    )


def etcd_member_starts(root: Path, unit: Path) -> None:
    """hvc-etcd's ExecStart as its unit runs it (its flags from etcd.flags), its data dir
    made as systemd's StateDirectory= does, until the member is healthy. Ports 2379/2380 are
    swapped for free ones in a copy of the flags (other tests share this machine)."""
    client, peer = free_ports(2)
    flags = root / "etc/hvcluster/etcd.flags"
    text = flags.read_text()
    assert "--data-dir=/var/lib/hvcluster/etcd\n" in text
    shifted = text.replace(":2379", f":{client}").replace(":2380", f":{peer}")
    (root / "tmp/etcd.flags").write_text(shifted)
    command = exec_start_line(unit).replace("/etc/hvcluster/etcd.flags", "/tmp/etcd.flags")
    made = in_root(root, ["install", "-d", "-m", "0700", "/var/lib/hvcluster/etcd"], 30)
    assert made.returncode == 0, made.stderr
    shell = shlex.split(command.replace("$$", "$"))
    etcd = subprocess.Popen(
        ["chroot", str(root), *shell],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert etcd.poll() is None, etcd.communicate()[1][-2000:]
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{client}/health"
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if json.loads(answer.read()).get("health") == "true":
                        break
            assert time.monotonic() < deadline, "the etcd member was not healthy in 60s"
            time.sleep(0.2)
    finally:
        etcd.terminate()
        try:
            etcd.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            etcd.kill()
            etcd.communicate()


def test_host_install_in_a_fresh_debian_root(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    wheels = wheelhouse(dist)
    wheel = next(dist.glob("hvcluster-*.whl"))
    scratch = tmp_path / "chroot"
    binds = {"/mnt/hvc-src": REPO, "/mnt/wheels": wheels, "/mnt/dist": dist}
    install = [
        "/mnt/hvc-src/scripts/host-install",
        "--source", f"/mnt/dist/{wheel.name}",
        "--wheels", "/mnt/wheels",
        "--node", "hv1",
        "--etcd", "127.0.0.1:1",  # nothing listens there: the agent must say so
        "--etcd-member",
        "--softdog",
    ]  # fmt: skip
    try:
        with fresh_root(scratch, binds) as root:
            npm = Path(os.environ.get("HVC_CACHE", "/var/cache/hvcluster")) / "npm"
            if npm.is_dir():  # the browser libraries scripts/install fetched: no network
                shutil.copytree(npm, root / "var/cache/hvcluster/npm")
            started = time.monotonic()
            done = in_root(root, install, timeout=1200)
            took = time.monotonic() - started
            assert done.returncode == 0, done.stdout + done.stderr
            print(f"host install in a fresh root: {took:.0f}s")

            (site,) = (root / "opt/hvcluster/lib").glob("python3*/site-packages")
            assert (site / "hvcluster/web/static/vendor/.installed.json").exists()
            config = tomllib.loads((root / "etc/hvcluster/agent.toml").read_text())
            assert config["node"] == "hv1"
            assert config["etcd"] == ["127.0.0.1:1"]
            assert "--name=hv1\n" in (root / "etc/hvcluster/etcd.flags").read_text()
            wants = root / UNITS / "multi-user.target.wants"
            for name in ("hvc-watchdog.service", "hvc-agent.service", "hvc-etcd.service"):
                assert (wants / name).is_symlink(), f"{name} not enabled"
            assert os.readlink(root / UNITS / "etcd.service") == "/dev/null"  # Debian's: masked
            assert (root / "etc/modules-load.d/hvc-softdog.conf").exists()
            for tool in ("qemu-system-x86_64", "qemu-img", "ip", "etcd", "etcdctl"):
                assert in_root(root, ["which", tool], 30).returncode == 0, f"{tool} missing"

            verify = subprocess.run(
                ["systemd-analyze", "verify", f"--root={root}",
                 *(f"/{UNITS}/hvc-{n}.service" for n in ("watchdog", "agent", "etcd"))],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert verify.returncode == 0, verify.stdout + verify.stderr
            assert verify.stdout + verify.stderr == ""

            watchdog = subprocess.Popen(
                ["chroot", str(root), *exec_start(root / UNITS / "hvc-watchdog.service")],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                sock = root / "run/hvc/watchdog.sock"
                deadline = time.monotonic() + 30
                while not sock.exists() and watchdog.poll() is None:
                    assert time.monotonic() < deadline, "the watchdog made no socket in 30s"
                    time.sleep(0.1)
                assert watchdog.poll() is None, watchdog.communicate()
                agent = in_root(root, exec_start(root / UNITS / "hvc-agent.service"), 120)
            finally:
                watchdog.send_signal(signal.SIGTERM)
                out, err = watchdog.communicate(timeout=30)
            assert watchdog.returncode == 0, out + err
            assert agent.returncode != 0
            assert "etcd did not answer" in agent.stderr, agent.stderr
            assert "127.0.0.1:1" in agent.stderr

            etcd_member_starts(root, root / UNITS / "hvc-etcd.service")

            # Again: nothing rewritten, an edited config kept.
            conf = root / "etc/hvcluster/agent.toml"
            conf.write_text(conf.read_text() + "# the admin's line\n")
            again = in_root(root, [*install, "--etcd", "127.0.0.1:2"], timeout=600)
            assert again.returncode == 0, again.stdout + again.stderr
            assert " written" not in again.stdout, again.stdout
            assert "the admin's line" in conf.read_text()

            # The venv alone (before hvc cluster init / hvc node join): no config step at all.
            venv = in_root(root, [*install[:5], "--venv-only"], timeout=600)
            assert venv.returncode == 0, venv.stdout + venv.stderr
            assert "--venv-only" in venv.stdout
            assert "[host]" not in venv.stdout

            gone = in_root(root, ["/opt/hvcluster/bin/hvc", "host", "uninstall"], 120)
            assert gone.returncode == 0, gone.stdout + gone.stderr
            assert not (root / "opt/hvcluster").exists()
            assert not (root / UNITS / "hvc-agent.service").exists()
            assert conf.exists()
        assert mounts_under(scratch) == []
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # the overlay's upper layer: hundreds of MB
