"""The infra files parse, agree with each other, and name only commands and flags that exist.

Every `maple-zoo ...`, `ray ...` and `mlflow ...` command line written in infra/ and
docs/operations.md is checked against the installed click command trees (maple-zoo's Typer app,
Ray 2.60's CLI, MLflow 3.17's CLI), so a renamed flag breaks this test instead of a deployment.
No processes are started, except `sh -n` on the server script.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
DOCS = [ROOT / "docs" / "operations.md"]
IMAGE = "ghcr.io/maple-zoo/maple-zoo:0.1.0"
MLFLOW_IMAGE = "ghcr.io/maple-zoo/mlflow-server:3.17.2"
BUCKET = "example-maple-zoo-bucket"


def yaml_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifests() -> dict[tuple[str, str], dict]:
    """(kind, name) -> Kubernetes object, for every manifest under infra/kuberay and infra/mlflow."""
    out = {}
    for path in sorted([*INFRA.glob("kuberay/*.yaml"), *INFRA.glob("mlflow/*.yaml")]):
        for doc in yaml_docs(path):
            if isinstance(doc, dict) and "kind" in doc and "metadata" in doc:
                meta = doc["metadata"]
                out[(doc["kind"], meta.get("name") or meta.get("generateName"))] = doc
    return out


def walk(node, key=None):
    """Yield (key, value) for every mapping entry in a nested YAML document."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from walk(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v, key)


def pod_specs(obj: dict) -> list[dict]:
    return [v["spec"] for k, v in walk(obj) if k == "template" and isinstance(v, dict) and "spec" in v]


# ---------------------------------------------------------------------------------------------- parse


def test_every_yaml_file_parses():
    files = sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml")])
    assert len(files) >= 10
    for path in files:
        assert yaml_docs(path), f"{path} is empty"


def test_json_policies_parse():
    for path in INFRA.rglob("*.json"):
        doc = json.loads(path.read_text())
        assert doc["Version"] == "2012-10-17" and doc["Statement"]


# ---------------------------------------------------------------------------------------------- Ray cluster launcher


def test_cluster_launcher_config_matches_rays_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = yaml.safe_load((INFRA / "ray" / "cluster-aws.yaml").read_text())
    jsonschema.validate(cfg, schema)
    assert cfg["docker"]["image"] == IMAGE
    nodes = cfg["available_node_types"]
    assert cfg["head_node_type"] in nodes
    head = nodes[cfg["head_node_type"]]["node_config"]["InstanceType"]
    assert not re.match(r"(g\d|p\d)", head), "the head should be a CPU node"
    gpu = [n for n, t in nodes.items() if re.match(r"(g[4-6]|p[3-5])", t["node_config"]["InstanceType"])]
    assert gpu and nodes[gpu[0]]["min_workers"] == 0 < nodes[gpu[0]]["max_workers"] <= cfg["max_workers"]
    for source in cfg["file_mounts"].values():
        assert (ROOT / source).exists(), f"file_mounts source {source} is missing"
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("--address=$RAY_HEAD_IP:6379" in c for c in cfg["worker_start_ray_commands"])
    assert any("pip install" in c for c in cfg["setup_commands"])
    # every node reads the settings file from the synced checkout
    assert cfg["file_mounts"]["/home/ray/maple-zoo-src"] == "."
    assert "--env MAPLE_ZOO_CONFIG=/home/ray/maple-zoo-src/infra/ray/maple-zoo.cluster.yaml" in cfg["docker"]["run_options"]
    assert (ROOT / "infra/ray/maple-zoo.cluster.yaml").is_file()
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cfg))  # Ray's own checks, with the AWS defaults merged in
    policy = (INFRA / "ray" / "iam" / "head-passrole-policy.json").read_text()
    profile = nodes[gpu[0]]["node_config"]["IamInstanceProfile"]["Name"]
    assert f"role/{profile}" in policy


# ---------------------------------------------------------------------------------------------- Kubernetes


