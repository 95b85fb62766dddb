"""import json, sys
from jsonschema import Draft202012Validator
data = json.load(open(sys.argv[1]))
comps = dict(data["doc"]["components"])
# Parts of another schema's allOf (serde(flatten)) stay open; the whole they are part of is closed.
parts = {part["$ref"].rsplit("/", 1)[1] for s in comps["schemas"].values()
         for part in s.get("allOf", []) if "$ref" in part}
comps["schemas"] = {
    name: dict(s, unevaluatedProperties=False)
    if ("properties" in s or "allOf" in s) and "additionalProperties" not in s
    and name not in parts else s
    for name, s in comps["schemas"].items()
}
failed = 0
for path, method, status, body in data["samples"]:
    responses = data["doc"]["paths"][path][method]["responses"]
    response = responses.get(str(status))
    if response is None:
        print(f"{method} {path}: {status} is not documented"); failed += 1; continue
    if body is None:
        continue
    schema = response["content"]["application/json"]["schema"]
    for e in Draft202012Validator(dict(schema, components=comps)).iter_errors(body):
        print(f"{method} {path} {status}: {e.message} at {list(e.absolute_path)}"); failed += 1
print("samples:", len(data["samples"]), "failed:", failed)
sys.exit(1 if failed else 0)
"""

import json
import sys

from jsonschema import Draft202012Validator


def closed(components):
    """The component schemas, each object closed unless it is a part of another's allOf."""
    schemas = components["schemas"]
    parts = {
        part["$ref"].rsplit("/", 1)[1]
        for schema in schemas.values()
        for part in schema.get("allOf", [])
        if "$ref" in part
    }
    return {
        name: dict(schema, unevaluatedProperties=False)
        if ("properties" in schema or "allOf" in schema)
        and "additionalProperties" not in schema
        and name not in parts
        else schema
        for name, schema in schemas.items()
    }


def main(file):
    with open(file) as f:
        data = json.load(f)
    doc = data["doc"]
    components = dict(doc["components"], schemas=closed(doc["components"]))
    failed = 0
    for path, method, status, body in data["samples"]:
        response = doc["paths"][path][method]["responses"].get(str(status))
        if response is None:
            print(f"{method} {path}: {status} is not documented")
            failed += 1
            continue
        if body is None:
            continue
        schema = response["content"]["application/json"]["schema"]
        validator = Draft202012Validator(dict(schema, components=components))
        for e in validator.iter_errors(body):
            print(f"{method} {path} {status}: {e.message} at {list(e.absolute_path)}")
            failed += 1
    print("samples:", len(data["samples"]), "failed:", failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
