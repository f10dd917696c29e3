"""Sites in Linux network namespaces, so drills can cut a site off with a real network partition.

Layer: run (haplane.local). Imports only the standard library.

What it may touch: only objects it created itself and recorded, by name, in
`state_dir/netns.json` *before* creating them: one network namespace per site (and one for the
drill client), one veth pair per namespace, one bridge in the root namespace that carries the
gateway address, and one nftables table of its own (`inet haplane_<tag>`) inside its own
namespaces. Every name derives from a short hash of the network's name (`tag`), so two networks
never share an object, and a crashed run's leftovers are found again by name. It never touches
the root namespace's nft ruleset, another interface or another namespace, and it never signals a
process.

Layout (one shared IPv4 subnet, e.g. 10.77.0.0/16):

    root namespace: bridge hpb<tag> with gateway/prefix  (the CLI reaches every site through it)
      ├─ hpv<hash> ── veth ── eth0 address/prefix   in netns hp-<tag>-<site>
      └─ hpv<hash> ── veth ── eth0 client/prefix    in netns hp-<tag>-client

A cut is a set of `drop` rules in the namespaces of one side, so packets vanish silently (TCP
connects time out, as after a real network cut); `heal` deletes those tables again. (Drops in an
output chain give a local UDP/ICMP sender EPERM; TCP retries and times out.)

Processes started with `exec_prefix(address) + argv` keep argv's PID: `ip netns exec` execs.

Known limits: the host's own firewall still sees the bridge's traffic (br_netfilter) and the
root namespace's input; a host policy that drops forwarded or 10.x traffic breaks reachability,
and this module does not (may not) change it.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

STATE_FILE = "netns.json"
CLIENT = "client"
INSIDE_IFNAME = "eth0"
_IFNAMSIZ = 15  # the kernel's limit for interface names (IFNAMSIZ - 1)
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_COMMAND_TIMEOUT = 20.0

LinkKind = Literal["bridge", "veth"]


class NetnsError(RuntimeError):
    """A command that set up or tore down the drill network failed."""


@dataclass(frozen=True)
class SiteAddress:
    """One site's place on the drill network."""

    site: str  # site name from the topology, e.g. "eu-west"
    address: str  # IPv4 address, e.g. "10.77.1.1" (all sites and the client share one subnet)


def available() -> str | None:
    """None if this process can build drill networks (root, `ip` and `nft` found), else why not."""
    if os.geteuid() != 0:
        return f"network namespaces need root (running as uid {os.geteuid()})"
    if shutil.which("ip") is None:
        return "`ip` (Debian package iproute2) not found on PATH"
    if shutil.which("nft") is None:
        return "`nft` (Debian package nftables) not found on PATH"
    return None


def _run(argv: list[str], *, stdin: str | None = None) -> str:
    """Runs one command; raises NetnsError naming the command (and its stderr) if it fails."""
    try:
        done = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            check=True,
            timeout=_COMMAND_TIMEOUT,
        )
    except FileNotFoundError as e:
        raise NetnsError(f"`{shlex.join(argv)}` failed: {argv[0]} not found") from e
    except subprocess.TimeoutExpired as e:
        raise NetnsError(f"`{shlex.join(argv)}` did not finish in {_COMMAND_TIMEOUT:.0f} s") from e
    except subprocess.CalledProcessError as e:
        detail = (e.stderr or e.stdout or "").strip()
        raise NetnsError(
            f"`{shlex.join(argv)}` failed (exit {e.returncode}): {detail or 'no output'}"
        ) from e
    return done.stdout


