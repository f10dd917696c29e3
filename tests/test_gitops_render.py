"""haplane.gitops.render: plain directories (documents, Lists, order, hidden files), kustomize
bases and overlays through `kubectl kustomize`, and every refusal naming the file at fault."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

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
