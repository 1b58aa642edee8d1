"""What the example-replay suite (test_example_replay.py) needs that is not about rsvault: Azure's two
specs and their `examples/` folders, the operation each example belongs to, and the comparison of an
answer with an example's response (status, headers, body shape checked against the spec's schema).

An example file is found through the spec's `x-ms-examples` (operationId → `./examples/…`); a file
that is not in the 2026-11-01 folder comes from the nearest older stable version's folder (see
spec/azure-spec/README.md). Schemas are resolved through `$ref` (also into common-types), `allOf` and
discriminators (`x-ms-discriminator-value`), so "a property the schema does not define" is judged on
the concrete type the answer names.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC_ROOT = Path(os.environ.get("AZURE_SPEC_DIR", REPO_ROOT / "spec/azure-spec/specification"))
SPECS = {
    "backup": "recoveryservicesbackup/resource-manager/Microsoft.RecoveryServices/RecoveryServicesBackup/stable/2026-11-01/bms.json",
    "vaults": "recoveryservices/resource-manager/Microsoft.RecoveryServices/RecoveryServices/stable/2026-11-01/openapi.json",
}
HTTP_METHODS = ("get", "put", "post", "patch", "delete", "head")
# Properties whose values are compared, not only their types: they say what kind of thing an answer is.
VALUE_KEYS = {"objectType", "protectedItemType", "backupManagementType", "workloadType", "containerType",
              "jobType", "schedulePolicyType", "retentionPolicyType"}


# ---------------------------------------------------------------------------------------------------
# Spec documents and $ref resolution


class Docs:
    """Every JSON document loaded so far, by absolute path."""

    def __init__(self):
        self._docs: dict[Path, dict] = {}
        self._children: dict[Path, dict[str, list[str]]] = {}

    def doc(self, path: Path) -> dict:
        path = path.resolve()
        if path not in self._docs:
            self._docs[path] = json.loads(path.read_text())
        return self._docs[path]

    def deref(self, file: Path, node: dict) -> tuple[Path, dict, str | None]:
        """Follows `$ref`s; returns the file the schema lives in, the schema, and its definition name."""
        name = None
        seen = 0
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            target, _, pointer = ref.partition("#")
            if target:
                file = (file.parent / target).resolve()
            node = self.doc(file)
            for part in [p for p in pointer.split("/") if p]:
                node = node[part]
            if pointer.startswith("/definitions/"):
                name = pointer.split("/")[-1]
            seen += 1
            if seen > 50:
                raise ValueError(f"$ref loop at {ref}")
        return file, node, name

    def children(self, file: Path) -> dict[str, list[str]]:
        """Definition name → the definitions of the same file that extend it through `allOf`."""
        file = file.resolve()
        if file not in self._children:
            kids: dict[str, list[str]] = {}
            for name, d in self.doc(file).get("definitions", {}).items():
                for parent in d.get("allOf", []):
                    ref = parent.get("$ref", "")
                    if ref.startswith("#/definitions/"):
                        kids.setdefault(ref.split("/")[-1], []).append(name)
            self._children[file] = kids
        return self._children[file]


@dataclass
class Schema:
    """A resolved schema: where it lives, what it says, and the definition it is (if any)."""

    file: Path
    node: dict
    name: str | None = None


def resolve(docs: Docs, file: Path, node) -> Schema | None:
    if node is None:
        return None
    f, n, name = docs.deref(file, node)
    return Schema(f, n, name)


def _allof_chain(docs: Docs, s: Schema) -> list[Schema]:
    """The schema and every schema it extends through allOf, nearest first."""
    out, todo = [], [s]
    while todo:
        cur = todo.pop(0)
        out.append(cur)
        for parent in cur.node.get("allOf", []):
            todo.append(resolve(docs, cur.file, parent))
    return out


def discriminator(docs: Docs, s: Schema) -> str | None:
    for c in _allof_chain(docs, s):
        if "discriminator" in c.node:
            return c.node["discriminator"]
    return None


def concrete(docs: Docs, s: Schema, value) -> Schema:
    """The subtype of a polymorphic schema that `value` (a JSON object) names with its discriminator."""
    disc = discriminator(docs, s)
    if not disc or not isinstance(value, dict) or not isinstance(value.get(disc), str) or not s.name:
        return s
    want = value[disc]
    kids = docs.children(s.file)
    todo, seen = [s.name], set()
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        d = docs.doc(s.file)["definitions"][name]
        if d.get("x-ms-discriminator-value", name) == want:
            return Schema(s.file, d, name)
        todo.extend(kids.get(name, []))
    return s


def properties(docs: Docs, s: Schema) -> dict[str, Schema | None]:
    props: dict[str, Schema | None] = {}
    for c in reversed(_allof_chain(docs, s)):
        for k, v in c.node.get("properties", {}).items():
            props[k] = resolve(docs, c.file, v)
    return props


def additional(docs: Docs, s: Schema):
    """The schema of a dictionary's values: a Schema, True (anything), or None (not a dictionary)."""
    for c in _allof_chain(docs, s):
        ap = c.node.get("additionalProperties")
        if ap is True or ap == {}:
            return True
        if isinstance(ap, dict):
            return resolve(docs, c.file, ap)
    return None


