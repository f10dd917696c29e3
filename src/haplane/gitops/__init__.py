"""GitOps: git sources, rendering, and apply/prune/drift/health against any Kubernetes API.
Layer: sync (a client of the platform only, through its public API)."""
