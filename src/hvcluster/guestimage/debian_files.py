"""What :mod:`hvcluster.guestimage.debian` writes into the Debian guest's root, kept as strings
so they ship with the package and are hashed into the image's recipe.

The counter service is the Debian twin of the busybox guest's loop: the same
``HVCCOUNTER1 <20 digits>\\n`` record and the same serial lines (``HVC-BOOT``,
``HVC-HEARTBEAT counter=N``), so the lab's checks read both guests alike. Only its place
differs: sector 0 of a bootable disk is the MBR, so the Debian guest keeps its counter in
sector 1, in the gap before the first partition (which starts at sector 2048 and which
extlinux never uses); :func:`hvcluster.guestimage.testguest.read_counter` looks in both.
"""

from __future__ import annotations

COUNTER_SECTOR = 1
ROOT_LABEL = "hvcroot"
KERNEL_CMDLINE = "console=ttyS0 root=LABEL=hvcroot ro quiet"

COUNTER_SCRIPT = r"""#!/bin/bash
# hvc-counter: proves from outside that this VM was never reset, never ran twice and lost
# nothing. Once a second it writes "HVCCOUNTER1 <20 digits>" to sector 1 of /dev/vda
# (O_DIRECT, then fsync), resuming at boot from the value found there, so it only rises.
set -u
disk=/dev/vda
sector=1
read_counter() {
  local words
  words=$(dd if="$disk" bs=512 skip=$sector count=1 iflag=direct 2>/dev/null | head -c 32)
  set -- $words
  if [ "${1:-}" = HVCCOUNTER1 ]; then echo $((10#$2)); else echo 0; fi
}
say() { echo "$*" > /dev/console; echo "$*"; }
until [ -b "$disk" ]; do sleep 0.2; done
n=$(read_counter)
say "HVC-BOOT kernel=$(uname -r) disk=$disk counter=$n uptime=$(cut -d' ' -f1 /proc/uptime)"
beat=0
while true; do
  n=$((n + 1))
  printf 'HVCCOUNTER1 %020d\n' "$n" \
    | dd of="$disk" bs=512 seek=$sector count=1 conv=sync,notrunc,fsync oflag=direct \
      2>/dev/null || say "hvc-counter: counter write failed"
  if [ $beat -eq 0 ]; then
    say "HVC-HEARTBEAT counter=$n uptime=$(cut -d' ' -f1 /proc/uptime)"
    beat=5
  fi
  beat=$((beat - 1))
  sleep 1
done
"""

# Started as early as systemd starts (no wait for the rest of boot): the time to the first
# counter write is what a failover test waits for. No dependency on dev-vda.device: the
# kernel's devtmpfs has /dev/vda before the root (on it) is mounted, while udev's coldplug
# that makes the device unit can take minutes under TCG on a busy host, and past systemd's
# device timeout (90 s) the counter was never started at all.
COUNTER_UNIT = """[Unit]
Description=hvcluster guest counter (an fsync'd rising counter in sector 1 of /dev/vda)
DefaultDependencies=no
Conflicts=shutdown.target
Before=shutdown.target

[Service]
ExecStart=/usr/local/sbin/hvc-counter
Restart=always
RestartSec=1

[Install]
WantedBy=sysinit.target
"""

FIRSTBOOT_SCRIPT = r"""#!/bin/bash
# hvc-firstboot: once per VM disk (every VM's disk is its own overlay of one image), give
# this VM its own SSH host keys and create the user of /etc/hvc/firstboot.conf with its SSH
# key. The config is written by `hvc image build --user NAME --ssh-key FILE`.
set -eu
conf=/etc/hvc/firstboot.conf
user=""
ssh_key=""
[ -f "$conf" ] && . "$conf"
ssh-keygen -A
if [ -n "$user" ] && ! id "$user" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/bash "$user"
fi
if [ -n "$user" ] && [ -n "$ssh_key" ]; then
  home=$(getent passwd "$user" | cut -d: -f6)
  install -d -m 700 -o "$user" -g "$user" "$home/.ssh"
  printf '%s\n' "$ssh_key" > "$home/.ssh/authorized_keys"
  chown "$user:$user" "$home/.ssh/authorized_keys"
  chmod 600 "$home/.ssh/authorized_keys"
fi
mkdir -p /var/lib/hvc
touch /var/lib/hvc/firstboot.done
echo "hvc-firstboot: user=${user:-none} key=$([ -n "$ssh_key" ] && echo yes || echo no)"
"""

FIRSTBOOT_UNIT = """[Unit]
Description=hvcluster first boot (SSH host keys, the configured user and SSH key)
ConditionPathExists=!/var/lib/hvc/firstboot.done
After=local-fs.target systemd-remount-fs.service
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/hvc-firstboot
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
"""

NETWORK = """[Match]
Name=en*

[Network]
DHCP=yes
"""

FSTAB = f"LABEL={ROOT_LABEL} / ext4 errors=remount-ro 0 1\n"

EXTLINUX_CONF = f"""DEFAULT debian
TIMEOUT 1
PROMPT 0
SERIAL 0 115200
LABEL debian
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND {KERNEL_CMDLINE}
"""

# A boot under TCG on a busy host (a fifth of a core) takes minutes: systemd waits for its
# devices and units that long rather than failing them at its 90 s defaults (a serial getty
# and systemd-logind, which acts on the ACPI power button, were among those it gave up on).
SYSTEM_CONF = """[Manager]
DefaultTimeoutStartSec=900s
DefaultDeviceTimeoutSec=900s
"""

# The initramfs holds only what mounts the root (MODULES=most would make it ~4x bigger, and
# every byte of it is read through the BIOS under TCG).
INITRAMFS_CONF = "MODULES=list\nCOMPRESS=gzip\n"
INITRAMFS_MODULES = "virtio_pci\nvirtio_blk\next4\n"


def firstboot_conf(user: str, ssh_key: str) -> str:
    """The shell-sourced config of the first-boot unit (values single-quoted)."""

    def quote(value: str) -> str:
        return "'" + value.replace("'", "'\\''") + "'"

    return f"user={quote(user)}\nssh_key={quote(ssh_key)}\n"
