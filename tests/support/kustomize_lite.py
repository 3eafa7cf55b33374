"""Render a kustomize overlay offline, for the subset deploy/kubernetes uses (no kustomize binary here).

Supported: `resources` (YAML files and directories holding a kustomization.yaml), `images`
(newName, newTag) and `patches` given by `path` (a strategic-merge patch: the target is the patch's
own kind and name). Anything else in a kustomization.yaml is an error, so a manifest never relies
on a feature this renderer silently skips. Strategic merge as Kubernetes does it for the lists our
patches touch: `containers`, `env`, `volumes`, `volumeMounts` merge by `name`, `ports` by
`containerPort`; other lists (tolerations, HPA metrics) are replaced; maps merge recursively.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Object = dict[str, Any]

SUPPORTED = frozenset({"apiVersion", "kind", "resources", "images", "patches"})
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "name",
    "ports": "containerPort",
}


class Unsupported(ValueError):
    """The kustomization uses something this renderer does not implement."""


def load_all(path: Path) -> list[Object]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(directory: Path) -> list[Object]:
    """The objects `kustomize build directory` would print (in resource order)."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise Unsupported(f"{directory}/kustomization.yaml: unsupported fields {sorted(unknown)}")
    objects: list[Object] = []
    for entry in spec.get("resources", []):
        target = directory / entry
        objects += render(target) if target.is_dir() else load_all(target)
    for patch_entry in spec.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise Unsupported(f"{directory}: only `patches: - path: ...` is supported, got {patch_entry}")
        for patch in load_all(directory / patch_entry["path"]):
            apply_patch(objects, patch)
    for image in spec.get("images", []):
        set_image(objects, image)
    return objects


def apply_patch(objects: list[Object], patch: Object) -> None:
    key = (patch["kind"], patch["metadata"]["name"])
    matches = [o for o in objects if (o["kind"], o["metadata"]["name"]) == key]
    if len(matches) != 1:
        raise Unsupported(f"patch for {key} matches {len(matches)} objects")
    merged = strategic_merge(matches[0], patch)
    objects[objects.index(matches[0])] = merged


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        if "$patch" in patch:
            raise Unsupported("$patch directives are not supported")
        out = copy.deepcopy(base)
        for name, value in patch.items():
            out[name] = strategic_merge(base[name], value, name) if name in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        out_list = copy.deepcopy(base)
        for item in patch:
            same = [i for i, old in enumerate(out_list) if old.get(key) == item.get(key)]
            if same:
                out_list[same[0]] = strategic_merge(out_list[same[0]], item)
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(patch)


def set_image(objects: list[Object], image: Object) -> None:
    """kustomize's `images`: every container image named `name` (any tag) gets newName/newTag."""
    if set(image) - {"name", "newName", "newTag"}:
        raise Unsupported(f"images: only name, newName and newTag are supported, got {image}")
    for container in containers(objects):
        name, _, tag = container["image"].partition(":")
        if name == image["name"]:
            new_tag = image.get("newTag", tag)
            container["image"] = image.get("newName", name) + (f":{new_tag}" if new_tag else "")


def containers(objects: list[Object]) -> list[Object]:
    found: list[Object] = []
    for obj in objects:
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        found += pod.get("initContainers", []) + pod.get("containers", [])
    return found
