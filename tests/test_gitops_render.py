"""haplane.gitops.render: plain directories (documents, Lists, order, hidden files), kustomize
bases and overlays through `kubectl kustomize`, and every refusal naming the file at fault."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from haplane.gitops import render as render_module
from haplane.gitops.render import RenderError, object_key, render


def write(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    return root


def cm(name: str, namespace: str | None = None, **data: str) -> str:
    ns = f"\n  namespace: {namespace}" if namespace else ""
    body = "".join(f"\n  {k}: {v}" for k, v in data.items())
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}{ns}\ndata:{body or ' {}'}\n"


def names(objects: list[dict[str, Any]]) -> list[str]:
    return [o["metadata"]["name"] for o in objects]


def test_object_key() -> None:
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}
    assert object_key(deployment) == ("apps", "Deployment", "", "web")
    namespaced = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "a", "namespace": "n"},
    }
    assert object_key(namespaced) == ("", "ConfigMap", "n", "a")


async def test_a_plain_directory_in_path_order(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "deploy/b.yaml": "---\n" + cm("b1") + "---\n---\n" + cm("b2", "team") + "...\n",
            "deploy/app.yaml": cm("app-file"),
            "deploy/app/x.yml": cm("app-dir"),  # before app.yaml, as kubectl apply -R reads
            "deploy/nested/deeper/c.json": (
                '{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "c"}}'
            ),
            "deploy/list.yaml": (
                "apiVersion: v1\nkind: List\nitems:\n"
                "- {apiVersion: v1, kind: Secret, metadata: {name: l1}}\n"
                "- {apiVersion: v1, kind: Secret, metadata: {name: l2}}\n"
            ),
            "deploy/cms.yaml": (
                "apiVersion: v1\nkind: ConfigMapList\nitems:\n"
                "- {apiVersion: v1, kind: ConfigMap, metadata: {name: l3}}\n"
            ),
            "deploy/empty.yaml": "# nothing here\n",
            "deploy/.hidden/h.yaml": cm("hidden-dir"),
            "deploy/.h.yaml": cm("hidden-file"),
            "deploy/README.md": "not a manifest",
            "deploy/values.txt": cm("not-yaml"),
            "elsewhere.yaml": cm("outside-path"),
        },
    )
    objects = await render(tmp_path, "deploy")
    assert names(objects) == ["app-dir", "app-file", "b1", "b2", "l3", "l1", "l2", "c"]
    assert objects[3]["metadata"]["namespace"] == "team"
    assert objects[-1]["kind"] == "Deployment"


async def test_yaml_is_read_as_kubernetes_reads_it(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": cm("dates", day="2024-01-01", count="3", enabled="yes")})
    (obj,) = await render(tmp_path, ".")
    assert obj["data"] == {"day": "2024-01-01", "count": 3, "enabled": True}


BASE = {
    "deploy/base/kustomization.yaml": "resources:\n- namespace.yaml\n- settings.yaml\n",
    "deploy/base/namespace.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n",
    "deploy/base/settings.yaml": cm("settings", "shop", level="info"),
    "deploy/overlays/dev/kustomization.yaml": (
        "resources:\n- ../../base\nnamePrefix: dev-\nlabels:\n- pairs:\n    env: dev\n"
    ),
    "deploy/overlays/prod/kustomization.yaml": (
        "resources:\n- ../../base\nnamePrefix: prod-\nlabels:\n- pairs:\n    env: prod\n"
        "patches:\n- target:\n    kind: ConfigMap\n    name: settings\n"
        "  patch: |-\n    - op: replace\n      path: /data/level\n      value: warn\n"
    ),
    "deploy/overlays/plain/cm.yaml": cm("not-kustomized"),
}


async def test_a_kustomize_base_and_two_overlays(tmp_path: Path) -> None:
    write(tmp_path, BASE)
    base = await render(tmp_path, "deploy/base")
    assert [(o["kind"], o["metadata"]["name"]) for o in base] == [
        ("Namespace", "shop"),
        ("ConfigMap", "settings"),
    ]

    dev = await render(tmp_path, "deploy/overlays", "dev")
    assert [(o["kind"], o["metadata"]["name"]) for o in dev] == [
        ("Namespace", "shop"),  # kustomize prefixes no Namespace
        ("ConfigMap", "dev-settings"),
    ]
    assert all(o["metadata"]["labels"] == {"env": "dev"} for o in dev)
    assert dev[1]["data"] == {"level": "info"}

    prod = await render(tmp_path, "deploy/base", "../overlays/prod")  # stays in the root
    assert names(prod) == ["shop", "prod-settings"]
    assert prod[1]["data"] == {"level": "warn"}
    assert prod[1]["metadata"]["namespace"] == "shop"
    assert all(o["metadata"]["labels"] == {"env": "prod"} for o in prod)


async def test_an_overlay_needs_a_kustomization(tmp_path: Path) -> None:
    write(tmp_path, BASE)
    with pytest.raises(RenderError, match=r"overlay 'plain' has no kustomization\.yaml") as caught:
        await render(tmp_path, "deploy/overlays", "plain")
    assert caught.value.file == "deploy/overlays/plain"
    # without an overlay the same directory is plain manifests
    assert names(await render(tmp_path, "deploy/overlays/plain")) == ["not-kustomized"]


async def test_kustomizes_own_message_for_an_invalid_kustomization(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "app/kustomization.yml": "resources:\n- here.yaml\n- missing.yaml\n",
            "app/here.yaml": cm("x"),
        },
    )
    with pytest.raises(RenderError) as caught:
        await render(tmp_path, "app")
    message = str(caught.value)
    assert message.startswith("app: kustomize failed: accumulating resources")
    assert "app/missing.yaml" in message
    assert str(tmp_path) not in message  # paths shown relative to the repository
    assert "run.go" not in message  # klog's header left out
    assert caught.value.file == "app"


async def test_broken_yaml_names_the_file_and_the_line(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "ok.yaml": cm("fine"),
            "sub/broken.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n",
        },
    )
    with pytest.raises(RenderError) as caught:
        await render(tmp_path, "")
    assert str(caught.value).startswith("sub/broken.yaml: line 5: ")
    assert (caught.value.file, caught.value.line) == ("sub/broken.yaml", 5)


async def test_broken_json_names_the_file_and_the_line(tmp_path: Path) -> None:
    write(tmp_path, {"a.json": '{\n  "apiVersion": "v1",\n  "kind": \n}\n'})
    with pytest.raises(RenderError, match=r"^a\.json: line 4: Expecting value") as caught:
        await render(tmp_path, ".")
    assert caught.value.line == 4


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("apiVersion: v1\nmetadata: {name: a}\n", "kind is missing"),
        ("kind: ConfigMap\nmetadata: {name: a}\n", "apiVersion is missing"),
        ("apiVersion: 1\nkind: ConfigMap\nmetadata: {name: a}\n", "apiVersion is missing"),
        ("apiVersion: v1\nkind: ConfigMap\n", "metadata is missing"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ''}\n", "metadata.name is missing"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: 7}\n", "metadata.name is missing"),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: [x]}\n",
            "metadata.namespace must be a string",
        ),
        ("- just\n- a list\n", "not a Kubernetes object"),
        ("apiVersion: v1\nkind: List\nitems: [{kind: Secret}]\n", "item 1: apiVersion is missing"),
    ],
)
async def test_an_invalid_object_names_the_file(
    tmp_path: Path, document: str, problem: str
) -> None:
    write(
        tmp_path, {"apps/good.yaml": cm("good"), "apps/bad.yaml": cm("first") + "---\n" + document}
    )
    with pytest.raises(RenderError) as caught:
        await render(tmp_path, "apps")
    assert str(caught.value).startswith("apps/bad.yaml (document 2")
    assert problem in str(caught.value)
    assert caught.value.file == "apps/bad.yaml"


async def test_a_null_namespace_is_no_namespace(tmp_path: Path) -> None:
    write(
        tmp_path, {"a.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: }\n"}
    )
    (obj,) = await render(tmp_path, ".")
    assert object_key(obj) == ("", "ConfigMap", "", "a")


async def test_a_duplicate_object_names_both_files(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "a/one.yaml": cm("same", "ns"),
            "b/two.yaml": cm("other", "ns") + "---\n" + cm("same", "ns"),
            "c/three.yaml": cm("same"),  # another namespace: another object
        },
    )
    with pytest.raises(RenderError) as caught:
        await render(tmp_path, ".")
    assert str(caught.value) == (
        "ConfigMap ns/same is declared twice: in a/one.yaml and in b/two.yaml (document 2)"
    )
    assert caught.value.file == "b/two.yaml"


async def test_the_same_name_in_another_group_or_version(tmp_path: Path) -> None:
    job = "kind: Job\nmetadata: {name: j}\n"
    write(tmp_path, {"a.yaml": f"apiVersion: batch/v1\n{job}---\napiVersion: other.io/v1\n{job}"})
    assert len(await render(tmp_path, ".")) == 2
    write(tmp_path, {"b.yaml": f"apiVersion: batch/v2\n{job}"})  # another version, same object
    with pytest.raises(RenderError, match=r"Job.batch j is declared twice"):
        await render(tmp_path, ".")


@pytest.mark.parametrize(
    ("path", "overlay", "problem"),
    [
        ("..", None, "path '..' leaves the repository"),
        ("apps/../../x", None, "leaves the repository"),
        ("apps", "../../..", "overlay '../../..' leaves the repository"),
        ("/etc", None, "path '/etc' must be relative"),
        ("apps", "/etc", "overlay '/etc' must be relative"),
        ("escape", None, "path 'escape' resolves outside the repository (through a symlink)"),
        ("apps", "../escape", "resolves outside the repository"),
        ("nowhere", None, "path 'nowhere' does not exist or is not a directory"),
        ("apps/a.yaml", None, "is not a directory"),
        ("apps", "prod", "overlay 'prod' under path 'apps' does not exist"),
    ],
)
async def test_paths_outside_the_repository_are_refused(
    tmp_path: Path, path: str, overlay: str | None, problem: str
) -> None:
    outside = write(tmp_path / "outside", {"secret.yaml": cm("secret")})
    root = write(tmp_path / "repo", {"apps/a.yaml": cm("a")})
    (root / "escape").symlink_to(outside)
    with pytest.raises(RenderError) as caught:
        await render(root, path, overlay)
    assert problem in str(caught.value)


async def test_a_symlinked_file_must_stay_in_the_repository(tmp_path: Path) -> None:
    outside = write(tmp_path / "outside", {"secret.yaml": cm("secret")})
    root = write(tmp_path / "repo", {"apps/a.yaml": cm("a"), "shared/b.yaml": cm("b")})
    (root / "apps" / "b.yaml").symlink_to("../shared/b.yaml")
    assert names(await render(root, "apps")) == ["a", "b"]
    (root / "apps" / "c.yaml").symlink_to(outside / "secret.yaml")
    with pytest.raises(RenderError, match=r"^apps/c.yaml is a symlink to outside the repository"):
        await render(root, "apps")


# The kustomization graph is checked before kustomize runs: kustomize reads bases (directories)
# from anywhere and fetches remote ones, so a repository could render another one's tree.


@pytest.fixture
def kustomize_runs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """kustomize stood in for: the directories it would have built (a refusal builds none)."""
    built: list[Path] = []

    async def fake(real_root: Path, directory: Path, timeout: float) -> bytes:
        built.append(directory)
        raise AssertionError(f"kustomize ran on {directory}")

    monkeypatch.setattr(render_module, "_kustomize", fake)
    return built


OUTSIDE = {
    "outside/kustomization.yaml": "resources:\n- secret.yaml\n",
    "outside/secret.yaml": cm("other-repository"),
    "outside/secret.txt": "password\n",
}


@pytest.mark.parametrize(
    ("kustomization", "refusal"),
    [
        ("resources:\n- ../../outside\n", "resources entry '../../outside' leaves"),
        ("bases:\n- ../../outside\n", "bases entry '../../outside' leaves"),
        ("components:\n- ../../outside\n", "components entry '../../outside' leaves"),
        ("Resources:\n- ../../outside\n", "resources entry '../../outside' leaves"),
        ("resources:\n- sub/../../../outside\n", "resources entry 'sub/../../../outside' leaves"),
        ("generators:\n- ../../outside\n", "generators entry '../../outside' leaves"),
        ("transformers:\n- ../../outside\n", "transformers entry '../../outside' leaves"),
        (
            "patches:\n- path: ../../outside/secret.yaml\n",
            "patches[0].path entry '../../outside/secret.yaml' leaves",
        ),
        (
            "patches:\n- PATH: ../../outside/secret.yaml\n",
            "patches[0].path entry '../../outside/secret.yaml' leaves",
        ),
        (
            "patchesStrategicMerge:\n- ../../outside/secret.yaml\n",
            "patchesStrategicMerge entry '../../outside/secret.yaml' leaves",
        ),
        (
            "secretGenerator:\n- name: s\n  envs:\n  - ../../outside/secret.txt\n",
            "secretGenerator[0].envs entry '../../outside/secret.txt' leaves",
        ),
        (
            "configMapGenerator:\n- name: c\n  env: ../../outside/secret.txt\n",
            "configMapGenerator[0].env entry '../../outside/secret.txt' leaves",
        ),
        ("openapi:\n  path: ../../outside/secret.yaml\n", "openapi.path entry"),
        ("crds:\n- ../../outside/secret.yaml\n", "crds entry '../../outside/secret.yaml'"),
        (
            "replacements:\n- path: ../../outside/secret.yaml\n",
            "replacements[0].path entry '../../outside/secret.yaml' leaves",
        ),
        ("resources:\n- /etc\n", "resources entry '/etc' is an absolute path"),
    ],
)
async def test_a_kustomization_reaching_outside_the_repository_is_refused(
    tmp_path: Path, kustomize_runs: list[Path], kustomization: str, refusal: str
) -> None:
    write(tmp_path, OUTSIDE)
    root = write(tmp_path / "repo", {"app/kustomization.yaml": kustomization})
    with pytest.raises(RenderError) as caught:
        await render(root, "app")
    assert str(caught.value).startswith(f"app/kustomization.yaml: {refusal}")
    assert caught.value.file == "app/kustomization.yaml"
    assert kustomize_runs == []


async def test_a_base_outside_the_repository_is_not_rendered(tmp_path: Path) -> None:
    """With kustomize itself: it would render the other tree's objects (its load restrictor
    keeps files, not bases, in the kustomization's directory)."""
    write(tmp_path, OUTSIDE)
    root = write(
        tmp_path / "repo",
        {"app/kustomization.yaml": "resources:\n- here.yaml\n- ../../outside\n"},
    )
    write(root, {"app/here.yaml": cm("here")})
    with pytest.raises(RenderError, match=r"'\.\./\.\./outside' leaves the repository"):
        await render(root, "app")


