"""deploy/kubernetes: every kustomization builds, and what it builds is valid and safe.

Each kustomization under deploy/kubernetes is built with `kubectl kustomize`
(the kustomize kubectl ships), and every object it yields is validated:
core kinds against Kubernetes' own OpenAPI schemas (kubernetes-validate, which
ships them, strict: unknown fields are errors), the Prometheus Operator's
kinds against the openAPIV3Schema of its CRDs vendored in tests/crds (see the
README there), made strict the same way. Then what the schemas cannot say:
the container's hardening and probes, no key in any ConfigMap, the shipped
configs load with `--config.check`, the PrometheusRule is prometheus/*.yml,
and the sharded overlay sends each account to exactly one replica.

Needs `kubectl` (its built-in kustomize). Without it the tests skip, except
under CI=true: then they fail.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from stack_helpers import REPO, RULE_FILES, require_tool

KUBE = REPO / "deploy" / "kubernetes"
KUSTOMIZATIONS = sorted(p.parent for p in KUBE.rglob("kustomization.yaml"))
CRDS = REPO / "tests" / "crds"
# Oldest Kubernetes the manifests must work on, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
OPERATOR_GROUP = "monitoring.coreos.com"
APP = "binance-futures-exporter"



def _id(path: Path) -> str:
    return str(path.relative_to(KUBE)) if path.is_relative_to(KUBE) else path.name


@cache
def _build(directory: Path) -> tuple[dict[str, Any], ...]:
    kubectl = require_tool("kubectl", "apt-get install kubectl; it carries kustomize")
    proc = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize {_id(directory)} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def build(directory: Path) -> list[dict[str, Any]]:
    """The objects of one kustomization (a fresh copy: tests may change them)."""
    return copy.deepcopy(list(_build(directory)))


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


# --------------------------------------------------------------------------- schemas


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists the known ones.

    The API server prunes unknown fields of a custom resource without a word,
    so a misspelt `scrapeTimout` would apply cleanly and do nothing; here it
    is an error."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@cache
def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> validator, for every version of every vendored CRD."""
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _strict(version["schema"]["openAPIV3Schema"])
            out[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return out


def validate(doc: dict[str, Any]) -> None:
    """Raise if `doc` is not a valid object of its kind (see the module docstring)."""
    if doc["apiVersion"].startswith(OPERATOR_GROUP + "/"):
        validator = crd_validators().get((doc["apiVersion"], doc["kind"]))
        assert validator is not None, f"no vendored CRD for {doc['apiVersion']} {doc['kind']} in tests/crds"
        validator.validate(doc)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def test_there_is_a_base_and_a_sharded_overlay() -> None:
    assert {_id(p) for p in KUSTOMIZATIONS} >= {"base", "overlays/sharded", "overlays/kube-prometheus-stack"}


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_kustomization_builds_and_every_object_is_valid(directory: Path) -> None:
    docs = build(directory)
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Service", "ConfigMap", "PrometheusRule", "ServiceAccount", "PodDisruptionBudget",
            "NetworkPolicy"} <= kinds
    # Issue 26: applying it can never overwrite the keys created out of band.
    assert "Secret" not in kinds, "a Secret in a kustomization overwrites the real keys on every apply"
    assert kinds & {"ServiceMonitor", "ScrapeConfig"}, "nothing makes Prometheus scrape the exporter"
    for doc in docs:
        try:
            validate(doc)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            pytest.fail(f"{_id(directory)}: {doc['kind']} {doc['metadata']['name']}: {exc}")


@pytest.mark.parametrize("kind, path, value", [
    ("StatefulSet", ("spec", "template", "spec", "containers", 0, "securityContext", "readOnlyRootFs"), True),
    ("StatefulSet", ("spec", "replicas"), "2"),
    ("Service", ("spec", "ports", 0, "port"), "http"),
    ("ServiceMonitor", ("spec", "endpoints", 0, "scrapeTimout"), "10s"),
    ("ServiceMonitor", ("spec", "endpoints", 0, "interval"), "30 seconds"),
    ("PrometheusRule", ("spec", "groups", 0, "rules", 0, "recrod"), "x"),
    ("PrometheusRule", ("spec", "groups", 0, "name"), 1),
])
def test_validation_catches_mistakes(kind: str, path: tuple, value: Any) -> None:
    """The validation above is not vacuous: a typo or a wrong type in a built object is refused."""
    doc = one(build(KUBE / "base"), kind)
    validate(doc)
    node = doc
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(doc)


def test_scrapeconfig_validation_catches_a_wrong_action() -> None:
    doc = one(build(KUBE / "overlays" / "sharded"), "ScrapeConfig")
    validate(doc)
    doc["spec"]["relabelings"][2]["action"] = "hashmodulo"
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


