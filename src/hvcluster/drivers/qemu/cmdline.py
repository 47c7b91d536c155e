"""A VM spec checked against this host and turned into QEMU's command line."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from hvcluster.drivers.diskpath import disk_path
from hvcluster.drivers.errors import SpecError
from hvcluster.drivers.qemu.heartbeat import heartbeat_argv
from hvcluster.drivers.qemu.settings import QemuSettings
from hvcluster.drivers.runtime import OBSERVE_SOCKET
from hvcluster.models.console import ConsoleKind, console_socket_name
from hvcluster.models.guestcpu import guest_cpu_of
from hvcluster.models.storage import bridge_name
from hvcluster.models.vm import VMSpec


@dataclass(frozen=True)
class Launch:
    """How this QEMU starts: accelerator, paused or not, waiting for an incoming migration."""

    accelerator: str
    paused: bool = False
    incoming: bool = False  # "-incoming defer": the state arrives later by migrate-incoming


def opt(value: object) -> str:
    """A value inside a QEMU option list, where a comma must be doubled."""
    return str(value).replace(",", ",,")


def tap_name(run_dir: Path, vm: str, index: int) -> str:
    """A tap name unique per host runtime dir and VM (15 characters at most, as Linux wants)."""
    digest = hashlib.sha1(f"{Path(run_dir).absolute()}\0{vm}\0{index}".encode()).hexdigest()
    return f"hvt{digest[:11]}"


def check_spec(spec: VMSpec, host_memory_mib: int, settings: QemuSettings) -> None:
    """Refuse, naming the field, what cannot run here: before QEMU says it less clearly."""
    if spec.memory_mib > host_memory_mib:
        raise SpecError(
            f"{spec.memory_mib} MiB is more than this host's {host_memory_mib} MiB", "memory_mib"
        )
    for i, disk in enumerate(spec.disks):
        path = disk_path(disk, i, settings.volumes)
        if not path.is_file():
            raise SpecError(f"disk image {path} does not exist", f"disks[{i}].path")
        if not os.access(path, os.R_OK if disk.readonly else os.R_OK | os.W_OK):
            raise SpecError(f"disk image {path} is not accessible", f"disks[{i}].path")
    for i, nic in enumerate(spec.nics):
        bridge = bridge_name(nic.switch)
        if not Path(f"/sys/class/net/{bridge}/bridge").is_dir():
            raise SpecError(
                f"no bridge {bridge!r} for switch {nic.switch!r} on this host", f"nics[{i}].switch"
            )
    boot = spec.boot
    for field in ("kernel", "initrd"):
        value = getattr(boot, field)
        if value is not None and not Path(value).is_file():
            raise SpecError(f"{value} does not exist", f"boot.{field}")
    if boot.initrd and not boot.kernel:
        raise SpecError("an initrd needs a kernel", "boot.initrd")
    if not spec.disks and not boot.kernel:
        raise SpecError("nothing to boot: give a disk or a kernel", "disks")


def qemu_argv(
    spec: VMSpec, vm_dir: Path, run_dir: Path, launch: Launch, settings: QemuSettings
) -> list[str]:
    """The full command line. QEMU daemonizes itself once it is ready (pidfile, QMP socket)."""
    d = vm_dir.absolute()
    argv = [
        settings.binary,
        "-name", f"{spec.name},process=hvc-{spec.name}",
        "-machine", settings.machine,
        "-accel", launch.accelerator,
        "-cpu", guest_cpu_of(spec, settings.cpu_model),
        "-smp", str(spec.vcpus),
        "-m", f"{spec.memory_mib}M",
        "-nodefaults", "-no-user-config", "-display", "none",
        # The consoles (models/console.py): unix sockets of the VM, never a TCP port. The
        # serial port is a socket server the agent bridges to websockets, and everything
        # the guest writes there also goes to serial.log, whether anyone is connected or not.
        "-chardev", (
            f"socket,id=serial0,path={opt(d / console_socket_name(ConsoleKind.SERIAL))},"
            f"server=on,wait=off,logfile={opt(d / 'serial.log')},logappend=on"
        ),
        "-serial", "chardev:serial0",
        "-vga", "std",
        "-vnc", f"unix:{opt(d / console_socket_name(ConsoleKind.VNC))}",
        "-chardev", f"socket,id=qmp,path={opt(d / 'qmp.sock')},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        # A second monitor for onlookers (hvc lab chaos's checker asks each QEMU whether it
        # runs its guest; an operator's qmp-shell): the agent holds the first for as long
        # as the VM runs, and a monitor socket takes one client at a time.
        "-chardev", f"socket,id=qmp-observe,path={opt(d / OBSERVE_SOCKET)},server=on,wait=off",
        "-mon", "chardev=qmp-observe,mode=control",
        "-pidfile", str(d / "pid"),
        "-D", str(d / "qemu.log"),  # keeps QEMU's stderr in qemu.log after it daemonizes
        "-daemonize",
    ]  # fmt: skip
    if spec.boot.kernel:
        argv += ["-kernel", spec.boot.kernel, "-append", spec.boot.cmdline]
        if spec.boot.initrd:
            argv += ["-initrd", spec.boot.initrd]
    for i, disk in enumerate(spec.disks):
        path = disk_path(disk, i, settings.volumes)
        drive = f"file={opt(path)},format={disk.format},if=none,id=disk{i},cache=writeback"
        if disk.readonly:
            drive += ",readonly=on"
        argv += ["-drive", drive, "-device", f"virtio-blk-pci,drive=disk{i},id=vblk{i}"]
        if i == 0 and not spec.boot.kernel:
            argv[-1] += ",bootindex=0"
    for i, nic in enumerate(spec.nics):
        tap = tap_name(run_dir, spec.name, i)
        argv += [
            "-netdev", f"tap,id=net{i},ifname={tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=net{i},mac={nic.mac},id=nic{i}",
        ]  # fmt: skip
    # Guest monitoring (models/vm.GuestMonitor), only when the spec asks: a VM's devices follow
    # its spec alone, so both ends of a live migration (and VMs started before it) agree.
    if spec.monitor.panic:
        argv += ["-device", "pvpanic"]  # ISA; the guest's pvpanic driver reports its panics
    if spec.monitor.heartbeat:
        argv += heartbeat_argv(d, opt)
    if launch.paused or launch.incoming:
        argv.append("-S")
    if launch.incoming:
        argv += ["-incoming", "defer"]
    return argv
