"""The per-host agent role of the supervisor: approved `Drill` and `MaintenanceAction`
objects (`ops.haplane.dev`, in the global control etcd) carried out on this host.

Layer: run (local). Runs inside the supervisor (`haplane.local.runner` starts it once the
topology is healthy), with the supervisor's etcd client certificate; reads and rewrites the
objects through `haplane.store.operations` (a compare-and-swap claims each, so two agents
never both run one). Each operation is the matching local primitive run as a child process
(`python -m haplane.cli ... --direct`), so the supervisor's own loop is never held up by a
drill's load, and what an operator would have typed is exactly what runs:
- `Drill` (scenario, warmup/observe/interval): `haplane drill SCENARIO --direct --json`; the
  status gets the verdict and the report's summary (failover, phases, lost writes), and the
  report files in `STATE/drills/` beside those of drills run by hand;
- `MaintenanceAction` `restart` of a component: `haplane fault restart NAME`, for a component
  this host runs; refused (Failed) unless the requester held the role for its kind when asking
  (`status.requesterRoles`, recorded by the API): etcd members need `haplane:etcd-operator`,
  balancers and gates `haplane:gate-operator`, anything else `haplane:platform-admin`;
- `MaintenanceAction` `drain` / `undrain` of a balancer (the same roles as its restart):
  `haplane maintenance drain|undrain NAME --direct`, which refuses to leave a region with no
  balancer in service and waits (`timeoutSeconds`) for the drained one's connections to end;
- `MaintenanceAction` `rotate-certificates` (needs `haplane:platform-admin`): `haplane pki
  rotate`, one component at a time, health-gated;
- `MaintenanceAction` `rotate-encryption-key` (needs `haplane:platform-admin`, and by default
  another person's approval): `haplane secrets rotate`, which makes a new key the writer once
  every replica has loaded it; `remove-encryption-key` (the same): `haplane secrets
  remove-key NAME`, refused while anything still needs the key;
- `MaintenanceAction` `run-runbook` (by default another person's approval): `haplane runbook
  run NAME -p ... --direct --yes`, refused when the runbook's sha256 is not the one the
  request named, or when one of its commands needs a role the requester lacked when asking
  (`Runbook.refusal`: `member` an etcd-operator, `failover` a dr-operator, `pki` a
  platform-admin...); the status gets the run's outcome, failed step and journal.
A `Pending` request past its time becomes `Expired`. A restart of a component no process of
this supervisor runs is `Failed` (one supervisor runs the whole topology here; with agents on
several hosts each would leave others' components alone). A primitive runs in its own session:
stopped (its timeout, or the supervisor stopping) it gets SIGINT, so a drill undoes its fault,
then SIGKILL after 30 s; an operation this agent claimed and did not finish is `Failed`, said
so, the next time it starts. The agent's own writes go straight to the global control etcd:
they are in its log, not in the API's audit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from haplane.store import EtcdClient, EtcdError, KeyValue
from haplane.store import operations as ops

log = logging.getLogger("haplane.local.ops_agent")

Obj = dict[str, Any]
EVERY = 0.5
TIMEOUTS = {  # seconds a primitive may take (a drain: its own timeout on top)
    "Drill": 900.0,
    "restart": 120.0,
    "drain": 30.0,
    "undrain": 30.0,
    "rotate-certificates": 900.0,
    "rotate-encryption-key": 300.0,
    "remove-encryption-key": 300.0,
    "run-runbook": 3600.0,
}
ON_A_COMPONENT = ("restart", "drain", "undrain")
ROLE_FOR_KIND = {  # ManagedProcess kinds (haplane.local.supervisor)
    "etcd": "haplane:etcd-operator",
    "balancer": "haplane:gate-operator",
    "gate": "haplane:gate-operator",
}
UNDO_GRACE = 30.0  # seconds a stopped primitive gets to undo its fault (a drill's `finally`)
ADMIN = "haplane:platform-admin"
OUTPUT_KEPT = 4000  # characters of a primitive's output kept in the status


class OpsAgent:
    def __init__(
        self,
        client: EtcdClient,
        global_prefix: bytes,
        state_root: str,
        component_kind: Callable[[str], str | None],
        *,
        host: str | None = None,
        run: Callable[[list[str], float], Awaitable[tuple[int, str, str]]] | None = None,
    ) -> None:
        self.client = client
        self.prefix = global_prefix
        self.state_root = state_root
        self.component_kind = component_kind  # None: not a component of this host
        self.name = f"agent:{host or socket.gethostname()}"
        self._recovered = False
        self._run = run or run_primitive  # runs a primitive: (exit code, stdout, stderr)

    async def run(self) -> None:
        while True:
            try:
                await self.one_pass()
            except EtcdError as exc:  # the next pass tries again
                log.info(json.dumps({"msg": "ops agent: pass failed", "error": str(exc)}))
            except Exception:  # a bug: logged, and the agent goes on
                log.exception("ops agent: pass failed")
            await asyncio.sleep(EVERY)

    async def one_pass(self) -> None:
        first, self._recovered = not self._recovered, True
        for plural in ("maintenanceactions", "drills"):
            for kv, obj in await ops.list_objects(self.client, self.prefix, plural, timeout=2.0):
                status = _dict(obj.get("status"))
                phase = status.get("phase")
                with contextlib.suppress(ops.Lost):
                    if phase == ops.PENDING:
                        at = ops.parse_time(status.get("expiresAt"))
                        if at is not None and time.time() >= at:
                            await self._set(kv, ops.EXPIRED, "not approved in time: ask again")
                    elif phase == ops.RUNNING and status.get("runBy") == self.name and first:
                        # claimed before this supervisor started: its child was stopped with it
                        await self._set(
                            kv, ops.FAILED, "the agent stopped before it finished: ask again"
                        )
                    elif phase == ops.APPROVED:
                        await self._carry_out(kv, obj)

    async def _set(self, kv: KeyValue, phase: str, message: str, **fields: Any) -> KeyValue:
        def change(st: Obj) -> None:
            st["phase"] = phase
            st["message"] = message
            if phase in ops.TERMINAL:
                st["finishedAt"] = ops.now_rfc3339()
            st.update(fields)

        new, _ = await ops.update_status(self.client, kv, change, timeout=2.0)
        return new

    async def _carry_out(self, kv: KeyValue, obj: Obj) -> None:
        kind, spec = str(obj.get("kind")), _dict(obj.get("spec"))
        status = _dict(obj.get("status"))
        refusal = self._refusal(kind, spec, status)
        if refusal is not None:
            await self._set(kv, ops.FAILED, refusal)
            return
        kv = await self._set(
            kv, ops.RUNNING, "running", runBy=self.name, startedAt=ops.now_rfc3339()
        )
        try:
            outcome, message, result = await self._execute(kind, spec)
        except Exception as exc:
            log.exception("ops agent: %s failed", kind)
            outcome, message, result = ops.FAILED, f"the agent failed: {exc!r}", {}
        for attempt in range(5):  # the final word must land (a global etcd election, say)
            try:
                await self._set(kv, outcome, message, result=result)
                return
            except ops.Lost:
                return
            except EtcdError:
                await asyncio.sleep(1.0 + attempt)
        log.warning(json.dumps({"msg": "ops agent: outcome unwritten", "outcome": outcome}))

    async def _execute(self, kind: str, spec: Obj) -> tuple[str, str, Obj]:
        argv, timeout = self._command(kind, spec)
        log.info(json.dumps({"msg": "ops agent: running", "operation": kind, "argv": argv}))
        t0 = time.monotonic()
        code, out, err = await self._run(argv, timeout)
        seconds = round(time.monotonic() - t0, 3)
        result: Obj = {"exitCode": code, "seconds": seconds, "output": _tail(err, out)}
        if kind == "Drill":
            result.update(_drill_summary(out, err, code))
        elif spec.get("action") == "run-runbook":
            result.update(_runbook_summary(out))
        outcome = ops.SUCCEEDED if code == 0 else ops.FAILED
        what = f"`{shlex.join(argv[3:-2])}`"
        # what went wrong; or what was done (a drill's and a runbook's stdout is a JSON report)
        reports = kind == "Drill" or spec.get("action") == "run-runbook"
        said = _last_line(err) if code != 0 else "" if reports else _last_line(out)
        if spec.get("action") == "run-runbook" and result.get("outcome"):
            said = f"runbook {result['outcome']}" + (
                f" at step {result['failedStep']}" if result.get("failedStep") else ""
            )
        message = f"{what} exited {code} after {seconds}s" + (f": {said}" if said else "")
        return outcome, message, result

    def _refusal(self, kind: str, spec: Obj, status: Obj) -> str | None:
        """Why the requester may not have this done here (None: they may)."""
        if kind != "MaintenanceAction":
            return None
        roles = set(status.get("requesterRoles") or ())
        action = spec.get("action")
        if action in ON_A_COMPONENT:
            component = str(spec.get("component"))
            kind_of = self.component_kind(component)
            if kind_of is None:  # (one supervisor runs the whole topology here)
                return f"no component named {component!r} here: nothing done"
            if action != "restart" and kind_of != "balancer":
                return f"{component} is a {kind_of}: only balancers are drained; nothing done"
            wanted = ROLE_FOR_KIND.get(kind_of, ADMIN)
            if roles & {"*", ADMIN, wanted}:
                return None
            return f"{action} of {component} needs {wanted} (or {ADMIN}): nothing done"
        if action == "run-runbook":
            return self._runbook_refusal(spec, roles)
        if roles & {"*", ADMIN}:
            return None
        return f"{spec.get('action')} needs {ADMIN}: nothing done"

    def _runbook_refusal(self, spec: Obj, roles: set[str]) -> str | None:
        """The runbook as approved (its sha256), and every command it runs one the requester
        may have run (`Runbook.refusal`): an approval is no way around the separation of
        duties."""
        from pathlib import Path

        from .runbook import RunbookError, find

        name = str(spec.get("runbook"))
        try:
            book = find(name, Path(self.state_root))
        except (KeyError, RunbookError) as exc:
            return f"runbook {name}: {exc}: nothing done"
        if spec.get("runbookSha256") != book.digest:
            return (
                f"runbook {name} is not the one approved (sha256 {book.digest}, the request "
                f"named {spec.get('runbookSha256')}): nothing done; ask again"
            )
        why = book.refusal(roles)
        return f"runbook {name}: {why}: nothing done" if why else None

    def _command(self, kind: str, spec: Obj) -> tuple[list[str], float]:
        cli = [sys.executable, "-m", "haplane.cli"]
        tail = ["--state-dir", self.state_root]
        if kind == "Drill":
            argv = [*cli, "drill", str(spec["scenario"]), "--direct", "--json"]
            for field, flag in (
                ("warmupSeconds", "--warmup"),
                ("observeSeconds", "--observe"),
                ("intervalSeconds", "--interval"),
            ):
                if field in spec:
                    argv += [flag, str(spec[field])]
            return [*argv, *tail], TIMEOUTS["Drill"]
        action = str(spec.get("action"))
        timeout = TIMEOUTS[action]
        if action == "restart":
            argv = [*cli, "fault", "restart", str(spec["component"])]
        elif action in ("drain", "undrain"):
            argv = [*cli, "maintenance", action, str(spec["component"]), "--direct"]
            argv += ["--reason", str(spec.get("reason") or "maintenance")]
            if action == "drain":
                wait = float(spec.get("timeoutSeconds", 30.0))
                argv += ["--timeout", str(wait)]
                timeout += wait
        elif action == "rotate-certificates":
            argv = [*cli, "pki", "rotate"]
        elif action == "run-runbook":
            # as an operator would have typed it here, risky steps allowed: the approval
            # was the API's; the digest makes sure what was approved is what runs
            argv = [*cli, "runbook", "run", str(spec["runbook"]), "--direct", "--yes", "--json"]
            for key, value in sorted(_dict(spec.get("parameters")).items()):
                argv += ["-p", f"{key}={value}"]
            if spec.get("runbookSha256"):
                argv += ["--sha256", str(spec["runbookSha256"])]
        elif action == "remove-encryption-key":
            argv = [*cli, "secrets", "remove-key", str(spec["key"])]
        else:
            argv = [*cli, "secrets", "rotate"]
        return [*argv, *tail], timeout


async def run_primitive(argv: list[str], timeout: float) -> tuple[int, str, str]:
    """Run a primitive (a haplane command) in its own session; the agent's, and the
    supervisor's schedules'. Stopped (a timeout, or the supervisor stopping):
    SIGINT first, so that a drill undoes its fault (its `finally`), then SIGKILL to the
    whole group after `UNDO_GRACE`; never left running behind the supervisor."""
    # a primitive acts on this state dir's platform: never on a cluster the environment of
    # whoever started the supervisor names (the CLI would take $KUBECONFIG's identity)
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        await stop_primitive(proc)
        return 124, "", f"timed out after {timeout:g}s (stopped)"
    except asyncio.CancelledError:
        await asyncio.shield(stop_primitive(proc))
        raise
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def stop_primitive(proc: asyncio.subprocess.Process) -> None:
    """SIGINT to its session, then SIGKILL after UNDO_GRACE (it was started with
    `start_new_session`)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        await asyncio.wait_for(proc.wait(), UNDO_GRACE)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


