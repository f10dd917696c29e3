"""Benchmark: the git binary (haplane.gitops.source) against dulwich, for what a GitOps source does.

A local repository of small YAML files (one ConfigMap each, 100 to a directory), 1,000 and
10,000 of them. Measured side by side, in interleaved rounds (one run of each contender per
round, so the machine's noise falls on all of them):

(a) first use: a new bare cache, every branch and tag fetched into it, the branch resolved, its
    tree exported to a directory;
(b) steady state: one new commit in the origin (one file changed; not timed), then fetch,
    resolve and export of the new tree, into the cache (a) left;
and, to choose how haplane exports a tree, the export alone of a commit already in the cache:
`git read-tree -u` with an index of its own (what `GitRepository.checkout` does), `git archive`
piped into Python's `tarfile` with the "data" filter, and dulwich writing the tree's blobs.

Contenders: `GitRepository.resolve` + `checkout` (asyncio, one git process per step); dulwich
through its local client (`LocalGitClient`: reads the origin in-process, what dulwich does for a
path or file:// URL); and dulwich over git's wire protocol (`SubprocessGitClient`: it runs
`git-upload-pack` and parses the pack itself, what it does for any remote). dulwich exports
by writing each blob of `iter_tree_contents` (its `build_index_from_tree`, which also writes an
index, measured no faster: 2.4-3.4 s against 2.3-3.0 s for 10,000 files on a slow disk).

Trees are never pruned here (`keep_trees` high) and nothing is deleted until the end: removing
ten thousand files makes the next ones slow to create for seconds on some disks (ext4 with
`discard`), which would fall on whichever ran next. The figures are in the docstring of
haplane.gitops.source.

dulwich is not a dependency: `.venv/bin/pip install dulwich` to compare; without it only git
is measured (said so).

    .venv/bin/python bench/gitops_git.py [--runs 5] [--files 1000,10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from haplane.gitops.source import GitRepository

try:
    import dulwich
    from dulwich.client import LocalGitClient, SubprocessGitClient
    from dulwich.repo import Repo
except ImportError:
    dulwich = None

GIT = ["git", "-c", "user.name=Bench", "-c", "user.email=bench@example.com"]


def git(repo: Path, *args: str) -> str:
    done = subprocess.run([*GIT, "-C", str(repo), *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"git {' '.join(args)}: {done.stderr}")
    return done.stdout.strip()


def make_origin(root: Path, files: int) -> Path:
    origin = root / "origin"
    origin.mkdir()
    git(origin, "init", "-q", "-b", "main")
    for n in range(files):
        directory = origin / f"team-{n // 100:03d}"
        directory.mkdir(exist_ok=True)
        (directory / f"cm-{n:05d}.yaml").write_text(
            f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{n}\n  namespace: "
            f"team-{n // 100}\ndata:\n  level: info\n  owner: team-{n // 100}\n"
        )
    git(origin, "add", "-A")
    git(origin, "commit", "-q", "-m", "initial")
    git(origin, "tag", "-a", "v1", "-m", "v1")
    return origin


def new_commit(origin: Path, n: int) -> str:
    (origin / "team-000" / "cm-00000.yaml").write_text(f"kind: ConfigMap\nround: {n}\n")
    git(origin, "commit", "-q", "-am", f"round {n}")
    return git(origin, "rev-parse", "HEAD")


# -- git: haplane.gitops.source --------------------------------------------------------------


def git_sync(cache: Path, origin: Path) -> str:
    async def sync() -> str:
        repo = GitRepository(cache, str(origin), keep_trees=10_000)
        commit = await repo.resolve("main")
        await repo.checkout(commit)
        return commit

    return asyncio.run(sync())


def git_read_tree(cache: Path, origin: Path, commit: str, dest: Path) -> None:
    git_dir = GitRepository(cache, str(origin)).cache_dir
    dest.mkdir()
    index = dest.with_name(dest.name + ".index")
    subprocess.run(
        [
            "git",
            f"--git-dir={git_dir}",
            f"--work-tree={dest}",
            "read-tree",
            "--reset",
            "-u",
            commit,
        ],
        env=dict(os.environ, GIT_INDEX_FILE=str(index)),
        check=True,
    )
    index.unlink()


def git_archive_tarfile(cache: Path, origin: Path, commit: str, dest: Path) -> None:
    git_dir = GitRepository(cache, str(origin)).cache_dir
    proc = subprocess.Popen(
        ["git", f"--git-dir={git_dir}", "archive", "--format=tar", commit], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        tar.extractall(dest, filter="data")
    if proc.wait() != 0:
        sys.exit("git archive failed")


# -- dulwich ---------------------------------------------------------------------------------


def dulwich_sync(cache: Path, origin: Path, trees: Path, client: Any) -> str:
    repo = Repo(str(cache)) if cache.exists() else Repo.init_bare(str(cache), mkdir=True)
    try:
        wanted = (b"refs/heads/", b"refs/tags/")

        def determine_wants(refs: dict[bytes, bytes], depth: int | None = None) -> list[bytes]:
            return list(
                {
                    sha
                    for name, sha in refs.items()
                    if name.startswith(wanted)
                    and not name.endswith(b"^{}")
                    and sha is not None
                    and sha not in repo.object_store
                }
            )

        result = client.fetch(str(origin), repo, determine_wants=determine_wants)
        for name, sha in result.refs.items():
            if name.startswith(wanted) and sha is not None and not name.endswith(b"^{}"):
                repo.refs[name] = sha
        commit = repo.refs[b"refs/heads/main"]
        dest = trees / commit.decode()
        if not dest.exists():
            dulwich_export(repo, commit, dest)
        return commit.decode()
    finally:
        repo.close()


def dulwich_export(repo: Any, commit: bytes, dest: Path) -> None:
    store = repo.object_store
    made: set[Path] = set()
    for entry in store.iter_tree_contents(repo[commit].tree):
        path = dest / entry.path.decode()
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        data = store[entry.sha].data
        if stat.S_ISLNK(entry.mode):
            os.symlink(data, path)
        else:
            path.write_bytes(data)
            if entry.mode & 0o111:
                path.chmod(0o755)


def dulwich_export_only(cache: Path, commit: str, dest: Path) -> None:
    repo = Repo(str(cache))
    try:
        dulwich_export(repo, commit.encode(), dest)
    finally:
        repo.close()


# -- measuring -------------------------------------------------------------------------------


def timed(fn: Callable[..., object], *args: Any, expect: str | None = None) -> float:
    t0 = time.perf_counter()
    got = fn(*args)
    took = time.perf_counter() - t0
    if expect is not None and got != expect:
        sys.exit(f"resolved {got}, not {expect}")
    return took


def bench_size(root: Path, files: int, runs: int) -> dict[str, dict[str, list[float]]]:
    origin = make_origin(root, files)
    clients: dict[str, Any] = {}
    if dulwich is not None:
        clients["dulwich (local, in-process)"] = LocalGitClient()
        clients["dulwich (git protocol)"] = SubprocessGitClient()
    first: dict[str, list[float]] = {"git": [], **{name: [] for name in clients}}
    steady: dict[str, list[float]] = {"git": [], **{name: [] for name in clients}}
    export: dict[str, list[float]] = {"git read-tree -u": [], "git archive | tarfile": []}
    if dulwich is not None:
        export["dulwich blobs"] = []
    for n in range(runs):
        initial = git(origin, "rev-parse", "HEAD")
        out = root / f"round-{n}"
        out.mkdir()
        # (a) first use, each in a cache of its own
        first["git"].append(timed(git_sync, out / "git", origin, expect=initial))
        for i, (name, client) in enumerate(clients.items()):
            cache, trees = out / f"dulwich-{i}" / "repo.git", out / f"dulwich-{i}" / "trees"
            trees.mkdir(parents=True)
            first[name].append(timed(dulwich_sync, cache, origin, trees, client, expect=initial))
        # (b) one new commit, then fetch + resolve + export into the warm caches
        head = new_commit(origin, n)
        steady["git"].append(timed(git_sync, out / "git", origin, expect=head))
        for i, (name, client) in enumerate(clients.items()):
            cache, trees = out / f"dulwich-{i}" / "repo.git", out / f"dulwich-{i}" / "trees"
            steady[name].append(timed(dulwich_sync, cache, origin, trees, client, expect=head))
        # export alone, of the commit the git cache holds
        export["git read-tree -u"].append(
            timed(git_read_tree, out / "git", origin, head, out / "x-read-tree")
        )
        export["git archive | tarfile"].append(
            timed(git_archive_tarfile, out / "git", origin, head, out / "x-archive")
        )
        if dulwich is not None:
            cache = out / "dulwich-0" / "repo.git"
            export["dulwich blobs"].append(
                timed(dulwich_export_only, cache, head, out / "x-dulwich")
            )
    return {
        "(a) first: init + fetch + resolve + export": first,
        "(b) new commit: fetch + resolve + export": steady,
        "export alone (commit in the cache)": export,
    }


def report(files: int, runs: int, results: dict[str, dict[str, list[float]]]) -> None:
    print(f"{files:,} files, {runs} interleaved rounds (median ms, min ms, x the first row):")
    for scenario, times in results.items():
        print(f"  {scenario}")
        base = statistics.median(next(iter(times.values())))
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"    {name:<30}{med * 1000:>9.0f}{min(ts) * 1000:>9.0f}{med / base:>8.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--files", default="1000,10000", help="repository sizes, comma-separated")
    args = ap.parse_args()
    print(f"git: {subprocess.run(['git', '--version'], capture_output=True, text=True).stdout}")
    if dulwich is None:
        print("dulwich is not installed (.venv/bin/pip install dulwich): measuring git only\n")
    else:
        print(f"dulwich {'.'.join(map(str, dulwich.__version__))}\n")
    for files in (int(f) for f in args.files.split(",")):
        with tempfile.TemporaryDirectory(prefix="haplane-bench-gitops-") as tmp:
            report(files, args.runs, bench_size(Path(tmp), files, args.runs))
            print(f"  (removing {tmp}: not timed)\n", flush=True)
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