def test_docs_overlay_example_builds_and_is_valid(tmp_path: Path) -> None:
    """docs/deploy.md's "Your overlay" example, built on this checkout's base as a user would."""
    text = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n# my-exporter/kustomization.yaml\n(.*?)```", text, re.S)
    assert block, "the overlay example is gone from docs/deploy.md"
    (tmp_path / "binance-futures-exporter").symlink_to(REPO)
    overlay = tmp_path / "my-exporter"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(block.group(1), encoding="utf-8")
    (overlay / "config.yaml").write_text((KUBE / "base" / "config.yaml").read_text(), encoding="utf-8")
    docs = build(overlay)
    assert not of_kind(docs, "Secret")
    for doc in docs:
        validate(doc)
        assert doc["metadata"]["namespace"] == "monitoring"
        if doc["apiVersion"].startswith(OPERATOR_GROUP):
            assert doc["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    image = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith(f":{base_image_tag()}"), "docs/deploy.md shows another image tag than the base"


# --------------------------------------------------------------------------- the pod


def workloads() -> Iterator[tuple[Path, dict[str, Any], dict[str, Any]]]:
    """(kustomization, pod spec, exporter container) of every built workload."""
    for directory in KUSTOMIZATIONS:
        for doc in build(directory):
            if doc["kind"] in ("StatefulSet", "Deployment"):
                pod = doc["spec"]["template"]["spec"]
                yield directory, pod, pod["containers"][0]


def test_container_is_hardened_and_probed() -> None:
    seen = 0
    for directory, pod, container in workloads():
        seen += 1
        where = _id(directory)
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] != 0, where
        assert pod["automountServiceAccountToken"] is False, where
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, where
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], where
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), where
        port = next(p for p in container["ports"] if p["name"] == "http")["containerPort"]
        assert f"--web.listen-address=:{port}" in container["args"], where
        assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy", where
        assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready", where
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] in ("http", port), where
    assert seen == len(KUSTOMIZATIONS)


def base_image_tag() -> str:
    kustomization = yaml.safe_load((KUBE / "base" / "kustomization.yaml").read_text(encoding="utf-8"))
    (image,) = kustomization["images"]
    return str(image["newTag"])


def test_image_tag_is_a_release_and_the_version_label() -> None:
    """The image is a release (X.Y.Z, the newest vX.Y.Z tag once there is one), and the version label says so."""
    tag = base_image_tag()
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), tag
    tags = subprocess.run(["git", "-C", str(REPO), "tag", "--list", "v[0-9]*", "--sort=-v:refname"],
                          capture_output=True, text=True, check=True).stdout.split()
    if tags:
        assert tag == tags[0].removeprefix("v"), f"base image tag {tag}, newest release tag {tags[0]}"
    for directory in KUSTOMIZATIONS:
        for doc in build(directory):
            assert doc["metadata"]["labels"]["app.kubernetes.io/version"] == tag, (_id(directory), doc["kind"])
    for directory, _, container in workloads():
        assert container["image"].rsplit(":", 1)[1] == tag, _id(directory)


LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
          "app.kubernetes.io/component", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by")


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_every_object_and_pod_has_the_recommended_labels(directory: Path) -> None:
    for doc in build(directory):
        where = f"{_id(directory)}: {doc['kind']} {doc['metadata']['name']}"
        assert set(LABELS) <= set(doc["metadata"].get("labels", {})), where
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == APP, where
        if doc["kind"] == "StatefulSet":
            assert set(LABELS) <= set(doc["spec"]["template"]["metadata"]["labels"]), where
            # Selectors are immutable: the name alone, never the version.
            assert doc["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": APP}, where


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_service_account_pdb_and_network_policy(directory: Path) -> None:
    docs = build(directory)
    sts = one(docs, "StatefulSet")
    pod = sts["spec"]["template"]
    account = one(docs, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert pod["spec"]["automountServiceAccountToken"] is False

    def selects(selector: dict[str, Any]) -> bool:
        return selector["matchLabels"].items() <= pod["metadata"]["labels"].items()

    pdb = one(docs, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]) and pdb["spec"]["maxUnavailable"] == 1  # never blocks one replica's drain

    policy = one(docs, "NetworkPolicy")
    assert selects(policy["spec"]["podSelector"]) and set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = policy["spec"]["ingress"]
    assert [p["port"] for p in ingress["ports"]] == ["http"]
    assert ingress["from"] == [{"namespaceSelector": {},
                                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    egress = {(p["protocol"], p["port"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress == {("UDP", 53), ("TCP", 53), ("TCP", 443)}
    https = next(r for r in policy["spec"]["egress"] if r["ports"] == [{"port": 443, "protocol": "TCP"}])
    assert {b["ipBlock"]["cidr"] for b in https["to"]} == {"0.0.0.0/0", "::/0"}


# --------------------------------------------------------------------------- kube-prometheus-stack

STACK_PROMETHEUS = REPO / "tests" / "fixtures" / "kube-prometheus-stack" / "prometheus.yaml"
SELECTOR_OF = {"ServiceMonitor": "serviceMonitor", "PodMonitor": "podMonitor", "Probe": "probe",
               "PrometheusRule": "rule", "ScrapeConfig": "scrapeConfig"}


def stack_selects(prometheus: dict[str, Any], doc: dict[str, Any]) -> bool:
    """Would this Prometheus (of the stack) read `doc`? Its label selector and namespace selector ({} = all)."""
    spec = prometheus["spec"]
    selector = spec.get(SELECTOR_OF[doc["kind"]] + "Selector")
    namespaces = spec.get(SELECTOR_OF[doc["kind"]] + "NamespaceSelector")
    if selector is None or namespaces != {}:
        return False  # nil selects nothing; a namespace selector other than {} is not the stack's default
    labels = doc["metadata"].get("labels", {})
    assert set(selector) <= {"matchLabels"}, "model matchExpressions before using them"
    return selector.get("matchLabels", {}).items() <= labels.items()


def test_kube_prometheus_stack_overlay_objects_are_selected_by_the_stocks_prometheus() -> None:
    prometheus = yaml.safe_load(STACK_PROMETHEUS.read_text(encoding="utf-8"))
    docs = build(KUBE / "overlays" / "kube-prometheus-stack")
    monitoring = [d for d in docs if d["kind"] in SELECTOR_OF]
    assert {d["kind"] for d in monitoring} == {"ServiceMonitor", "PrometheusRule"}
    for doc in monitoring:
        assert stack_selects(prometheus, doc), f"{doc['kind']} is not selected by kube-prometheus-stack's Prometheus"
    # ... and the base alone is not: that is the silent failure the overlay exists for.
    base = [d for d in build(KUBE / "base") if d["kind"] in SELECTOR_OF]
    assert base and not any(stack_selects(prometheus, d) for d in base)
    # The release name is one line of the overlay.
    text = (KUBE / "overlays" / "kube-prometheus-stack" / "kustomization.yaml").read_text(encoding="utf-8")
    assert len(re.findall(r"^\s*value: kube-prometheus-stack\b", text, re.M)) == 1


def test_kube_prometheus_stack_release_name_is_a_one_line_change(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    text = (KUBE / "overlays" / "kube-prometheus-stack" / "kustomization.yaml").read_text(encoding="utf-8")
    changed = re.sub(r"^(\s*value: )kube-prometheus-stack\b", r"\1monitoring", text, flags=re.M)
    assert sum(a != b for a, b in zip(text.splitlines(), changed.splitlines(), strict=True)) == 1
    (tmp_path / "repo").symlink_to(REPO)
    (overlay / "kustomization.yaml").write_text(changed.replace("../../base", "../repo/deploy/kubernetes/base"),
                                                encoding="utf-8")
    prometheus = yaml.safe_load(STACK_PROMETHEUS.read_text(encoding="utf-8").replace(
        "release: kube-prometheus-stack", "release: monitoring"))
    monitoring = [d for d in build(overlay) if d["kind"] in SELECTOR_OF]
    assert monitoring and all(stack_selects(prometheus, d) for d in monitoring)


# --------------------------------------------------------------------------- config and secrets

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
SECRET_KEYS = ("api_key", "api_secret", "private_key_passphrase")


def configs(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {name: text for cm in of_kind(docs, "ConfigMap") for name, text in cm.get("data", {}).items()}


def example_secret(directory: Path) -> dict[str, Any]:
    """The example Secret of a kustomization (deploy/kubernetes/examples/): no kustomization lists one."""
    name = "secret-sharded.example.yaml" if "sharded" in directory.parts else "secret.example.yaml"
    return yaml.safe_load((KUBE / "examples" / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_no_secret_in_a_configmap_and_every_var_comes_from_the_example_secret(directory: Path) -> None:
    docs = build(directory)
    secret = example_secret(directory)
    validate(secret)
    provided = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    _, pod, container = next(w for w in workloads() if w[0] == directory)
    assert [e["secretRef"]["name"] for e in container["envFrom"]] == [secret["metadata"]["name"]]
    config = yaml.safe_load(configs(docs)["config.yaml"])
    for account in config["accounts"]:
        for key in SECRET_KEYS:
            if key in account:
                assert ENV_REF.fullmatch(account[key]), f"{key} of {account['alias']} is a literal, not ${{VAR}}"
    used = {name for account in config["accounts"] for value in account.values() if isinstance(value, str)
            for name in ENV_REF.findall(value)}
    assert used and used <= provided, f"not in the Secret: {sorted(used - provided)}"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_shipped_config_passes_config_check(directory: Path, tmp_path: Path) -> None:
    """The ConfigMap's config.yaml loads in the exporter, with the example Secret as environment."""
    docs = build(directory)
    path = tmp_path / "config.yaml"
    path.write_text(configs(docs)["config.yaml"], encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINANCE_")}
    env.update(example_secret(directory)["stringData"])
    proc = subprocess.run([sys.executable, "-m", "exporter", f"--config.file={path}", "--config.check"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    n = len(yaml.safe_load(path.read_text())["accounts"])
    assert f"OK, {n} account(s)" in proc.stdout


# --------------------------------------------------------------------------- PrometheusRule


# Generated with the rule files by prometheus/mixin/generate.py: tests/test_mixin.py checks it is current.


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_built_prometheusrule_has_exactly_the_rule_files_groups(directory: Path) -> None:
    expected = [group for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]]
    assert one(build(directory), "PrometheusRule")["spec"]["groups"] == expected


# --------------------------------------------------------------------------- sharding


def hashmod(value: str, modulus: int) -> int:
    """Prometheus' relabel hashmod: the low 8 bytes of the MD5, big-endian, mod `modulus`."""
    return int.from_bytes(hashlib.md5(value.encode()).digest()[8:], "big") % modulus


def relabel(rules: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, str]:
    """Apply the ScrapeConfig's relabelings (the actions it uses) the way Prometheus does."""
    labels = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace").lower()
        value = rule.get("separator", ";").join(labels.get(name, "") for name in rule.get("sourceLabels", []))
        if action == "hashmod":
            labels[rule["targetLabel"]] = str(hashmod(value, rule["modulus"]))
        elif action == "replace":
            match = re.fullmatch(rule.get("regex", "(.*)"), value)
            if match:
                labels[rule["targetLabel"]] = match.expand(rule.get("replacement", "$1").replace("$", "\\"))
        else:
            raise AssertionError(f"relabel action {action} not modelled here")
    return labels


def test_hashmod_matches_prometheus() -> None:
    """Pinned from Prometheus' own relabel tests (model/relabel): "baz" mod 1000 is 976."""
    assert hashmod("baz", 1000) == 976


def test_sharded_overlay_sends_each_account_to_exactly_one_replica() -> None:
    docs = build(KUBE / "overlays" / "sharded")
    sts, service, scrape = one(docs, "StatefulSet"), one(docs, "Service"), one(docs, "ScrapeConfig")
    assert not of_kind(docs, "ServiceMonitor"), "/metrics of a shard would fetch every account"
    replicas = sts["spec"]["replicas"]
    assert replicas >= 2
    namespace = sts["metadata"]["namespace"]
    assert sts["spec"]["serviceName"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    port = service["spec"]["ports"][0]["port"]
    replica_addresses = {f"{sts['metadata']['name']}-{i}.{service['metadata']['name']}.{namespace}.svc:{port}"
                         for i in range(replicas)}

    aliases = [a["alias"] for a in yaml.safe_load(configs(docs)["config.yaml"])["accounts"]]
    (static,) = scrape["spec"]["staticConfigs"]
    assert sorted(static["targets"]) == sorted(aliases), "ScrapeConfig targets must be the config's aliases"
    assert scrape["spec"]["metricsPath"] == "/probe"

    hashmods = [r for r in scrape["spec"]["relabelings"] if r.get("action", "").lower() == "hashmod"]
    assert [r["modulus"] for r in hashmods] == [replicas], "modulus must equal the number of replicas"
    targets = [relabel(scrape["spec"]["relabelings"], {"__address__": alias, "job": "scrapeConfig/x/y"})
               for alias in static["targets"]]
    for alias, labels in zip(static["targets"], targets, strict=True):
        assert labels["__param_target"] == labels["instance"] == alias
        assert labels["__address__"] in replica_addresses
        assert labels["__address__"].startswith(f"{sts['metadata']['name']}-{hashmod(alias, replicas)}.")
        assert labels["job"].startswith("binance-futures"), "BinanceFuturesExporterDown matches binance-futures.*"
    # docs/deploy.md's sharding section uses the same source label and modulus: same shard per alias
    assert [r["sourceLabels"] for r in hashmods] == [["__param_target"]]
