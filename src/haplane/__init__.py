"""haplane: a highly available, multi-region Kubernetes-style control plane on real etcd.

Layers (lower never imports higher; checked by import-linter in the test command):
    haplane.topology  model: the topology file, its schema and HA rules (pure)
    haplane.store     etcd: binaries, member command lines, the async client
    haplane.local     run: ports, processes, the supervisor, status, faults on this machine
    haplane.cli       run: the `haplane` command
"""

__version__ = "0.1.0"
