"""The gate layer: the forwarding engine, health probing, regional balancers and the global gate.

Layer: gate. May use `haplane.store` (the global control state) and `haplane.topology`; never the
API server (`haplane.api`, a sibling) nor the run layer (`haplane.local`), which starts gate
processes.

The forwarding engine (reusable by the regional balancers and the global gate):
- `forwarder`: `Forwarder`, the engine: pools of health-checked upstreams, the active pool
  (`set_pool`, `activate`), listeners, `status()`, metrics, graceful `stop`;
- `settings`: its plain settings (`UpstreamAddress`, `HealthCheck`, `Timeouts`, `ListenerSpec`);
- `tcp_relay`: L4 mode, a byte relay per client connection;
- `http_proxy`: L7 mode, HTTP/1.1 with per-request balancing, safe retries, streaming;
- `health`: upstream states, the pure transition function, the active probe;
- `balancing`: pools, upstream bookkeeping, least-loaded choice;
- `k8s_status`: the proxy's own errors as Kubernetes `Status` bodies;
- `events`, `metrics`: JSON log lines and Prometheus metrics;
- `config`, `admin`, `__main__`: the `python -m haplane.gate --config FILE.json` process, its
  JSON config (schema in `__main__`) and admin HTTP listener (/metrics, /status, POST /pool).
"""