async def test_a_base_in_a_nested_kustomization_is_checked_too(
    tmp_path: Path, kustomize_runs: list[Path]
) -> None:
    write(tmp_path, OUTSIDE)
    root = write(
        tmp_path / "repo",
        {
            "overlays/prod/kustomization.yaml": "resources:\n- ../../base\n",
            "base/kustomization.yaml": "resources:\n- ok.yaml\n- ../../outside\n",
            "base/ok.yaml": cm("ok"),
        },
    )
    with pytest.raises(RenderError) as caught:
        await render(root, "overlays", "prod")
    assert str(caught.value).startswith(
        "base/kustomization.yaml: resources entry '../../outside' leaves the repository"
    )
    assert caught.value.file == "base/kustomization.yaml"
    assert kustomize_runs == []


async def test_a_symlinked_directory_to_outside_is_refused(
    tmp_path: Path, kustomize_runs: list[Path]
) -> None:
    outside = write(tmp_path, OUTSIDE) / "outside"
    root = write(tmp_path / "repo", {"app/kustomization.yaml": "resources:\n- ../shared\n"})
    (root / "shared").symlink_to(outside)  # in the repository, to outside it
    with pytest.raises(RenderError) as caught:
        await render(root, "app")
    assert str(caught.value) == (
        "app/kustomization.yaml: resources entry '../shared' resolves outside the repository"
        " (through a symlink)"
    )
    assert caught.value.file == "app/kustomization.yaml"
    assert kustomize_runs == []


