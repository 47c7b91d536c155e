"""hvcluster: a failover cluster for QEMU/KVM virtual machines, on etcd."""

__version__ = "0.1.0"