def _succeeds(argv: list[str]) -> bool:
    """True if the command exits 0 (for existence checks; its output is discarded)."""
    try:
        done = subprocess.run(argv, capture_output=True, check=False, timeout=_COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _short_hash(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _namespaces() -> set[str]:
    out = _run(["ip", "netns", "list"])
    # lines look like "hp-1a2b3c-eu-west (id: 3)" or just "hp-1a2b3c-eu-west"
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _link_kind(name: str) -> str | None:
    """The kind ("bridge", "veth", "" for plain devices) of a root-namespace link, None if none."""
    try:
        done = subprocess.run(
            ["ip", "-j", "-d", "link", "show", "dev", name],
            capture_output=True,
            text=True,
            check=False,
            timeout=_COMMAND_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None  # "Device ... does not exist."
    try:
        info = json.loads(done.stdout)[0]
    except (ValueError, IndexError, KeyError):
        return ""
    kind = info.get("linkinfo", {}).get("info_kind", "")
    return str(kind)


def _empty_record(name: str, tag: str) -> dict[str, Any]:
    return {"name": name, "tag": tag, "links": [], "namespaces": [], "tables": []}


class SiteNetwork:
    """The drill network of one topology: a namespace per site (and the client), one bridge."""

    def __init__(
        self,
        name: str,
        sites: list[SiteAddress],
        *,
        client_address: str | None = None,
        gateway: str = "10.77.0.254",
        prefix_len: int = 16,
        state_dir: Path,
    ) -> None:
        if not name:
            raise ValueError("a site network needs a name (the topology's)")
        self.name = name
        self.sites = list(sites)
        self.client_address = client_address
        self.gateway = gateway
        self.prefix_len = prefix_len
        self.state_dir = Path(state_dir)
        self.tag = _short_hash(name, 6)
        self.bridge = f"hpb{self.tag}"
        self.table = f"haplane_{self.tag}"
        self._validate()
        # member ("site" name or CLIENT) -> (namespace, address, outside veth name)
        self._members: dict[str, tuple[str, str, str]] = {}
        for s in self.sites:
            self._members[s.site] = self._member(s.site, s.address)
        if client_address is not None:
            self._members[CLIENT] = self._member(CLIENT, client_address)

    # ---- names -----------------------------------------------------------------------------

    def _member(self, site: str, address: str) -> tuple[str, str, str]:
        namespace = f"hp-{self.tag}-{site}"
        veth = f"hpv{_short_hash(f'{self.name}/{site}', 8)}"
        assert len(veth) <= _IFNAMSIZ and len(self.bridge) <= _IFNAMSIZ
        return namespace, address, veth

    def _validate(self) -> None:
        try:
            gateway = ipaddress.IPv4Address(self.gateway)
            subnet = ipaddress.IPv4Network(f"{self.gateway}/{self.prefix_len}", strict=False)
        except ValueError as e:
            raise ValueError(f"gateway {self.gateway}/{self.prefix_len}: {e}") from e
        seen: dict[ipaddress.IPv4Address, str] = {gateway: "the gateway"}
        names: set[str] = set()
        members = [(s.site, s.address) for s in self.sites]
        if self.client_address is not None:
            members.append((CLIENT, self.client_address))
        for i, (site, address) in enumerate(members):
            is_client = self.client_address is not None and i == len(members) - 1
            if not is_client:
                if site == CLIENT:
                    raise ValueError(f'site name "{CLIENT}" is reserved for the client namespace')
                if not _SITE_NAME.match(site):
                    raise ValueError(f"site name {site!r} cannot name a network namespace")
                if site in names:
                    raise ValueError(f"site {site!r} listed twice")
                names.add(site)
            try:
                ip = ipaddress.IPv4Address(address)
            except ValueError as e:
                raise ValueError(f"{site}: {address!r} is not an IPv4 address") from e
            if ip not in subnet:
                raise ValueError(f"{site}: {address} is outside the drill subnet {subnet}")
            if ip in (subnet.network_address, subnet.broadcast_address):
                raise ValueError(f"{site}: {address} is not a host address of {subnet}")
            if ip in seen:
                raise ValueError(f"{site}: {address} is already {seen[ip]}'s address")
            seen[ip] = site

    def namespace_of(self, address: str) -> str | None:
        """The namespace holding that address, or None (not one of ours, e.g. the gateway)."""
        for namespace, member_address, _ in self._members.values():
            if member_address == address:
                return namespace
        return None

    def exec_prefix(self, address: str) -> list[str]:
        """Prefix for argv to run a process in the namespace holding `address` ([] if none)."""
        ns = self.namespace_of(address)
        return [] if ns is None else ["ip", "netns", "exec", ns]

    def client_prefix(self) -> list[str]:
        """Prefix for argv to run a process in the client namespace."""
        if CLIENT not in self._members:
            raise ValueError(f"site network {self.name!r} has no client (no client_address)")
        return ["ip", "netns", "exec", self._members[CLIENT][0]]

    def namespaces(self) -> dict[str, str]:
        """Member (site name or "client") -> namespace name."""
        return {member: ns for member, (ns, _, _) in self._members.items()}

    def links(self) -> list[str]:
        """The root-namespace interfaces this network creates: the bridge and the outer veths."""
        return [self.bridge, *(veth for _, _, veth in self._members.values())]

    # ---- state file ------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    def _load(self) -> dict[str, Any]:
        try:
            record = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return _empty_record(self.name, self.tag)
        if not isinstance(record, dict):
            raise NetnsError(f"{self.state_path}: not a netns record")
        return record

    def _save(self, record: dict[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.replace(self.state_path)

    def _record(self, key: str, entry: Any) -> None:
        """Adds one object to the state file (before it is created)."""
        record = self._load()
        if entry not in record[key]:
            record[key].append(entry)
            self._save(record)

    # ---- create ----------------------------------------------------------------------------

    def create(self) -> None:
        """Removes leftovers of the same name, then builds bridge, namespaces and veths.

        Each object is recorded in the state file before it is created, so `cleanup` (or
        `cleanup_stale` after a crash) removes a half-built network too."""
        self.cleanup_stale(self.state_dir)
        self._remove_leftovers_by_name()
        self._check_addresses_free()
        self._save(_empty_record(self.name, self.tag))
        gateway = f"{self.gateway}/{self.prefix_len}"

        self._record("links", {"name": self.bridge, "kind": "bridge"})
        _run(["ip", "link", "add", self.bridge, "type", "bridge", "stp_state", "0"])
        _run(["ip", "link", "set", self.bridge, "addrgenmode", "none"])
        _run(["ip", "address", "add", gateway, "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])

        for namespace, address, veth in self._members.values():
            self._record("namespaces", namespace)
            _run(["ip", "netns", "add", namespace])
            in_ns = ["ip", "-n", namespace]
            _run([*in_ns, "link", "set", "lo", "up"])
            self._record("links", {"name": veth, "kind": "veth"})
            _run(
                [
                    "ip", "link", "add", veth, "type", "veth",
                    "peer", "name", INSIDE_IFNAME, "netns", namespace,
                ]
            )  # fmt: skip
            _run(["ip", "link", "set", veth, "addrgenmode", "none"])
            _run(["ip", "link", "set", veth, "master", self.bridge])
            _run(["ip", "link", "set", veth, "up"])
            _run([*in_ns, "address", "add", f"{address}/{self.prefix_len}", "dev", INSIDE_IFNAME])
            _run([*in_ns, "link", "set", INSIDE_IFNAME, "up"])

    def _remove_leftovers_by_name(self) -> None:
        """Deletes objects bearing this network's derived names (a crashed run without a state
        file). Names carry the hash of `name`, so only a network of the same name matches."""
        record = _empty_record(self.name, self.tag)
        record["namespaces"] = [ns for ns, _, _ in self._members.values()]
        record["links"] = [{"name": veth, "kind": "veth"} for _, _, veth in self._members.values()]
        record["links"].append({"name": self.bridge, "kind": "bridge"})
        errors = _teardown(record)
        if errors:
            raise NetnsError("could not remove leftovers: " + "; ".join(errors))

    def _check_addresses_free(self) -> None:
        """Refuses to build on a subnet the root namespace already uses (another network)."""
        subnet = ipaddress.IPv4Network(f"{self.gateway}/{self.prefix_len}", strict=False)
        out = _run(["ip", "-o", "-4", "address", "show"])
        for line in out.splitlines():
            fields = line.split()
            if "inet" not in fields:
                continue
            ifname = fields[1]
            iface = ipaddress.IPv4Interface(fields[fields.index("inet") + 1])
            if iface.network.overlaps(subnet):
                raise NetnsError(
                    f"the drill subnet {subnet} overlaps {iface} on {ifname} in the root "
                    "namespace; pick another gateway/prefix_len"
                )

    # ---- partitions ------------------------------------------------------------------------

    def _resolve(self, members: list[str], side: str) -> dict[str, tuple[str, str, str]]:
        if not members:
            raise ValueError(f"{side}: name at least one site")
        unknown = [m for m in members if m not in self._members]
        if unknown:
            known = ", ".join(sorted(self._members))
            raise ValueError(f"{side}: unknown site(s) {', '.join(unknown)} (known: {known})")
        return {m: self._members[m] for m in members}

    def _sides(
        self, one: list[str], one_name: str, other: list[str], other_name: str
    ) -> tuple[dict[str, tuple[str, str, str]], dict[str, tuple[str, str, str]]]:
        """Both sides of a cut, resolved; a member on both sides is an error."""
        side_one, side_other = self._resolve(one, one_name), self._resolve(other, other_name)
        both = set(side_one) & set(side_other)
        if both:
            raise ValueError(f"{', '.join(sorted(both))} on both sides of the cut")
        return side_one, side_other

    def _add_drops(self, namespace: str, *, saddr: list[str], daddr: list[str]) -> None:
        """Adds drop rules to our table in `namespace`: input from `saddr`, output to `daddr`."""
        self._record("tables", {"namespace": namespace, "family": "inet", "name": self.table})
        script = [
            f"table inet {self.table} {{",
            "  chain input { type filter hook input priority filter; policy accept; }",
            "  chain output { type filter hook output priority filter; policy accept; }",
            "}",
        ]
        if saddr:
            script.append(
                f"add rule inet {self.table} input ip saddr {{ {', '.join(saddr)} }} drop"
            )
        if daddr:
            script.append(
                f"add rule inet {self.table} output ip daddr {{ {', '.join(daddr)} }} drop"
            )
        _run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], stdin="\n".join(script) + "\n")

    def cut(self, a: list[str], b: list[str]) -> None:
        """Partitions the sites in `a` from those in `b`, both directions, by silent drops.

        Names are site names or "client". The rules live in the namespaces of side `a` (input
        from `b`, output to `b`); the root namespace (gateway) stays reachable from everywhere.
        TCP from either side times out; a UDP/ICMP sender on side `a` gets EPERM from its own
        output chain (netfilter's local-drop error), one on side `b` sees nothing."""
        side_a, side_b = self._sides(a, "a", b, "b")
        others = [address for _, address, _ in side_b.values()]
        for namespace, _, _ in side_a.values():
            self._add_drops(namespace, saddr=others, daddr=others)

    def cut_one_way(self, src: list[str], dst: list[str]) -> None:
        """Drops packets from the sites in `src` to those in `dst`; the reverse still flows.

        The rules sit in the input chains of `dst`'s namespaces, so senders see no error at all.
        (A TCP connect either way then times out: the handshake needs both directions.)"""
        side_src, side_dst = self._sides(src, "src", dst, "dst")
        senders = [address for _, address, _ in side_src.values()]
        for namespace, _, _ in side_dst.values():
            self._add_drops(namespace, saddr=senders, daddr=[])

    def heal(self) -> None:
        """Removes every rule `cut`/`cut_one_way` added (our tables in our namespaces)."""
        record = self._load()
        errors = _delete_tables(record)
        self._save(record)
        if errors:
            raise NetnsError("heal incomplete: " + "; ".join(errors))

    # ---- cleanup ---------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Removes every recorded table, veth, namespace and the bridge, then the state file.

        An object that is already gone is fine. If something could not be removed, the state
        file stays (for `cleanup_stale`) and NetnsError lists what."""
        self.cleanup_stale(self.state_dir)

    @classmethod
    def cleanup_stale(cls, state_dir: Path) -> bool:
        """Removes everything recorded in state_dir/netns.json (a crashed run's network).

        False if there was no record. Raises NetnsError (keeping the record) if an object could
        not be removed."""
        path = Path(state_dir) / STATE_FILE
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return False
        except ValueError as e:
            raise NetnsError(f"{path}: unreadable netns record ({e}); remove it by hand") from e
        if not isinstance(record, dict):
            raise NetnsError(f"{path}: not a netns record; remove it by hand")
        for key in ("links", "namespaces", "tables"):
            record.setdefault(key, [])
        errors = _teardown(record)
        if errors:
            path.write_text(json.dumps(record, indent=2) + "\n")
            raise NetnsError(f"cleanup of {path} incomplete: " + "; ".join(errors))
        path.unlink(missing_ok=True)
        return True

    def __enter__(self) -> SiteNetwork:
        try:
            self.create()
        except BaseException:
            with contextlib.suppress(NetnsError):
                self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


def _delete_tables(record: dict[str, Any]) -> list[str]:
    """Deletes the recorded nft tables (only ours, only in namespaces that still exist)."""
    errors: list[str] = []
    remaining: list[dict[str, str]] = []
    existing = _namespaces()
    for table in record.get("tables", []):
        ns, family, name = table["namespace"], table["family"], table["name"]
        if ns not in existing:
            continue  # the namespace (and with it the table) is gone
        nft = ["ip", "netns", "exec", ns, "nft"]
        if not _succeeds([*nft, "list", "table", family, name]):
            continue
        try:
            _run([*nft, "delete", "table", family, name])
        except NetnsError as e:
            errors.append(str(e))
            remaining.append(table)
    record["tables"] = remaining
    return errors


def _teardown(record: dict[str, Any]) -> list[str]:
    """Removes what `record` lists, in order tables, veths, namespaces, bridge. Missing objects
    are skipped; a link whose kind differs from the recorded one is left alone (not ours). Returns
    the errors and leaves only the objects that failed in `record`."""
    errors = _delete_tables(record)
    links: list[dict[str, str]] = record.get("links", [])
    kept_links: list[dict[str, str]] = []
    # veths first: deleting the outer end destroys the pair even if a process keeps the
    # namespace alive after `ip netns delete`
    for link in sorted(links, key=lambda entry: entry["kind"] != "veth"):
        if link["kind"] == "bridge":
            continue
        if not _delete_link(link, errors):
            kept_links.append(link)
    kept_namespaces: list[str] = []
    existing = _namespaces()
    for ns in record.get("namespaces", []):
        if ns not in existing:
            continue
        try:
            _run(["ip", "netns", "delete", ns])
        except NetnsError as e:
            errors.append(str(e))
            kept_namespaces.append(ns)
    for link in links:
        if link["kind"] == "bridge" and not _delete_link(link, errors):
            kept_links.append(link)
    record["links"] = kept_links
    record["namespaces"] = kept_namespaces
    return errors


def _delete_link(link: dict[str, str], errors: list[str]) -> bool:
    """Deletes one recorded root-namespace link; True if it is gone (or was never there)."""
    kind = _link_kind(link["name"])
    if kind is None:
        return True
    if kind != link["kind"]:
        errors.append(
            f"{link['name']} is a {kind or 'plain'} device, not the {link['kind']} we recorded; "
            "left alone"
        )
        return False
    try:
        _run(["ip", "link", "delete", link["name"]])
    except NetnsError as e:
        if _link_kind(link["name"]) is None:
            return True  # its peer's namespace went away meanwhile
        errors.append(str(e))
        return False
    return True