async def test_a_symlinked_kustomization_to_outside_is_refused(
    tmp_path: Path, kustomize_runs: list[Path]
) -> None:
    outside = write(tmp_path, OUTSIDE) / "outside"
    root = write(tmp_path / "repo", {"app/kustomization.yaml": "resources:\n- ../base\n"})
    (root / "base").mkdir()
    (root / "base" / "kustomization.yaml").symlink_to(outside / "kustomization.yaml")
    with pytest.raises(RenderError, match=r"^base/kustomization\.yaml is a symlink to outside"):
        await render(root, "app")
    assert kustomize_runs == []


@pytest.mark.parametrize(
    "entry",
    [
        "https://github.com/example/repo//deploy?ref=v1",
        "github.com/example/repo/deploy?ref=v1",
        "git@github.com:example/repo.git//deploy",
        "ssh://git@example.com/example/repo.git",
        "file:///srv/git/other.git",
        "git::https://example.com/example/repo",
        "example.com/example/repo//deploy",
        "me@example.com:example/repo",
    ],
)
async def test_a_remote_base_is_refused_without_fetching(
    tmp_path: Path, kustomize_runs: list[Path], entry: str
) -> None:
    write(tmp_path, {"app/kustomization.yaml": f"resources:\n- {entry}\n"})
    with pytest.raises(RenderError) as caught:
        await render(tmp_path, "app")
    assert str(caught.value) == (
        f"app/kustomization.yaml: resources entry {entry!r} is remote: remote bases are not"
        " supported (the repository must hold what it renders)"
    )
    assert kustomize_runs == []  # nothing ran that could fetch it