def test_kuberay_manifests_are_consistent():
    import ray

    objs = manifests()
    cluster = objs[("RayCluster", "maple-zoo")]
    assert cluster["apiVersion"] == "ray.io/v1"
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    ray_pin = re.search(r"ARG RAY_VERSION=(\S+)", dockerfile).group(1)
    assert cluster["spec"]["rayVersion"] == ray_pin == ray.__version__
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    (group,) = spec["workerGroupSpecs"]
    assert group["minReplicas"] == 0 < group["maxReplicas"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] >= 1
    for pod in pod_specs(cluster):
        for c in pod["containers"] + pod.get("initContainers", []):
            assert c["image"] == IMAGE
        for c in pod["containers"]:
            assert {"name": "MAPLE_ZOO_CONFIG", "value": "/etc/maple-zoo/maple-zoo.yaml"} in c["env"]
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            assert mounts["/home/ray/.cache/maple-zoo"]["name"] == "shared"  # built once, seen by every worker
    # every rayStartParams key is a `ray start` flag, every value a string (KubeRay's rule)
    start = ray_cli().commands["start"]
    for params in [head["rayStartParams"], group["rayStartParams"]]:
        for key, value in params.items():
            assert isinstance(value, str), f"rayStartParams.{key} must be a string"
            assert f"--{key}" in option_names(start), f"rayStartParams.{key}: `ray start --{key}` does not exist"
    for name in ("rayjob-sweep.yaml", "rayjob-resume.yaml"):
        (job,) = yaml_docs(INFRA / "kuberay" / name)
        assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
        assert "maple-zoo sweep sweeps/" in job["spec"]["entrypoint"]
        assert "--address auto" in job["spec"]["entrypoint"]
    kustomize = yaml.safe_load((INFRA / "kuberay" / "kustomization.yaml").read_text())
    assert {i["name"] + ":" + i["newTag"] for i in kustomize["images"]} == {IMAGE}
    for res in kustomize["resources"]:
        assert (INFRA / "kuberay" / res).is_file()


