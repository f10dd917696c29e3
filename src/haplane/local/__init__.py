"""Layer: run. Starting a topology on this machine: ports, processes, the supervisor, status,
faults. May use every lower layer (store, model).
"""