async def test_a_remote_file_is_refused(tmp_path: Path, kustomize_runs: list[Path]) -> None:
    write(
        tmp_path,
        {
            "app/kustomization.yaml": (
                "configMapGenerator:\n- name: c\n  files:\n  - key=https://example.com/x.txt\n"
            )
        },
    )
    with pytest.raises(
        RenderError, match=r"files entry 'key=https://example\.com/x\.txt' is remote"
    ):
        await render(tmp_path, "app")
    assert kustomize_runs == []


async def test_a_generator_file_escaping_after_its_key_is_refused(
    tmp_path: Path, kustomize_runs: list[Path]
) -> None:
    write(tmp_path, {"secret.txt": "password\n"})
    root = write(
        tmp_path / "repo",
        {
            "app/kustomization.yaml": (
                "configMapGenerator:\n- name: c\n  files:\n  - ok.txt\n  - key=../../secret.txt\n"
            ),
            "app/ok.txt": "fine\n",
        },
    )
    with pytest.raises(RenderError) as caught:
        await render(root, "app")
    assert str(caught.value) == (
        "app/kustomization.yaml: configMapGenerator[0].files entry 'key=../../secret.txt'"
        " leaves the repository (through '..')"
    )
    assert caught.value.file == "app/kustomization.yaml"
    assert kustomize_runs == []