def test_mlflow_manifests_are_consistent():
    import mlflow

    objs = manifests()
    deploy = objs[("Deployment", "mlflow")]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["image"] == MLFLOW_IMAGE and container["command"] == ["start-mlflow.sh"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith(f"s3://{BUCKET}/")
    assert "mlflow:*" in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert objs[("Service", "mlflow")]["spec"]["ports"][0]["port"] == 5000
    assert objs[("Service", "mlflow-postgres")]["spec"]["ports"][0]["port"] == 5432
    compose = yaml.safe_load((INFRA / "mlflow" / "docker-compose.yaml").read_text())
    assert compose["services"]["mlflow"]["image"] == MLFLOW_IMAGE
    assert compose["services"]["mlflow"]["command"] == ["start-mlflow.sh"]
    dockerfile = (INFRA / "mlflow" / "Dockerfile").read_text()
    assert re.search(r"ARG MLFLOW_VERSION=(\S+)", dockerfile).group(1) == mlflow.__version__ == MLFLOW_IMAGE.split(":")[1]
    assert "mlflow[auth]" in dockerfile  # basic-auth needs Flask-WTF
    assert "COPY --chmod=0755 infra/mlflow/start-mlflow.sh" in dockerfile
    kustomize = yaml.safe_load((INFRA / "mlflow" / "kustomization.yaml").read_text())
    for gen in kustomize["configMapGenerator"]:
        for f in gen["files"]:
            assert (INFRA / "mlflow" / f).is_file()
    for res in kustomize["resources"]:
        assert (INFRA / "mlflow" / res).is_file()
    sql = (INFRA / "mlflow" / "postgres-init.sql").read_text()
    assert "CREATE DATABASE mlflow_auth" in sql


def test_every_referenced_secret_configmap_and_volume_exists():
    objs = manifests()
    secrets = {name: set(o["stringData"]) for (kind, name), o in objs.items() if kind == "Secret"}
    configmaps = {name for kind, name in objs if kind == "ConfigMap"}
    configmaps |= {g["name"] for g in yaml.safe_load((INFRA / "mlflow" / "kustomization.yaml").read_text())
                   ["configMapGenerator"]}
    claims = {name for kind, name in objs if kind == "PersistentVolumeClaim"}
    accounts = {name for kind, name in objs if kind == "ServiceAccount"}
    for (kind, name), obj in objs.items():
        if kind in ("Secret", "ConfigMap", "Service", "PersistentVolumeClaim", "ServiceAccount"):
            continue
        for key, value in walk(obj):
            if key == "secretRef":
                assert value["name"] in secrets, f"{kind}/{name}: Secret {value['name']} is not defined"
            elif key == "secretKeyRef":
                assert value["key"] in secrets[value["name"]]
            elif key == "configMap" and not value.get("optional"):
                assert value["name"] in configmaps, f"{kind}/{name}: ConfigMap {value['name']} is not defined"
            elif key == "persistentVolumeClaim":
                assert value["claimName"] in claims, f"{kind}/{name}: PVC {value['claimName']} is not defined"
            elif key == "serviceAccountName":
                assert value in accounts
        for pod in pod_specs(obj):
            volumes = {v["name"] for v in pod.get("volumes", [])}
            volumes |= {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
            for c in pod["containers"] + pod.get("initContainers", []):
                for m in c.get("volumeMounts", []):
                    assert m["name"] in volumes, f"{kind}/{name}: volumeMount {m['name']} has no volume"
    # the keys the server script insists on are all supplied by the Deployment's env and Secrets
    script = (INFRA / "mlflow" / "start-mlflow.sh").read_text()
    required = set(re.findall(r'\$\{([A-Z_]+):\?', script))
    deploy = objs[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]
    supplied = {e["name"] for e in deploy["env"]}
    for ref in deploy["envFrom"]:
        supplied |= secrets[ref["secretRef"]["name"]]
    assert required <= supplied, required - supplied
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD"} <= supplied
    compose_env = set(yaml.safe_load((INFRA / "mlflow" / "docker-compose.yaml").read_text())
                      ["services"]["mlflow"]["environment"])
    assert required | {"POSTGRES_USER", "POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD"} <= compose_env
    env_example = {line.split("=", 1)[0] for line in (INFRA / "mlflow" / "mlflow.env.example").read_text().splitlines()
                   if line and not line.startswith("#")}
    assert {"POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"} <= env_example


def test_one_bucket_and_prefixes_everywhere():
    text = "\n".join(p.read_text() for p in INFRA.rglob("*") if p.is_file() and p.suffix in (".yaml", ".json", ".example"))
    buckets = set(re.findall(r"s3://([a-z0-9.-]+)/", text)) | set(re.findall(r"arn:aws:s3:::([a-z0-9.-]+)", text))
    assert buckets == {BUCKET}, buckets
    for prefix in ("ray-results", "zoo", "mlflow-artifacts"):
        assert f"s3://{BUCKET}/{prefix}" in text


# ---------------------------------------------------------------------------------------------- images and scripts


def test_dockerfile_builds_maple_zoo_on_cuda():
    text = (INFRA / "docker" / "Dockerfile").read_text()
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:[\w.-]+-runtime-ubuntu", text) and "FROM ${CUDA_IMAGE}" in text
    assert "ARG PYTHON_VERSION=3.11" in text
    assert re.search(r'pip install "ray\[default,train,tune\]==\$\{RAY_VERSION\}" \.', text)
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "maple-zoo"]' in text
    for line in text.splitlines():  # every COPY source exists in the build context (the repository root)
        m = re.match(r"COPY (?:--\S+ )*(\S+) ", line)
        if m and not line.split()[1].startswith("--from"):
            assert (ROOT / m.group(1)).exists(), f"COPY {m.group(1)}: not in the repository"


def test_server_script_is_valid_sh():
    script = INFRA / "mlflow" / "start-mlflow.sh"
    assert script.stat().st_mode & 0o111, "start-mlflow.sh must be executable"
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True, timeout=30).returncode == 0
    text = script.read_text()
    assert "--app-name basic-auth" in text and "--artifacts-destination" in text and "--serve-artifacts" in text


