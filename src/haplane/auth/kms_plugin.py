"""haplane's reference KMS v2 plugin: Kubernetes' KMS v2 gRPC API (`haplane.auth.kms_api`) on a
unix socket, the key-encryption keys in local files. It is what the tests run as "a KMS
plugin", and a plugin you can run to try a `unix://` provider without Vault or a cloud KMS:

    python -m haplane.auth.kms_plugin --socket /run/haplane-kms.sock \\
        --key /etc/haplane/kms/current.key [--key /etc/haplane/kms/previous.key ...]

- keys: 32 random bytes, base64, mode 0600 (what `haplane up` makes for its local KEK;
  `haplane.auth.encryption.create_local_key`). The first `--key` wraps new seeds; every one
  unwraps. Status answers version v2, healthz ok, and the first key's id (`local:` and a
  digest of the key). Encrypt wraps with AES-256-GCM and answers an annotation
  (`format.kms.haplane.io`) that Decrypt requires back, as plugins such as Vault's may.
- rotation: SIGHUP reads the key files again. Put the new key in the first file and the old
  one in the second (`mv current.key previous.key`, a new `current.key`, `kill -HUP`); the
  replicas see the new key id at their next Status poll (within a minute) and make a seed
  under it; values sealed before still open while the old key is listed.
- SIGTERM or SIGINT: stops serving and removes the socket.
- `--faults FILE` (for tests; read again whenever the file changes): a JSON object that
  makes the plugin misbehave: {"hang": ["Status", "Encrypt", "Decrypt"]} (those calls never
  answer while listed), {"healthz": "sealed"} (Status unhealthy), {"encrypt_key_id": "x"}
  (Encrypt names another key id than Status), {"delay": 0.2} (seconds before each answer).

Layer: auth. Reads its key files and its faults file, serves its socket, nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from cryptography.exceptions import InvalidTag

from . import kms_api
from .envelope import EncryptionError, LocalKek, WrappedSeed

ANNOTATION = "format.kms.haplane.io"
FORMAT = b"local-kek-aes-256-gcm-v1"


class Faults:
    """The faults file, read again when it changes (missing: no faults)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._faults: dict[str, Any] = {}

    def get(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._faults = None, {}
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                loaded = json.loads(self.path.read_text() or "{}")
            except (OSError, ValueError):
                return self._faults  # half-written: the next call reads it again
            self._stamp, self._faults = stamp, loaded if isinstance(loaded, dict) else {}
        return self._faults


class Plugin:
    """The KeyManagementService: `keys` (files; the first wraps), `faults` for tests."""

    def __init__(self, keys: list[Path], faults: Faults):
        self.key_files = keys
        self.faults = faults
        self.keys: list[LocalKek] = []
        self.load_keys()

    def load_keys(self) -> None:
        """(Re)read the key files: all or nothing."""
        self.keys = [LocalKek(path) for path in self.key_files]

    def _misbehave(self, method: str, context: grpc.ServicerContext) -> dict[str, Any]:
        faults = self.faults.get()
        while method in (faults.get("hang") or ()) and context.is_active():
            time.sleep(0.02)  # until the caller gives up (its timeout) or the fault is lifted
            faults = self.faults.get()
        delay = faults.get("delay")
        if isinstance(delay, int | float) and delay > 0:
            time.sleep(delay)
        return faults

    def status(self, request: Any, context: grpc.ServicerContext) -> Any:
        faults = self._misbehave("Status", context)
        return kms_api.StatusResponse(
            version=str(faults.get("version", "v2")),
            healthz=str(faults.get("healthz", kms_api.HEALTHY)),
            key_id=self.keys[0].key_id(),
        )

    def encrypt(self, request: Any, context: grpc.ServicerContext) -> Any:
        faults = self._misbehave("Encrypt", context)
        wrapped = self.keys[0].wrap(bytes(request.plaintext))
        return kms_api.EncryptResponse(
            ciphertext=wrapped.ciphertext,
            key_id=str(faults.get("encrypt_key_id", wrapped.key_id)),
            annotations={ANNOTATION: FORMAT},
        )

    def decrypt(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._misbehave("Decrypt", context)
        if request.annotations.get(ANNOTATION) != FORMAT:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"annotation {ANNOTATION} missing or unknown: pass back the annotations "
                "Encrypt answered",
            )
        key = next((k for k in self.keys if k.key_id() == request.key_id), None)
        if key is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"key id {request.key_id!r} is not among this plugin's keys "
                f"({', '.join(k.key_id() for k in self.keys)}): give it back with --key",
            )
        assert key is not None
        try:
            seed = key.unwrap(WrappedSeed(bytes(request.ciphertext), request.key_id))
        except (EncryptionError, InvalidTag) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return kms_api.DecryptResponse(plaintext=seed)

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {
            kms_api.STATUS: self.status,
            kms_api.ENCRYPT: self.encrypt,
            kms_api.DECRYPT: self.decrypt,
        }
        return grpc.method_handlers_generic_handler(
            kms_api.SERVICE,
            {
                path.rsplit("/", 1)[1]: grpc.unary_unary_rpc_method_handler(
                    fn,
                    request_deserializer=kms_api.METHODS[path][0].FromString,
                    response_serializer=lambda m: m.SerializeToString(),
                )
                for path, fn in methods.items()
            },
        )


