"""The /init of the test guest (a busybox shell script), kept as a string so it ships with the
package. See the script's own header for what it does."""

INIT_SCRIPT = r"""#!/bin/busybox sh
# /init of the hvcluster test guest. It proves, from outside, that a VM runs, was never reset,
# never ran twice and lost nothing:
# - prints HVC-BOOT once booted and HVC-HEARTBEAT lines on the serial console, where a shell
#   answers too;
# - keeps a counter in the first sector of its disk (/dev/vda), written every ~200 ms and
#   flushed; at boot it resumes from the value on disk, so it only ever rises.
# The ACPI power button powers it off cleanly.
# - answers guest monitoring's heartbeat (qemu-guest-agent's guest-sync) on the virtio-serial
#   port org.qemu.guest_agent.0 when the VM has one; `hvc-hang` (typed on the serial shell)
#   stops answering, `hvc-panic` panics the kernel (reported through pvpanic if present).
# - with hvc.dirty_mib_s=R (and hvc.dirty_set_mib=S, default 256) on the kernel command line,
#   keeps dirtying memory for live migration under load: R MiB a second, paced in quarter
#   seconds, over a tmpfs file of S MiB rewritten in place, 1 MiB at a time, from three random
#   blocks in turn (non-zero, and each lap gives a page other contents than the last, so
#   neither QEMU's zero-page detection nor xbzrle's delta hides the writes). It prints
#   HVC-DIRTY once started and HVC-DIRTY-LAP n each time it has gone over the whole set.
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

for m in $(cat /etc/hvc-modules); do
  insmod "/lib/modules/$m.ko" 2>/dev/null || echo "hvc-guest: insmod $m failed"
done

param() { # value of hvc.NAME= on the kernel command line
  for word in $(cat /proc/cmdline); do
    case "$word" in "hvc.$1="*) echo "${word#*=}"; return;; esac
  done
}

disk=/dev/$(param disk)
[ "$disk" = /dev/ ] && disk=/dev/vda
i=0
while [ ! -b "$disk" ] && [ $i -lt 20 ]; do sleep 0.1; i=$((i + 1)); done

ip=$(param ip)
if [ -n "$ip" ] && [ -e /sys/class/net/eth0 ]; then
  ip addr add "$ip" dev eth0
  ip link set eth0 up
fi

# The power button: any event on its input device means "power off now".
for input in /sys/class/input/input*; do
  if [ "$(cat "$input/name" 2>/dev/null)" = "Power Button" ]; then
    for ev in "$input"/event*; do
      [ -e "$ev" ] || continue
      dev="/dev/input/${ev##*/}"
      [ -c "$dev" ] || continue
      (if [ "$(dd if="$dev" bs=24 count=1 2>/dev/null | wc -c)" -eq 24 ]; then
         echo "HVC-POWEROFF"
         sync
         poweroff -f
       fi) &
    done
  fi
done

read_counter() { # the counter stored on the disk, 0 if none
  set -- $(dd if="$disk" bs=512 count=1 2>/dev/null | head -c 32)
  if [ "$1" = HVCCOUNTER1 ]; then
    v=$2
    while [ "${v#0}" != "$v" ]; do v=${v#0}; done
    echo "${v:-0}"
  else
    echo 0
  fi
}

n=0
if [ -b "$disk" ]; then
  n=$(read_counter)
fi
[ -b "$disk" ] || disk=none
echo "HVC-BOOT kernel=$(uname -r) disk=$disk counter=$n uptime=$(cut -d' ' -f1 /proc/uptime)"

# The heartbeat responder: {"return": N} to each {"execute": "guest-sync", "arguments":
# {"id": N}} line, as qemu-ga answers it.
# A virtio-serial port opens once (read and write on one descriptor); a read with no host
# connected ends at once, hence the pause before opening it again.
(i=0  # its ports appear moments after virtio_console loads
 while [ $i -lt 30 ]; do
   for port in /sys/class/virtio-ports/*; do
     [ "$(cat "$port/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] || continue
     dev=/dev/${port##*/}
     echo "HVC-RESPONDER $dev"
     while true; do
       while read -r line <&3; do
         id=${line##*\"id\": }; id=${id%%\}*}
         echo "{\"return\": $id}" >&3
       done 3<>"$dev"
       sleep 0.2
     done
   done
   sleep 0.1; i=$((i + 1))
 done) &
echo $! >/tmp/hvc-responder.pid
printf '#!/bin/sh\nkill -STOP $(cat /tmp/hvc-responder.pid) && echo HVC-HUNG\n' >/bin/hvc-hang
printf '#!/bin/sh\necho HVC-PANIC; echo c >/proc/sysrq-trigger\n' >/bin/hvc-panic
chmod +x /bin/hvc-hang /bin/hvc-panic

# The memory writer (see the header): its file lives in /tmp, on the initramfs's tmpfs.
rate=$(param dirty_mib_s)
if [ -n "$rate" ] && [ "$rate" -gt 0 ] 2>/dev/null; then
  set_mib=$(param dirty_set_mib)
  [ -n "$set_mib" ] && [ "$set_mib" -gt 0 ] 2>/dev/null || set_mib=256
  for b in 0 1 2; do
    dd if=/dev/urandom of=/tmp/hvc-dirty-block$b bs=1048576 count=1 2>/dev/null
  done
  (now_ms() { # /proc/uptime's seconds.centiseconds in ms (the 1 keeps "08" from reading as octal)
     t=$(cut -d' ' -f1 /proc/uptime); echo $(( ${t%.*} * 1000 + (1${t#*.} - 100) * 10 ))
   }
   echo "HVC-DIRTY rate=$rate set=$set_mib"
   pos=0; lap=0; start=$(now_ms); done_mib=0
   while true; do
     # as many MiB as the rate asks for by now (catching up after a stall at most 1 s)
     now=$(now_ms)
     due=$(( (now - start) * rate / 1000 ))
     if [ $((due - done_mib)) -gt "$rate" ]; then done_mib=$((due - rate)); fi
     while [ "$done_mib" -lt "$due" ]; do
       dd if=/tmp/hvc-dirty-block$((lap % 3)) of=/tmp/hvc-dirty bs=1048576 seek=$pos \
         count=1 conv=notrunc 2>/dev/null
       done_mib=$((done_mib + 1)); pos=$((pos + 1))
       if [ "$pos" -ge "$set_mib" ]; then
         pos=0; lap=$((lap + 1)); echo "HVC-DIRTY-LAP $lap"
       fi
     done
     sleep 0.25
   done) &
fi

# A shell on the serial console (hvc vm console, the dashboard's terminal), in a session of
# its own with ttyS0 as its terminal (so ^C reaches it, not init); started again on exit.
(while true; do
   setsid sh -c 'exec sh -i </dev/ttyS0 >/dev/ttyS0 2>&1'
   sleep 1
 done) &

beat=0
while true; do
  n=$((n + 1))
  if [ "$disk" != none ]; then
    printf 'HVCCOUNTER1 %020d\n' "$n" \
      | dd of="$disk" bs=512 count=1 conv=sync,notrunc,fsync 2>/dev/null \
      || echo "hvc-guest: counter write failed"
  fi
  if [ $beat -eq 0 ]; then
    echo "HVC-HEARTBEAT counter=$n uptime=$(cut -d' ' -f1 /proc/uptime)"
    beat=5
  fi
  beat=$((beat - 1))
  sleep 0.2
done
"""
