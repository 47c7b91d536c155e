"""Installing hvcluster on a host: ``hvc host install`` / ``hvc host uninstall``.

``scripts/host-install`` makes the virtualenv under /opt and runs ``hvc host install`` from it;
this package writes ``/etc/hvcluster/agent.toml`` and the systemd units, installs the Debian
packages a host needs and enables the units. It reads no store and starts no VM.
"""
