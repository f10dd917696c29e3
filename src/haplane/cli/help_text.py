"""`haplane --help`, rendered: what typer prints for it without a terminal at 80 columns, kept
here so that the quick path (`haplane.cli.quick`) answers it without importing typer, click,
rich and every command (~230 ms here; this, ~70 ms).

Layer: run (cli). Generated, never edited by hand: tests/test_cli_quick.py compares `text()`
with typer's own rendering and fails with the command that writes it again:

    .venv/bin/python -m haplane.cli.help_text --write

Stored without the spaces rich pads every line with to WIDTH (the linters refuse trailing
whitespace); `text()` pads them back. `stored_form` refuses a rendering whose lines are not all
WIDTH wide (but the empty ones it ends with), so the padding cannot be guessed wrong.
"""

from __future__ import annotations

WIDTH = 80
ENDING = "\n\n"  # the empty lines rich ends with
STORED = """

 Usage: haplane [OPTIONS] COMMAND [ARGS]...

 Run a highly available, multi-region control plane on real etcd, and measure
 it.

╭─ Options ────────────────────────────────────────────────────────────────────╮
│ --help        <bool>  Show this message and exit.                            │
╰──────────────────────────────────────────────────────────────────────────────╯
╭─ Commands ───────────────────────────────────────────────────────────────────╮
│ validate     Check a topology file against the HA rules. Exit 0: no errors,  │
│              1: errors, 2: unreadable.                                       │
│ analyse      Which failures the topology survives, decided from the model    │
│              alone: every set of up to                                       │
│              k simultaneous failures (components, zones, sites, network      │
│              cuts), grouped by outcome.                                      │
│ diagram      Draw the topology: sites, zones, etcd members, API replicas,    │
│              balancers, gates, the                                           │
│              witness, replication; with --fail, what a failure set takes     │
│              down.                                                           │
│ docs         One document for the topology: inventory, validation findings,  │
│              failure tolerance,                                              │
│              availability estimate, diagram, and a DR runbook derived from   │
│              the file.                                                       │
│ schema       Print the topology file's JSON Schema (for editors).            │
│ up           Start a topology on this machine and supervise it (Ctrl-C or    │
│              `haplane down` stops it).                                       │
│ down         Stop the supervisor and every process it started; leaves data   │
│              in place.                                                       │
│ status       Each component: process state, and for etcd: member id, leader, │
│              term, revision, db size.                                        │
│ fault        Inject a fault: kill (SIGKILL), term (SIGTERM), pause/resume    │
│              (SIGSTOP/CONT), restart.                                        │
│ drill        Run a DR drill against the running topology: a client writes    │
│              and reads through the gate                                      │
│              while the fault is injected; reports detection, agreement,      │
│              fence wait, switch and                                          │
│              reconnect times, the longest client-visible gap, errors by      │
│              kind, acknowledged writes lost                                  │
│              and epoch-order violations. Exit 1 when the drill fails (see    │
│              the verdict).                                                   │
│ failover     Make REGION the active region.                                  │
│ grant        Ask for a RoleGrant: a binding of CLUSTERROLE, made by the      │
│              platform once another person                                    │
│              approved it (`haplane approve NAME`). Bindings to cluster-admin │
│              and haplane:platform-admin                                      │
│              are made no other way.                                          │
│ approve      Approve someone else's request (a Switchover, RoleGrant, Drill  │
│              or MaintenanceAction;                                           │
│              your own never counts).                                         │
│              Refused when you are not one of its approvers, or it expired or │
│              was decided already.                                            │
│ reject       Reject a request (an approver, or the requester withdrawing     │
│              it): it never runs.                                             │
│ audit        Every replica's audit log, of every region, merged into one     │
│              time-ordered view.                                              │
│ drills       DR drill history: each run's verdict, RTO (the longest write    │
│              gap a client saw; for a                                         │
│              restore drill, the restore time) and acknowledged writes lost;  │
│              per scenario, runs, passes                                      │
│              and the median RTO of the last 5 runs against the 5 before.     │
│              Exit 1 when the latest run of                                   │
│              any scenario failed.                                            │
│ logs         Every component's log and the supervisor's, merged into one     │
│              time-ordered view.                                              │
│ kubeconfig   A kubeconfig for kubectl and Kubernetes clients. By default it  │
│              points at the global gate                                       │
│              (the address its instances on this host share), which forwards  │
│              to the active region, as                                        │
│              haplane-admin (system:masters: every permission); `--user`      │
│              issues a certificate for                                        │
│              someone else. The kubeconfig embeds the key: it is written mode │
│              0600.                                                           │
│ version      Print haplane's version and the etcd binary it would run.       │
│ failback     Automatic failback: resume it (on), suspend it (off), or show   │
│              it (status).                                                    │
│ divergence   Writes a returning region made after the cut: list, show,       │
│              re-apply.                                                       │
│ gc           Garbage collection paused after a promotion from a partial      │
│              copy: status, resume.                                           │
│ pki          The topology's certificates: expiry, and rotation without       │
│              downtime.                                                       │
│ secrets      Encryption at rest: what each key protects, new keys,           │
│              re-encryption, old keys removed.                                │
│ maintenance  Component operations through the API (carried out by the        │
│              supervisor's agent).                                            │
│ policy       The central policy layer: policy packs, and what breaks them.   │
│ gitops       GitOps: what the controller applied, drift, and asking it to    │
│              sync.                                                           │
│ backup       Logical backups: namespaces and resources as YAML, restored     │
│              through the API.                                                │
│ snapshot     Physical snapshots of each region's etcd and of the global      │
│              control etcd.                                                   │
│ member       etcd members: replace a lost one.                               │
│ restore      Rebuild a region's etcd, or the global control etcd, from a     │
│              snapshot.                                                       │
│ runbook      Runbooks as code: checks, actions, waits and assertions against │
│              the running topology, journaled, rolled back on failure.        │
│ console      The web console.                                                │
│ export       Write configurations for other tools from a topology.           │
╰──────────────────────────────────────────────────────────────────────────────╯
"""


def text() -> str:
    """What typer prints for `haplane --help` into a pipe, to the byte."""
    lines = STORED.split("\n")[1:-1]
    return "\n".join(line.ljust(WIDTH) for line in lines) + ENDING


def render() -> str:
    """Typer's `haplane --help` now, as a pipe gets it at WIDTH columns."""
    from typer.testing import CliRunner

    from haplane.cli.main import app

    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": str(WIDTH)}, prog_name="haplane")
    return str(result.stdout)


def stored_form(rendered: str) -> tuple[str, str]:
    """(STORED's lines, ENDING) of a rendering; ValueError when it cannot be stored so."""
    lines = rendered.split("\n")
    n = len(lines)
    while n and lines[n - 1] == "":
        n -= 1
    if n == 0 or any(len(line) != WIDTH for line in lines[:n]):
        raise ValueError(f"typer's help has lines that are not {WIDTH} wide: not cacheable")
    return "\n".join(line.rstrip() for line in lines[:n]), "\n" * (len(lines) - n)


if __name__ == "__main__":
    import sys
    from pathlib import Path

    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m haplane.cli.help_text --write")
    fence = '"' * 3
    stored, ending = stored_form(render())
    path = Path(__file__)
    head, _, tail = path.read_text().partition("ENDING = ")
    _, _, rest = tail.partition(f"\n{fence}\n")
    literal = '"' + ending.replace("\n", "\\n") + '"'
    path.write_text(
        f"{head}ENDING = {literal}  # the empty lines rich ends with\n"
        f"STORED = {fence}\n{stored}\n{fence}\n{rest}"
    )
