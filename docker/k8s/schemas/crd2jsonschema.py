#!/usr/bin/env python3
"""Converts CustomResourceDefinitions into the JSON schemas kubeconform reads.

    crd2jsonschema.py OUT_DIR CRD.yaml...

For every served version of every CRD it writes
OUT_DIR/<group>/<kind>_<version>.json (kind in lower case: kubeconform's
`{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}` layout), from the
version's openAPIV3Schema, made strict the way Kubernetes' own strict schemas
are: an object that lists its properties accepts no others, unless it says
`x-kubernetes-preserve-unknown-fields` or has `additionalProperties`.
Descriptions are dropped (they are most of the bytes). The API server prunes
unknown fields instead of refusing them; failing on them here catches a
misspelt field that would otherwise be silently dropped.
"""
import json
import os
import sys

import yaml


def convert(node):
    if isinstance(node, list):
        return [convert(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("description", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
                   "x-kubernetes-map-type", "x-kubernetes-validations"):
            continue
        out[key] = convert(value)
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["oneOf"] = [{"type": "string"}, {"type": "integer"}]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    if out.pop("x-kubernetes-embedded-resource", False):
        preserve = True
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def main():
    out_dir, paths = sys.argv[1], sys.argv[2:]
    for path in paths:
        for crd in yaml.safe_load_all(open(path)):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            group, kind = spec["group"], spec["names"]["kind"].lower()
            for version in spec["versions"]:
                if not version.get("served", True):
                    continue
                schema = convert(version["schema"]["openAPIV3Schema"])
                schema["$schema"] = "http://json-schema.org/draft-07/schema#"
                target = os.path.join(out_dir, group, f"{kind}_{version['name']}.json")
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "w") as f:
                    json.dump(schema, f, indent=1, sort_keys=True)
                    f.write("\n")
                print(target)


if __name__ == "__main__":
    main()
