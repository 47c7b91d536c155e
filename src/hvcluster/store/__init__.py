"""The store: what hvcluster keeps in etcd, and how.

``base`` is the contract; ``memory`` and ``etcd`` are its backends (``etcd_conn`` holds the
etcd connections); ``keys`` the key layout; ``lease`` keeps a lease alive; ``election`` elects
a leader; ``events`` is the cluster log; ``health`` reads a store's health; ``clock`` is time,
real or driven by a test. This layer imports only ``models``.
"""
