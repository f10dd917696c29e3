"""Identity and access (layer: auth). Pure building blocks the API server, the gate and the
run layer compose: the platform PKI (`pki`), static and ServiceAccount tokens (`tokens`), the
RBAC evaluator (`rbac`) and the audit policy and writer (`audit`).

May use: haplane.store, haplane.topology (and libraries). Never the API server, the gate or the
run layer: they import this package, not the reverse. Import submodules directly (the CLI stays
quick to start: nothing here is imported eagerly).
"""
