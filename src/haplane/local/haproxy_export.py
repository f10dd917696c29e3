"""`haplane export haproxy`: the HAProxy configuration equivalent to a topology's balancers and
gates, for teams that run HAProxy as their data plane.

Layer: run (`haplane.local`). Pure text from the plans of `gate_plans` (same ports, same checks).

What carries over and what does not:
- balancers: `mode tcp`, one server per API replica, `option httpchk GET /readyz` at the same
  interval / fall / rise as haplane's balancers, `leastconn`, `option redispatch` and
  `retry-on conn-failure` (a refused connect is retried on another replica before any byte).
  HAProxy marks a server whose `/readyz` turns 503 DOWN; it does not close the connections it
  already has (no `on-marked-down shutdown-sessions`), so watches on a draining replica finish,
  as with haplane. A replica that dies closes its own connections.
- gates: HAProxy cannot follow the active region in etcd, so the export points the gate at the
  region that was active when it was written (`active_region`), with its balancers checked on
  their aggregate health. After a failover, export again and reload, or switch the backend
  through HAProxy's runtime API (`set server ... state maint|ready`). It must not list the other
  regions as `backup` servers: HAProxy would then fail over on its own view alone, which is
  exactly the split brain the global control state prevents.
- TLS (every topology not `insecure`): HAProxy stays in `mode tcp`, so the client's TLS session
  runs end to end to an API replica, as through haplane's gates; its health checks speak
  HTTPS (`check-ssl verify required ca-file`) against the platform CA, anonymously (the health
  endpoints need no identity). HAProxy checks the chain, not the address: `verifyhost` matches
  DNS names only, and the certificates name IP addresses.
"""

from __future__ import annotations

from .gate_plans import (
    CHECK_FALL,
    CHECK_INTERVAL,
    CHECK_RISE,
    CHECK_TIMEOUT,
    GATE_CHECK_TIMEOUT,
    REGION_HEALTH_PATH,
    BalancerPlan,
    GatePlan,
)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _check_line(ca_file: str | None) -> str:
    tls = f" check-ssl verify required ca-file {ca_file}" if ca_file else ""
    return f"inter {_ms(CHECK_INTERVAL)} fall {CHECK_FALL} rise {CHECK_RISE}{tls}"


def _ident(name: str) -> str:
    return name.replace("/", "_")


def haproxy_config(
    topology_name: str,
    balancers: list[BalancerPlan],
    gates: list[GatePlan],
    active_region: str | None,
    ca_file: str | None = None,
) -> str:
    """`ca_file`: the platform CA (health checks over HTTPS); None for an insecure topology."""
    lines = [
        f"# HAProxy configuration for haplane topology {topology_name!r}",
        "# written by `haplane export haproxy`; check it with `haproxy -c -f FILE`",
        "global",
        "    nbthread 1",
        "    maxconn 4096   # raise with the host's file limit (HAProxy needs ~2 fds per conn)",
        "",
        "defaults",
        "    mode tcp",
        "    timeout connect 1s",
        "    timeout client 1h   # watches are long-lived",
        "    timeout server 1h",
        f"    timeout check {_ms(CHECK_TIMEOUT)}ms",
        "    option redispatch",
        "    retries 2",
        "    retry-on conn-failure",
        "",
    ]
    for b in balancers:
        ident = _ident(b.qualified_name)
        lines += [
            f"# regional balancer {b.qualified_name} (zone {b.zone})",
            f"frontend {ident}",
            f"    bind {b.host}:{b.port}",
            f"    default_backend {ident}_replicas",
            "",
            f"backend {ident}_replicas",
            "    balance leastconn",
            "    option httpchk GET /readyz",
            "    http-check expect status 200",
        ]
        for r in b.replicas:
            lines.append(f"    server {r.name} {r.host}:{r.port} check {_check_line(ca_file)}")
        lines.append("")
    seen_binds: set[tuple[str, int]] = set()
    for g in gates:
        if (g.host, g.port) in seen_binds:
            lines += [f"# gate {g.qualified_name} shares {g.host}:{g.port} with the one above", ""]
            continue
        seen_binds.add((g.host, g.port))
        ident = _ident(g.qualified_name)
        region = active_region or next(iter(g.regions), "")
        lbs = g.regions.get(region, ())
        lines += [
            f"# gate {g.qualified_name} (site {g.site}): region {region} was active at export",
            f"frontend {ident}",
            f"    bind {g.host}:{g.port}",
            f"    default_backend {ident}_active_region",
            "",
            f"backend {ident}_active_region",
            "    balance leastconn",
            f"    option httpchk GET {REGION_HEALTH_PATH}",
            "    http-check expect status 200",
            f"    timeout check {_ms(GATE_CHECK_TIMEOUT)}ms",
        ]
        for b in lbs:
            lines.append(
                f"    server {_ident(b.qualified_name)} {b.host}:{b.port} check port "
                f"{b.admin_port} {_check_line(ca_file)}"
            )
        lines.append("")
    return "\n".join(lines) + "\n"