async def test_kustomizations_referring_to_each_other_are_a_cycle(
    tmp_path: Path, kustomize_runs: list[Path]
) -> None:
    write(
        tmp_path,
        {
            "app/a/kustomization.yaml": "resources:\n- ../b\n",
            "app/b/kustomization.yaml": "resources:\n- ../a\n",
        },
    )
    with pytest.raises(RenderError) as caught:
        await render(tmp_path, "app/a")
    assert str(caught.value) == (
        "app/b/kustomization.yaml: resources entry '../a' makes a cycle of kustomizations:"
        " app/a -> app/b -> app/a"
    )
    assert caught.value.file == "app/b/kustomization.yaml"
    assert kustomize_runs == []


async def test_helm_charts_are_refused(tmp_path: Path, kustomize_runs: list[Path]) -> None:
    write(
        tmp_path,
        {"app/kustomization.yaml": "helmCharts:\n- name: x\n  repo: https://charts.example\n"},
    )
    with pytest.raises(RenderError, match=r"^app/kustomization\.yaml: helmCharts: helm charts"):
        await render(tmp_path, "app")
    assert kustomize_runs == []


@pytest.mark.parametrize(
    ("kustomization", "line", "problem"),
    [
        ("resources:\n- a.yaml\nnamePrefix: [x\n", 4, "expected ',' or ']'"),
        ("resources:\n- a.yaml\nRESOURCES: []\nresources:\n- b.yaml\n", 4, "the key 'resources'"),
    ],
)
async def test_a_kustomization_that_does_not_parse_names_the_file_and_the_line(
    tmp_path: Path, kustomize_runs: list[Path], kustomization: str, line: int, problem: str
) -> None:
    write(tmp_path, {"app/kustomization.yml": kustomization})
    with pytest.raises(RenderError) as caught:
        await render(tmp_path, "app")
    assert str(caught.value).startswith(f"app/kustomization.yml: line {line}: ")
    assert problem in str(caught.value)
    assert (caught.value.file, caught.value.line) == ("app/kustomization.yml", line)
    assert kustomize_runs == []