def test_env_vars_named_in_infra_and_docs_exist():
    import mlflow.environment_variables as mev

    from maple_zoo import settings
    from maple_zoo.zoo import config as zoo_config

    known = {v for k, v in vars(settings).items() if k.startswith("ENV_") and isinstance(v, str)}
    known |= {v for d in (settings.ENV_STORAGE_S3, zoo_config.ENV_S3) for v in d.values()}
    known |= {zoo_config.ENV_CONFIG, zoo_config.ENV_STORE, zoo_config.ENV_CACHE, "MAPLE_ZOO_CACHE"}
    mlflow_known = {v.name for v in vars(mev).values() if isinstance(getattr(v, "name", None), str)}
    mlflow_known |= {p.envvar for p in mlflow_cli().commands["server"].params if isinstance(p.envvar, str)}
    mlflow_known |= {"MLFLOW_AUTH_DATABASE_URI", "MLFLOW_AUTH_DEFAULT_PERMISSION"}  # start-mlflow.sh's own
    files = [*DOCS, *(p for p in INFRA.rglob("*") if p.is_file())]
    for path in files:
        text = path.read_text()
        build_args = set(re.findall(r"^ARG (\w+)", text, re.M))  # a Dockerfile's own build arguments
        text = re.sub(r"\b(" + "|".join(build_args) + r")\b", "", text) if build_args else text
        for name in set(re.findall(r"\bMAPLE_ZOO_[A-Z_]*[A-Z]\b", text)):
            assert name in known, f"{path.relative_to(ROOT)}: {name} is not a maple-zoo variable"
        for name in set(re.findall(r"\bMLFLOW_[A-Z_]*[A-Z]\b", text)):
            assert name in mlflow_known, f"{path.relative_to(ROOT)}: {name} is not an MLflow variable"


# ---------------------------------------------------------------------------------------------- commands and flags


@cache
def maple_zoo_cli():
    import typer

    from maple_zoo.cli import app

    return typer.main.get_command(app)


@cache
def ray_cli():
    from ray.scripts.scripts import cli

    return cli


@cache
def mlflow_cli():
    from mlflow.cli import cli

    return cli


# Duck-typed: Typer vendors its own copy of click, so its commands are not click.Command instances.
def is_option(p) -> bool:
    return getattr(p, "param_type_name", "") == "option"


def option_names(cmd) -> set[str]:
    names = {"--help"}
    for p in cmd.params:
        if is_option(p):
            names |= set(p.opts) | set(p.secondary_opts)
    return names


def takes_value(cmd, opt: str) -> bool:
    for p in cmd.params:
        if is_option(p) and opt in p.opts:
            return not (p.is_flag or p.count)
    return False


CLIS = {"maple-zoo": maple_zoo_cli, "ray": ray_cli, "mlflow": mlflow_cli}
# where a command may start inside a line: the line start, after a shell separator, `--`, `exec`,
# or an opening backtick
START = re.compile(r"(?:^|&&\s*|;\s*|\|\s*|\s--\s+|\bexec\s+|`)(maple-zoo|ray|mlflow)(?=\s|$|`)")
END = re.compile(r"\s*(?:&&|;|\||`|>|\s#\s|$)")


def commands_in(text: str) -> list[str]:
    """Command strings starting with maple-zoo/ray/mlflow in a line of shell-like text."""
    found = []
    for m in START.finditer(text):
        rest = text[m.start(1):]
        end = END.search(rest)
        found.append(rest[:end.start()] if end else rest)
    return found


def check_command(line: str, where: str) -> list[str]:
    """Problems with one command line (empty = fine); nested `-- maple-zoo ...` entrypoints included."""
    try:
        tokens = shlex.split(line)
    except ValueError:  # a quote cut by `&&` inside it: plain words still show the flags
        tokens = line.split()
    if not tokens or tokens[0] not in CLIS:  # e.g. "maple-zoo"] in a Dockerfile's exec form
        return []
    cmd, path, problems = CLIS[tokens[0]](), [tokens[0]], []
    i = 1
    while i < len(tokens):
        tok = tokens[i]
        if tok == "--":  # `ray job submit ... -- <entrypoint>`
            for nested in commands_in(" ".join(tokens[i + 1:])):
                problems += check_command(nested, where)
            break
        if tok.startswith("-") and tok != "-":
            opt = tok.split("=", 1)[0]
            if opt not in option_names(cmd):
                problems.append(f"{where}: `{' '.join(path)} {opt}` does not exist")
            elif "=" not in tok and takes_value(cmd, opt):
                i += 1
        elif hasattr(cmd, "commands"):  # a group: the next word is a subcommand
            sub = cmd.commands.get(tok)
            if sub is None:
                problems.append(f"{where}: `{' '.join(path)} {tok}` is not a command")
                break
            cmd = sub
            path.append(tok)
        i += 1
    return problems


