"""The test and demo guest: a tiny Linux (a distribution kernel and a busybox initramfs) built
once per host by ``hvc image build`` (:mod:`hvcluster.guestimage.image`), its init script
(:mod:`hvcluster.guestimage.guest_init`), and the helpers tests and benchmarks use to run it
and read what it wrote (:mod:`hvcluster.guestimage.testguest`).

It is not a driver: the qemu driver only boots it to probe KVM. This layer imports only
:mod:`hvcluster.models` and :mod:`hvcluster.host`.
"""