async def test_bases_overlays_and_files_inside_the_repository_still_render(
    tmp_path: Path,
) -> None:
    write(tmp_path / "outside", OUTSIDE)
    root = write(
        tmp_path / "repo",
        {
            **BASE,
            "deploy/overlays/full/kustomization.yaml": (
                "resources:\n- ../../base\n- ../../shared-link\n"
                "components:\n- ../../components/tier\n"
                "configMapGenerator:\n- name: files\n  files:\n  - level=level.txt\n  - other.txt\n"
                "  envs:\n  - app.env\n"
                "patchesStrategicMerge:\n- |-\n  apiVersion: v1\n  kind: ConfigMap\n"
                "  metadata:\n    name: settings\n    namespace: shop\n  data:\n    extra: yes\n"
                "patches:\n- path: patch.yaml\n  target:\n    kind: ConfigMap\n    name: shared\n"
                "generatorOptions:\n  disableNameSuffixHash: true\n"
            ),
            "deploy/overlays/full/level.txt": "debug",
            "deploy/overlays/full/other.txt": "x",
            "deploy/overlays/full/app.env": "A=1\n",
            "deploy/overlays/full/patch.yaml": (
                "- op: add\n  path: /data/patched\n  value: 'true'\n"
            ),
            "deploy/shared/kustomization.yaml": "resources:\n- shared.yaml\n",
            "deploy/shared/shared.yaml": cm("shared", "shop"),
            "deploy/components/tier/kustomization.yaml": (
                "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n"
                "labels:\n- pairs:\n    tier: web\n"
            ),
        },
    )
    (root / "deploy" / "shared-link").symlink_to("shared")  # a symlink inside the repository
    objects = await render(root, "deploy/overlays/full")
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("Namespace", "shop"),
        ("ConfigMap", "settings"),
        ("ConfigMap", "shared"),
        ("ConfigMap", "files"),
    ]
    _, settings, shared, files = objects
    assert files["data"] == {"level": "debug", "other.txt": "x", "A": "1"}
    assert settings["data"] == {"level": "info", "extra": "yes"}
    assert shared["data"] == {"patched": "true"}
    assert all(o["metadata"]["labels"] == {"tier": "web"} for o in objects)