def command_lines() -> list[tuple[str, str]]:
    """(where, command) for every command written in infra/ and docs/operations.md."""
    out: list[tuple[str, str]] = []

    def add(where: str, text: str) -> None:
        out.extend((where, c) for c in commands_in(text.strip()))

    def logical_lines(text: str):
        buf = ""
        for n, line in enumerate(text.splitlines(), 1):
            if line.rstrip().endswith("\\"):
                buf += line.rstrip()[:-1] + " "
                continue
            yield n, buf + line
            buf = ""

    for path in DOCS + sorted(INFRA.rglob("*.md")):
        text, rel = path.read_text(), path.relative_to(ROOT)
        fenced = False
        for n, line in logical_lines(text):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            if fenced:
                add(f"{rel}:{n}", line.split(" # ")[0])
            else:  # inline code spans in prose
                for span in re.findall(r"`([^`]+)`", line):
                    add(f"{rel}:{n}", span)
    for path in sorted(p for p in INFRA.rglob("*") if p.is_file() and p.suffix not in (".md", ".json", ".sql")):
        text, rel = path.read_text(), path.relative_to(ROOT)
        for n, line in logical_lines(text):
            stripped = line.strip()
            if stripped.startswith("#"):
                # example commands in comments are indented: `#   ray up ...`; prose is not checked
                body = stripped.lstrip("#")
                if body.startswith("  "):
                    add(f"{rel}:{n}", body)
                for span in re.findall(r"`([^`]+)`", body):
                    add(f"{rel}:{n}", span)
            elif path.suffix not in (".yaml", ".yml"):
                add(f"{rel}:{n}", stripped)
        if path.suffix in (".yaml", ".yml"):
            for doc in yaml_docs(path):
                for _, value in walk(doc):
                    for s in value if isinstance(value, list) else [value]:
                        if isinstance(s, str):
                            for part in s.splitlines():
                                add(f"{rel} (value)", part)
    return out


def test_commands_and_flags_in_infra_and_docs_exist():
    lines = command_lines()
    problems = [p for where, line in lines for p in check_command(line, where)]
    assert not problems, "\n".join(problems)
    seen = {line for _, line in lines}
    # the extraction found the commands that matter (an empty extraction would pass vacuously)
    must = ["maple-zoo sweep sweeps/demo.yaml --address auto", "maple-zoo sweep sweeps/demo.yaml --resume --address auto",
            "ray up infra/ray/cluster-aws.yaml -y", "ray job submit", "ray start --head", "mlflow server",
            "maple-zoo promote", "maple-zoo pull", "ray start --address=127.0.0.1:6379"]
    for text in must:
        assert any(text in line for line in seen), f"no command containing {text!r} was found"
    server = [line for line in seen if re.match(r"mlflow server\s+--", line)]
    assert server and all("--app-name basic-auth" in line for line in server)


@pytest.mark.parametrize("line, problem", [
    ("maple-zoo sweep x.yaml --adress auto", "`maple-zoo sweep --adress` does not exist"),
    ("maple-zoo swep x.yaml", "`maple-zoo swep` is not a command"),
    ("ray start --head --dashbord-host=0.0.0.0", "`ray start --dashbord-host` does not exist"),
    ("mlflow server --app basic-auth", "`mlflow server --app` does not exist"),
    ('ray job submit --address x -- bash -c "cd a && maple-zoo sweep s.yaml --resum"', "`maple-zoo sweep --resum`"),
])
def test_the_command_checker_catches_mistakes(line, problem):
    problems = check_command(line, "t")
    assert problems and problem in problems[0], problems


def test_settings_module_flags_in_docs_exist():
    text = "\n".join(p.read_text() for p in DOCS + [INFRA / "README.md"])
    for m in re.finditer(r"python -m maple_zoo\.settings([^\n`]*)", text):
        flags = set(re.findall(r"(--[a-z-]+)", m.group(1)))
        assert flags <= {"--config", "--help"}, flags
