"""haplane.gitops.source: refs resolved against real repositories made with the git binary
(branches, tags, ids, force pushes, errors) and commits exported, reused and pruned."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from haplane.gitops.source import GitError, GitRepository

GIT = [
    "git",
    "-c",
    "user.name=Test",
    "-c",
    "user.email=test@example.com",
    "-c",
    "init.defaultBranch=main",
    "-c",
    "commit.gpgSign=false",
    "-c",
    "tag.gpgSign=false",
]


def git(repo: Path, *args: str) -> str:
    done = subprocess.run([*GIT, "-C", str(repo), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str = "change") -> str:
    for name, content in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(content)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    repo = tmp_path / "origin"
    repo.mkdir()
    git(repo, "init", "-q")
    commit(repo, {"app/cm.yaml": "kind: ConfigMap\n"}, "first")
    return repo


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


async def test_branch_tags_and_commit_ids(origin: Path, cache: Path) -> None:
    first = git(origin, "rev-parse", "HEAD")
    git(origin, "tag", "light")
    git(origin, "tag", "-a", "annotated", "-m", "a release")
    second = commit(origin, {"app/other.yaml": "x: 1\n"})
    repo = GitRepository(cache, str(origin))

    assert await repo.resolve("main") == second
    assert await repo.resolve("refs/heads/main") == second
    assert await repo.resolve("light") == first
    # peeled: the commit, not the tag object
    assert git(origin, "rev-parse", "annotated") != first
    assert await repo.resolve("annotated") == first
    assert await repo.resolve(first) == first
    assert await repo.resolve(first[:8]) == first
    assert await repo.resolve(first[:8].upper()) == first
    assert repo.cache_dir.parent == cache / "repos"
    assert (repo.cache_dir / "HEAD").is_file()


async def test_a_branch_wins_over_a_tag_of_the_same_name(origin: Path, cache: Path) -> None:
    first = git(origin, "rev-parse", "HEAD")
    git(origin, "tag", "stable")
    git(origin, "branch", "stable")
    git(origin, "checkout", "-q", "stable")
    newer = commit(origin, {"b.yaml": "b: 1\n"})
    repo = GitRepository(cache, str(origin))
    assert await repo.resolve("stable") == newer
    assert await repo.resolve("refs/tags/stable") == first


async def test_a_new_commit_is_seen_on_the_next_resolve(origin: Path, cache: Path) -> None:
    repo = GitRepository(cache, str(origin))
    before = await repo.resolve("main")
    after = commit(origin, {"app/cm.yaml": "kind: ConfigMap\ndata: {}\n"})
    assert after != before
    assert await repo.resolve("main") == after


async def test_a_force_pushed_branch_and_a_deleted_tag_are_followed(
    origin: Path, cache: Path
) -> None:
    base = git(origin, "rev-parse", "HEAD")
    git(origin, "checkout", "-q", "-b", "feature")
    old = commit(origin, {"f.yaml": "old: 1\n"})
    git(origin, "tag", "gone")
    repo = GitRepository(cache, str(origin))
    assert await repo.resolve("feature") == old
    assert await repo.resolve("gone") == old

    git(origin, "reset", "-q", "--hard", base)  # history rewritten: old is no ancestor
    rewritten = commit(origin, {"f.yaml": "new: 1\n"})
    git(origin, "tag", "-d", "gone")
    assert await repo.resolve("feature") == rewritten
    with pytest.raises(GitError, match="'gone'"):
        await repo.resolve("gone")


async def test_an_unknown_ref_names_the_ref_and_some_branches(origin: Path, cache: Path) -> None:
    git(origin, "branch", "release-1")
    repo = GitRepository(cache, str(origin))
    with pytest.raises(GitError) as caught:
        await repo.resolve("no-such-branch")
    message = str(caught.value)
    assert "'no-such-branch'" in message
    assert str(origin) in message
    assert "branches: main, release-1" in message


@pytest.mark.parametrize("ref", ["", "-upload-pack=evil", "a..b", "main~1", "x y", "HEAD^"])
async def test_a_ref_that_is_no_name_is_refused_before_git_runs(
    origin: Path, cache: Path, ref: str
) -> None:
    repo = GitRepository(cache, str(origin))
    with pytest.raises(GitError, match="not a valid branch, tag or commit name"):
        await repo.resolve(ref)
    assert not repo.cache_dir.exists()


async def test_an_unreachable_repository_is_a_git_error(tmp_path: Path, cache: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(GitError) as caught:
        await GitRepository(cache, str(missing)).resolve("main")
    message = str(caught.value)
    assert message.startswith(f"git repository {missing}: fetching")
    assert "does not appear to be a git repository" in message


async def test_a_password_in_the_url_is_never_shown(cache: Path) -> None:
    url = "https://someone:s3cret-token@127.0.0.1:1/repo.git"  # port 1: refused at once
    with pytest.raises(GitError) as caught:
        await GitRepository(cache, url).resolve("main", timeout=20)
    assert "s3cret-token" not in str(caught.value)
    assert "someone:***@127.0.0.1:1" in str(caught.value)


async def test_a_file_url_and_a_relative_path(
    origin: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = git(origin, "rev-parse", "HEAD")
    assert await GitRepository(cache, origin.as_uri()).resolve("main") == head
    monkeypatch.chdir(origin.parent)
    relative = GitRepository(cache, "origin")
    assert relative.url == str(origin)
    assert await relative.resolve("main") == head


async def test_git_variables_of_the_callers_environment_are_ignored(
    origin: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = git(origin, "rev-parse", "HEAD")
    # as in a git hook: each would send git somewhere else
    monkeypatch.setenv("GIT_DIR", str(origin / "not-a-repository"))
    monkeypatch.setenv("GIT_OBJECT_DIRECTORY", str(origin / "no-objects-here"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(origin / "elsewhere.index"))
    repo = GitRepository(cache, str(origin))
    assert await repo.resolve("main") == head
    assert (await repo.checkout(head) / "app" / "cm.yaml").is_file()
    assert not (origin / "no-objects-here").exists()
    assert not (origin / "elsewhere.index").exists()


async def test_concurrent_resolves_are_serialised(
    origin: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = commit(origin, {"more.yaml": "m: 1\n"})
    repo = GitRepository(cache, str(origin))
    running, most = 0, 0
    run_git = repo._run_git

    async def counted(*args: Any, **kwargs: Any) -> tuple[int, bytes, bytes]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            return await run_git(*args, **kwargs)
        finally:
            running -= 1

    monkeypatch.setattr(repo, "_run_git", counted)
    assert await asyncio.gather(*(repo.resolve("main") for _ in range(6))) == [head] * 6
    assert most == 1


async def test_a_timeout_stops_git_and_says_so(origin: Path, cache: Path) -> None:
    repo = GitRepository(cache, str(origin))
    with pytest.raises(GitError, match=r"resolving 'main' timed out after 0.001 s"):
        await repo.resolve("main", timeout=0.001)
    assert await repo.resolve("main") == git(origin, "rev-parse", "HEAD")


async def test_a_hanging_remote_is_killed_at_the_timeout(cache: Path) -> None:
    closed = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):  # git's request; then nothing until git is gone
            pass
        closed.set()
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        repo = GitRepository(cache, f"git://127.0.0.1:{port}/repo.git")
        started = time.monotonic()
        with pytest.raises(GitError, match=r"timed out after 0.5 s \(git was stopped\)"):
            await repo.resolve("main", timeout=0.5)
        assert time.monotonic() - started < 5
        await asyncio.wait_for(closed.wait(), 5)  # the connection died with git
    finally:
        server.close()
        await server.wait_closed()


async def test_checkout_exports_the_tree_once_and_reuses_it(origin: Path, cache: Path) -> None:
    (origin / "run.sh").write_text("#!/bin/sh\n")
    (origin / "run.sh").chmod(0o755)
    (origin / "link.yaml").symlink_to("app/cm.yaml")
    head = commit(origin, {"app/nested/deep.yaml": "deep: true\n"})
    repo = GitRepository(cache, str(origin))
    assert await repo.resolve("main") == head

    tree = await repo.checkout(head)
    assert tree == cache / "trees" / repo.cache_dir.stem / head
    assert (tree / "app" / "cm.yaml").read_text() == "kind: ConfigMap\n"
    assert (tree / "app" / "nested" / "deep.yaml").read_text() == "deep: true\n"
    assert os.access(tree / "run.sh", os.X_OK)
    assert (tree / "link.yaml").read_text() == "kind: ConfigMap\n"
    assert not (tree / ".git").exists()
    assert sorted(p.name for p in (repo.trees_dir).iterdir()) == [head]  # no temporaries

    (tree / "marker").write_text("")  # only a reused tree still has it
    assert await repo.checkout(head) == tree
    assert (tree / "marker").exists()
    # another object for the same URL shares the cache and the tree
    assert await GitRepository(cache, str(origin)).checkout(head) == tree


async def test_only_the_newest_trees_are_kept(origin: Path, cache: Path) -> None:
    repo = GitRepository(cache, str(origin), keep_trees=2)
    commits = []
    for n in range(3):
        commits.append(commit(origin, {"n.yaml": f"n: {n}\n"}))
    await repo.resolve("main")
    trees = repo.trees_dir

    def age(sha: str, seconds: float) -> None:
        then = time.time() - seconds
        os.utime(trees / sha, (then, then))

    await repo.checkout(commits[0])
    age(commits[0], 300)
    await repo.checkout(commits[1])
    age(commits[1], 200)
    await repo.checkout(commits[0])  # used again: now the newest
    await repo.checkout(commits[2])  # a new export: the least recently used one goes
    assert sorted(p.name for p in trees.iterdir()) == sorted([commits[0], commits[2]])
    # and comes back when asked for again
    assert (await repo.checkout(commits[1]) / "n.yaml").read_text() == "n: 1\n"
    assert len(list(trees.iterdir())) == 2


async def test_checkout_refuses_unknown_commits_and_short_ids(origin: Path, cache: Path) -> None:
    repo = GitRepository(cache, str(origin))
    head = await repo.resolve("main")
    with pytest.raises(GitError, match="not in the cache"):
        await repo.checkout("0" * 40)
    with pytest.raises(GitError, match="full commit id"):
        await repo.checkout(head[:12])
    assert not (repo.trees_dir).exists() or not list((repo.trees_dir).iterdir())


async def test_a_symlink_out_of_the_tree_is_refused(origin: Path, cache: Path) -> None:
    (origin / "app" / "passwd.yaml").symlink_to("/etc/passwd")
    (origin / "up.yaml").symlink_to("../outside.yaml")
    head = commit(origin, {})
    repo = GitRepository(cache, str(origin))
    await repo.resolve("main")
    with pytest.raises(GitError) as caught:
        await repo.checkout(head)
    assert "app/passwd.yaml -> /etc/passwd" in str(caught.value)
    assert "up.yaml -> ../outside.yaml" in str(caught.value)
    assert list((repo.trees_dir).iterdir()) == []  # the temporary export is gone