def _claim(path: Path) -> None:
    """Remove a socket left by a plugin that died; refuse one that a live process serves, and
    anything that is not a socket (a mistyped --socket naming the key file, say)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SystemExit(f"kms_plugin: {path} exists and is not a socket: not touched")
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            path.unlink()
            return
    raise SystemExit(f"kms_plugin: {path}: another process serves this socket")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m haplane.auth.kms_plugin", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--socket", required=True, type=Path, help="the unix socket to serve")
    ap.add_argument(
        "--key", required=True, action="append", type=Path,
        help="a key file; the first wraps, all unwrap (repeat it for older keys)",
    )  # fmt: skip
    ap.add_argument("--faults", type=Path, help="a JSON file of faults, for tests")
    ap.add_argument("--workers", type=int, default=8, help="calls served at once")
    args = ap.parse_args(argv)
    try:
        plugin = Plugin(args.key, Faults(args.faults))
    except EncryptionError as exc:
        print(f"kms_plugin: {exc}", file=sys.stderr)
        return 2
    path: Path = args.socket.absolute()
    _claim(path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    server.add_generic_rpc_handlers((plugin.handler(),))
    old_umask = os.umask(0o077)  # the socket is 0600 from its creation
    try:
        server.add_insecure_port(f"unix://{path}")
        server.start()
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)  # only this user's processes reach the keys through it
    stop = threading.Event()
    reload = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    print(f"serving unix://{path}, key id {plugin.keys[0].key_id()}", flush=True)
    try:
        while not stop.wait(0.2):
            if reload.is_set():
                reload.clear()
                try:
                    plugin.load_keys()
                    print(f"keys read again, key id {plugin.keys[0].key_id()}", flush=True)
                except EncryptionError as exc:  # the keys in use stay
                    print(f"kms_plugin: keys not read again: {exc}", file=sys.stderr, flush=True)
    finally:
        server.stop(grace=0.5).wait()
        path.unlink(missing_ok=True)
    return 0


class PluginProcess:
    """This plugin as a child process, for tests and benchmarks: `start` returns once it
    serves; `stop` ends it (SIGTERM, then SIGKILL) and reaps it; `fault(...)` writes its
    faults file (`fault()` lifts them)."""

    def __init__(self, socket_path: Path, keys: list[Path], log: Path | None = None):
        self.socket = socket_path
        self.keys = keys
        self.faults = socket_path.with_name(socket_path.name + ".faults.json")
        self.log = log or socket_path.with_name(socket_path.name + ".log")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 20.0) -> None:
        keys = [a for k in self.keys for a in ("--key", str(k))]
        argv = [sys.executable, "-m", "haplane.auth.kms_plugin", "--socket", str(self.socket),
                "--faults", str(self.faults), *keys]  # fmt: skip
        with open(self.log, "ab") as log:
            offset = log.tell()  # this run's lines come after it
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                raise RuntimeError(f"the KMS plugin exited: {self.log.read_text()[-2000:]}")
            if b"serving" in self.log.read_bytes()[offset:]:
                return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"the KMS plugin did not serve within {timeout:g}s")

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def fault(self, **faults: Any) -> None:
        tmp = self.faults.with_suffix(".tmp")
        tmp.write_text(json.dumps(faults))
        tmp.replace(self.faults)


if __name__ == "__main__":
    sys.exit(main())