def is_open(docs: Docs, s: Schema) -> bool:
    """An object the spec leaves free (type object, no properties): anything goes inside."""
    chain = _allof_chain(docs, s)
    return not any("properties" in c.node or "allOf" in c.node for c in chain) and additional(docs, s) is None


# ---------------------------------------------------------------------------------------------------
# Examples


@dataclass
class Example:
    key: str  # "backup/AzureIaasVm/ConfigureProtection.json" or "vaults/GETVault.json"
    file: Path
    spec: str
    spec_file: Path
    operation_id: str
    method: str
    path: str
    op: dict
    data: dict = field(repr=False, default_factory=dict)

    @property
    def params(self) -> dict:
        return self.data["parameters"]

    @property
    def responses(self) -> dict:
        return self.data["responses"]

    @property
    def long_running(self) -> bool:
        return bool(self.op.get("x-ms-long-running-operation"))


def _example_file(spec_file: Path, rel: str) -> Path | None:
    """`./examples/X` of the 2026-11-01 spec, or X from the newest older version that has it."""
    here = (spec_file.parent / rel).resolve()
    if here.exists():
        return here
    stable = spec_file.parent.parent
    for version in sorted((p.name for p in stable.iterdir() if p.is_dir()), reverse=True):
        cand = stable / version / rel
        if cand.exists():
            return cand.resolve()
    return None


def load_examples(docs: Docs) -> list[Example]:
    out = []
    for spec, rel in SPECS.items():
        spec_file = (SPEC_ROOT / rel).resolve()
        d = docs.doc(spec_file)
        for path, ops in d["paths"].items():
            for method, op in ops.items():
                if method not in HTTP_METHODS:
                    continue
                for ref in (e["$ref"] for e in op.get("x-ms-examples", {}).values()):
                    f = _example_file(spec_file, ref)
                    if f is None:
                        continue
                    key = f"{spec}/{ref.removeprefix('./examples/')}"
                    out.append(Example(key, f, spec, spec_file, op["operationId"], method.upper(), path, op,
                                       json.loads(f.read_text())))
    return sorted(out, key=lambda e: e.key)


def example_files() -> list[Path]:
    """Every example file the two specs' folders hold (what load_examples must account for)."""
    out = []
    for rel in SPECS.values():
        stable = (SPEC_ROOT / rel).parent.parent
        out += sorted(stable.glob("*/examples/**/*.json"))
    return [p.resolve() for p in out]


def op_parameters(docs: Docs, ex: Example) -> list[dict]:
    """The operation's parameters (path-level ones too), each resolved."""
    d = docs.doc(ex.spec_file)
    params = list(d["paths"][ex.path].get("parameters", [])) + list(ex.op.get("parameters", []))
    return [docs.deref(ex.spec_file, p)[1] for p in params]


