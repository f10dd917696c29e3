"""The gate layer: the forwarding engine, health probing, regional balancers and the global gate.

Layer: gate. May use `haplane.store` (the global control state) and `haplane.topology`; never the
API server (`haplane.api`, a sibling) nor the run layer (`haplane.local`), which starts gate
processes.
"""