def _drill_summary(out: str, err: str, code: int) -> Obj:
    """The verdict and the figures a reviewer looks at first, from the drill's JSON report."""
    summary: Obj = {"passed": code == 0}
    try:
        report = json.loads(out)
    except ValueError:
        return summary
    meta = _dict(report.get("meta"))
    summary.update(
        failedOver=meta.get("failed_over"),
        before=meta.get("before"),
        after=meta.get("after"),
        phases=report.get("phases"),
        lostWrites=len(report.get("lost_writes") or ()),
        epochOrderViolations=len(report.get("epoch_order_violations") or ()),
    )
    for line in err.splitlines():
        if line.startswith("reports: "):
            summary["reports"] = line[len("reports: ") :].split()
    return summary


def _runbook_summary(out: str) -> Obj:
    """The run's outcome, the step that failed and where its journal is, from its report."""
    try:
        report = json.loads(out)
    except ValueError:
        return {}
    if not isinstance(report, dict):
        return {}
    steps = report.get("steps") or []
    return {
        "runbook": report.get("runbook"),
        "outcome": report.get("outcome"),
        "failedStep": report.get("failedStep"),
        "journal": report.get("journal"),
        "steps": [
            {"name": s.get("name"), "outcome": s.get("outcome"), "seconds": s.get("seconds")}
            for s in steps
            if isinstance(s, dict)
        ],
    }


def _tail(err: str, out: str) -> str:
    text = err if err.strip() else out
    return text[-OUTPUT_KEPT:]


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}