def response_schema(docs: Docs, ex: Example, status: int) -> Schema | None:
    resp = ex.op["responses"].get(str(status)) or ex.op["responses"].get("default")
    if not resp:
        return None
    f, r, _ = docs.deref(ex.spec_file, resp)
    return resolve(docs, f, r.get("schema"))


# ---------------------------------------------------------------------------------------------------
# Comparison


def jtype(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


@dataclass
class Optional:
    """A property only some of an example list's elements of one kind have."""

    value: object


def kind_of(v) -> tuple:
    """What kind of thing a list element is: its kind properties' values (top level and properties)."""
    if not isinstance(v, dict):
        return ()
    out = [(k, v[k]) for k in sorted(VALUE_KEYS) if isinstance(v.get(k), str)]
    p = v.get("properties")
    if isinstance(p, dict):
        out += [("properties." + k, p[k]) for k in sorted(VALUE_KEYS) if isinstance(p.get(k), str)]
    return tuple(out)


def merge(values: list):
    """The elements of one kind as one expected element (see Comparer._array)."""
    values = [v.value if isinstance(v, Optional) else v for v in values]
    if all(isinstance(v, dict) for v in values):
        out = {}
        for k in dict.fromkeys(k for v in values for k in v):
            present = [v[k] for v in values if k in v]
            m = merge(present)
            out[k] = m if len(present) == len(values) else Optional(m)
        return out
    if all(isinstance(v, list) for v in values):
        return [x for v in values for x in v]
    return next((v for v in values if v is not None), None)


@dataclass(frozen=True, order=True)
class Mismatch:
    kind: str  # status, header, missing, extra, type, value, empty
    path: str  # $.properties.foo, $.value[*].id; a header's name for kind header
    detail: str = field(default="", compare=False)

    def __str__(self):
        return f"{self.kind} {self.path}{': ' + self.detail if self.detail else ''}"


class Comparer:
    def __init__(self, docs: Docs):
        self.docs = docs
        self.out: set[Mismatch] = set()

    def add(self, kind, path, detail=""):
        # One entry per (kind, path); the first detail wins.
        if not any(m.kind == kind and m.path == path for m in self.out):
            self.out.add(Mismatch(kind, path, detail))

    def body(self, actual, expected, schema: Schema | None, path="$"):
        if expected is None:  # the example shows null: any value (or none) is fine
            return
        if jtype(actual) != jtype(expected):
            self.add("type", path, f"{jtype(actual)}, example {jtype(expected)}")
            return
        if isinstance(expected, dict):
            self._object(actual, expected, schema, path)
        elif isinstance(expected, list):
            item = None
            if schema is not None and "items" in schema.node:
                item = resolve(self.docs, schema.file, schema.node["items"])
            if not expected:
                for a in actual:
                    self.schema_only(a, item, f"{path}[*]")
            elif not actual:
                self.add("empty", f"{path}", f"no element, example has {len(expected)}")
            else:
                self._array(actual, expected, item, f"{path}[*]")

    def _trial(self, actual, expected, item) -> list[Mismatch]:
        c = Comparer(self.docs)
        c.body(actual, expected, item, "$")
        return sorted(c.out)

    def _array(self, actual: list, expected: list, item: Schema | None, path: str):
        """Each element is compared with the example's elements of its kind (kind properties equal),
        merged: a property every one of them has is required, one only some have is optional. An
        element of a kind the example does not show is checked against the schema alone, as long as
        some element is of a kind the example shows."""
        groups: dict[tuple, list] = {}
        for e in expected:
            groups.setdefault(kind_of(e), []).append(e)
        merged = [merge(g) for g in groups.values()]
        best = []
        for a in actual:
            trials = [self._trial(a, m, item) for m in merged]
            i = min(range(len(trials)), key=lambda i: (sum(m.kind == "value" for m in trials[i]), len(trials[i]), i))
            best.append((a, merged[i], any(m.kind == "value" for m in trials[i])))
        same_kind = [b for b in best if not b[2]]
        for a, e, other_kind in best:
            if other_kind and same_kind:
                self.schema_only(a, item, path)
            else:
                self.body(a, e, item, path)

    def _object(self, actual: dict, expected: dict, schema: Schema | None, path: str):
        if schema is not None:
            schema = concrete(self.docs, schema, actual if isinstance(actual, dict) else expected)
        props = properties(self.docs, schema) if schema is not None else {}
        extra_ok = additional(self.docs, schema) if schema is not None else True
        open_ = schema is None or is_open(self.docs, schema)
        for k, ev in expected.items():
            optional = isinstance(ev, Optional)
            ev = ev.value if optional else ev
            sub = props.get(k) if k in props else (extra_ok if isinstance(extra_ok, Schema) else None)
            p = f"{path}.{k}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) else f"{path}[{json.dumps(k)}]"
            if k not in actual:
                if optional or (k == "nextLink" and path == "$"):
                    continue  # ARM's paging: a nextLink only where there is a next page
                self.add("missing", p)
                continue
            av = actual[k]
            if k in VALUE_KEYS and isinstance(ev, str) and av != ev:
                self.add("value", p, f"{av!r}, example {ev!r}")
            self.body(av, ev, sub, p)
        for k, av in actual.items():
            if k in expected:
                continue
            p = f"{path}.{k}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) else f"{path}[{json.dumps(k)}]"
            if k in props:
                self.schema_only(av, props[k], p)
            elif isinstance(extra_ok, Schema):
                self.schema_only(av, extra_ok, p)
            elif extra_ok is True or open_:
                continue
            else:
                self.add("extra", p, "not in the example nor in the spec's schema")

    def schema_only(self, actual, schema: Schema | None, path: str):
        """Checks a value the example does not show against the schema alone: no undefined property."""
        if schema is None or not isinstance(actual, (dict, list)):
            return
        if isinstance(actual, list):
            if "items" in schema.node:
                item = resolve(self.docs, schema.file, schema.node["items"])
                for a in actual:
                    self.schema_only(a, item, f"{path}[*]")
            return
        schema = concrete(self.docs, schema, actual)
        if is_open(self.docs, schema):
            return
        props = properties(self.docs, schema)
        extra_ok = additional(self.docs, schema)
        for k, av in actual.items():
            p = f"{path}.{k}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) else f"{path}[{json.dumps(k)}]"
            if k in props:
                self.schema_only(av, props[k], p)
            elif isinstance(extra_ok, Schema):
                self.schema_only(av, extra_ok, p)
            elif extra_ok is True:
                continue
            else:
                self.add("extra", p, "not defined by the spec's schema")


def compare(docs: Docs, ex: Example, status: int, headers: dict, body) -> list[Mismatch]:
    """Everything in which an answer (status, headers, parsed body or None) differs from the example."""
    statuses = {int(s) for s in ex.responses}
    allowed = set(statuses)
    if ex.long_running and statuses & {200, 201, 202}:
        allowed |= {200, 201, 202}
    if status not in allowed:
        code = body.get("error", {}).get("code", "") if isinstance(body, dict) and isinstance(body.get("error"), dict) else ""
        return [Mismatch("status", str(status), code)]
    c = Comparer(docs)
    resp = ex.responses.get(str(status))
    if resp is None:  # an alternative status of a long-running operation: nothing to compare it with
        return []
    have = {k.lower() for k in headers}
    for h in resp.get("headers", {}) or {}:
        if h.lower() not in have:
            c.add("header", h)
    if "body" in resp:
        if body is None:
            c.add("missing", "$", "no body")
        else:
            c.body(body, resp["body"], response_schema(docs, ex, status))
    elif body not in (None, "", {}):
        c.add("extra", "$", "a body where the example has none")
    return sorted(c.out)
