"""soul-mcp installed the ways people install MCP servers, each driven by a real stdio client.

The sdist and the wheel are built once (uv build, into a temporary folder). The wheel is installed
with pip into a fresh venv and run from there with its working directory outside the source tree;
`uvx --from <wheel>` runs it too; packaging/build_mcpb.py turns it into a Claude Desktop bundle,
which the official MCPB CLI validates, packs and unpacks, and the server is then started exactly as
the bundle's manifest says, resolved by the MCPB library's own getMcpConfigForManifest. server.json
is checked against the MCP registry's published schema and against the package it describes.

The tests talk to loopback only: the third-party packages they install (the wheel's dependencies,
the build backend, the bundle's lock for every platform) are downloaded beforehand by
.ci/prepare-packaging, which .ci/run calls, into .ci/packaging-cache/: pip installs from its
wheelhouse with --no-index, and uv runs offline on its cache. What the tests build (the sdist, the
wheel, the bundle) they build from the working tree.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import NODE_TOOLS, ROOT, server_env
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from soul_mcp import __version__
from soul_mcp.server.tools import TOOLS

if sys.version_info >= (3, 11):
    import tomllib
else:  # tomli comes with the dev extra's tools on 3.10
    import tomli as tomllib

pytestmark = pytest.mark.slow

TIMEOUT = 300  # seconds for a build or an install; generous for a loaded 2-core machine
HANDSHAKE_VERSION = "2025-11-25"  # what Claude Desktop and most hosts speak today
WHEEL = f"soul_mcp-{__version__}-py3-none-any.whl"
SDIST = f"soul_mcp-{__version__}.tar.gz"
PREPARED = ROOT / ".ci" / "packaging-cache"  # written by .ci/prepare-packaging
PREPARE = "run .ci/prepare-packaging: it downloads what these tests install, offline"


def require(found: object, what: str, how: str) -> None:
    """A missing tool fails under CI and skips elsewhere, saying how to get it."""
    if found:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing under CI ({how})")
    pytest.skip(f"{what} is missing: {how}")


def run(command: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, **options)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def uv() -> Path:
    binary = Path(sys.executable).parent / "uv"
    require(binary.exists(), "uv", ".venv/bin/pip install -e '.[dev]'")
    return binary


def requirements(wheel: Path) -> str:
    """The wheel's Requires-Dist lines, sorted: what .ci/prepare-packaging prepared for."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    return "\n".join(sorted(line for line in lines if line.startswith("Requires-Dist:")))


@pytest.fixture(scope="module")
def uv_env() -> dict[str, str]:
    """uv's settings for this module: offline, on the cache .ci/prepare-packaging warmed (not the
    user's), with this interpreter's Python (uv would download one otherwise)."""
    require((PREPARED / "prepared-for").exists(), "the packaging cache (.ci/packaging-cache/)", PREPARE)
    return {
        "UV_CACHE_DIR": str(PREPARED / "uv"),
        "UV_OFFLINE": "1",
        "UV_PYTHON": sys.executable,
        "UV_PYTHON_DOWNLOADS": "never",
    }


def pip_env() -> dict[str, str]:
    """pip with no configuration of this machine's (its indexes, find-links, constraints): the
    command line says where packages come from."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull}


@dataclass(frozen=True)
class Built:
    wheel: Path
    sdist: Path


@pytest.fixture(scope="module")
def built(uv: Path, uv_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Built:
    """`uv build`: the sdist from the source tree, then the wheel from the sdist (so a file the
    sdist leaves out and the wheel needs breaks the build)."""
    out = tmp_path_factory.mktemp("dist")
    run([str(uv), "build", "--out-dir", str(out), str(ROOT)], env={**os.environ, **uv_env})
    assert sorted(path.name for path in out.glob("soul_mcp-*")) == [WHEEL, SDIST]
    prepared_for = (PREPARED / "prepared-for").read_text(encoding="utf-8").strip()
    require(
        prepared_for == requirements(out / WHEEL), "a packaging cache for the current dependencies", PREPARE
    )
    return Built(out / WHEEL, out / SDIST)


@pytest.fixture(scope="module")
def mcpb_cli() -> Path:
    """The official MCPB CLI, pinned in .ci/package.json and installed by .ci/run."""
    cli = NODE_TOOLS / ".bin" / "mcpb"
    require(cli.exists(), "the MCPB CLI", "npm install --prefix .ci")
    return cli


def tool_names() -> list[str]:
    return [tool.name for tool in TOOLS]


async def use_the_server(params: StdioServerParameters, db: Path, note: str) -> None:
    """What a host does first: the handshake, tools/list, wake_up; then remember and recall."""
    async with Client(params, mode="legacy", read_timeout_seconds=120) as client:
        assert client.protocol_version == HANDSHAKE_VERSION
        assert client.server_info is not None and client.server_info.version == __version__
        assert [tool.name for tool in (await client.list_tools()).tools] == tool_names()

        woke = await client.call_tool("wake_up", {})
        assert not woke.is_error, woke.content
        stored = await client.call_tool("remember", {"content": note, "tags": ["packaging"]})
        assert not stored.is_error, stored.content
        memory_id = stored.structured_content["memory"]["id"]
        found = await client.call_tool("recall", {"query": note.split()[-1]})
        assert [hit["id"] for hit in found.structured_content["hits"]] == [memory_id]
        again = await client.call_tool("wake_up", {})
        assert note in again.content[0].text
    assert db.exists()


def params_for(
    command: str, args: list[str], db: Path, cwd: Path, extra_env: dict[str, str]
) -> StdioServerParameters:
    env = {**server_env(db), **extra_env}
    return StdioServerParameters(command=command, args=args, env=env, cwd=str(cwd))


# The wheel and the sdist ------------------------------------------------------------------------


def source_files() -> set[str]:
    """Every file of the package in the source tree, as the wheel names it (caches left out)."""
    package = ROOT / "soul_mcp"
    return {
        path.relative_to(ROOT).as_posix()
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def test_wheel_carries_the_whole_package_and_nothing_else(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as wheel:
        names = set(wheel.namelist())
        dist_info = f"soul_mcp-{__version__}.dist-info"
        metadata = wheel.read(f"{dist_info}/METADATA").decode()
        entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
    # Every file under soul_mcp/ (code or data): the server reads nothing from the source tree.
    assert sorted(source_files() - names) == []
    # Nothing but the package and its metadata: no tests, benchmarks, CI files, docs or examples.
    assert sorted(name for name in names if not name.startswith(("soul_mcp/", f"{dist_info}/"))) == []
    assert f"{dist_info}/licenses/LICENSE" in names
    assert re.search(rf"^Version: {re.escape(__version__)}$", metadata, flags=re.MULTILINE)
    assert re.search(r"^soul-mcp = soul_mcp\.cli:main$", entry_points, flags=re.MULTILINE)
    # The README is the PyPI description, with the line the MCP registry verifies ownership by.
    assert f"mcp-name: {server_json()['name']}" in metadata


def test_sdist_carries_what_builds_the_wheel_and_the_linked_docs_only(built: Built) -> None:
    with tarfile.open(built.sdist) as sdist:
        top = f"soul_mcp-{__version__}/"
        names = {member.name.removeprefix(top) for member in sdist.getmembers() if member.isfile()}
    assert {"pyproject.toml", "README.md", "LICENSE", "PKG-INFO", "server.json"} <= names
    assert sorted(source_files() - names) == []
    assert sorted(name for name in names if name.startswith(("tests/", "bench/", ".ci/", "packaging/"))) == []


@pytest.mark.anyio
async def test_wheel_in_a_fresh_venv_serves_a_stdio_client(built: Built, tmp_path: Path) -> None:
    venv = tmp_path / "fresh-venv"
    run([sys.executable, "-m", "venv", str(venv)])
    # pip as a user runs it, not editable; the dependencies from the prepared wheelhouse.
    wheelhouse = ["--no-index", "--find-links", str(PREPARED / "wheelhouse")]
    run([str(venv / "bin" / "pip"), "install", "--quiet", *wheelhouse, str(built.wheel)], env=pip_env())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The package is imported from the venv, not from the source tree.
    where = run(
        [str(venv / "bin" / "python"), "-c", "import soul_mcp; print(soul_mcp.__file__)"],
        cwd=elsewhere,
        env={"PATH": os.environ["PATH"]},
    )
    assert Path(where.stdout.strip()).is_relative_to(venv)

    db = tmp_path / "soul.db"
    params = params_for(str(venv / "bin" / "soul-mcp"), ["serve", "--db", str(db)], db, elsewhere, {})
    await use_the_server(params, db, "Installed from the wheel into a fresh venv")


@pytest.mark.anyio
async def test_uvx_from_the_wheel_serves_a_stdio_client(
    built: Built, uv: Path, uv_env: dict[str, str], tmp_path: Path
) -> None:
    uvx = uv.parent / "uvx"
    require(uvx.exists(), "uvx", ".venv/bin/pip install -e '.[dev]'")
    db = tmp_path / "soul.db"
    args = ["--from", str(built.wheel), "soul-mcp", "serve", "--db", str(db)]
    await use_the_server(
        params_for(str(uvx), args, db, tmp_path, uv_env), db, "Started by uvx from the wheel"
    )


# The Claude Desktop bundle ----------------------------------------------------------------------

# getMcpConfigForManifest is what a host runs to turn a manifest into a command: ${__dirname} and
# ${user_config.*} substituted, defaults applied.
RESOLVE = """
const [index, folder, userConfig] = process.argv.slice(1);
const { getMcpConfigForManifest } = await import(index);
const { readFileSync } = await import("node:fs");
const manifest = JSON.parse(readFileSync(`${folder}/manifest.json`, "utf-8"));
const config = await getMcpConfigForManifest({
  manifest, extensionPath: folder, systemDirs: {}, userConfig: JSON.parse(userConfig), pathSeparator: "/",
});
console.log(JSON.stringify(config));
"""


@dataclass(frozen=True)
class Bundle:
    path: Path
    folder: Path  # unpacked by `mcpb unpack`
    manifest: dict[str, Any]


@pytest.fixture(scope="module")
def bundle(
    built: Built, mcpb_cli: Path, uv_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Bundle:
    out = tmp_path_factory.mktemp("bundle")
    # The script validates the manifest and packs with the MCPB CLI; either failing fails here.
    run(
        [
            sys.executable,
            str(ROOT / "packaging" / "build_mcpb.py"),
            "--wheel",
            str(built.wheel),
            "--out",
            str(out),
        ],
        env={**os.environ, **uv_env},
    )
    path = out / f"soul-mcp-{__version__}.mcpb"
    folder = out / "unpacked"
    run([str(mcpb_cli), "unpack", str(path), str(folder)])
    run([str(mcpb_cli), "validate", str(folder / "manifest.json")])
    return Bundle(path, folder, json.loads((folder / "manifest.json").read_text(encoding="utf-8")))


def resolved_config(bundle: Bundle, user_config: dict[str, str]) -> dict[str, Any]:
    node = shutil.which("node")
    require(node, "node", "install Node.js")
    index = (NODE_TOOLS / "@anthropic-ai" / "mcpb" / "dist" / "index.js").as_uri()
    done = run(
        [str(node), "--input-type=module", "-e", RESOLVE, index, str(bundle.folder), json.dumps(user_config)]
    )
    return json.loads(done.stdout)


def bundle_params(
    config: dict[str, Any], uv: Path, db: Path, cwd: Path, env: dict[str, str]
) -> StdioServerParameters:
    """The resolved config's command found on PATH, as a host finds it: the host has its own uv,
    here it is the venv's."""
    path = f"{uv.parent}{os.pathsep}{os.environ['PATH']}"
    command = shutil.which(config["command"], path=path)
    assert command is not None and Path(command) == uv, config
    return params_for(command, config["args"], db, cwd, {**env, "PATH": path})


def test_bundle_holds_the_wheel_its_lock_and_a_manifest_of_the_servers_tools(
    bundle: Bundle, built: Built
) -> None:
    with zipfile.ZipFile(bundle.path) as archive:
        names = sorted(archive.namelist())
        packed_wheel = archive.read(f"wheels/{WHEEL}")
    assert names == sorted(
        ["LICENSE", "manifest.json", "pyproject.toml", "server/main.py", "uv.lock", f"wheels/{WHEEL}"]
    )
    assert packed_wheel == built.wheel.read_bytes()

    manifest = bundle.manifest
    assert (manifest["manifest_version"], manifest["name"], manifest["version"]) == (
        "0.4",
        "soul-mcp",
        __version__,
    )
    assert [tool["name"] for tool in manifest["tools"]] == tool_names()
    assert all(tool["description"].endswith(".") for tool in manifest["tools"])
    server = manifest["server"]
    assert (server["type"], server["entry_point"]) == ("uv", "server/main.py")
    assert (bundle.folder / server["entry_point"]).is_file()
    # The database is the one setting; empty means the default file every other client shares.
    assert manifest["user_config"]["database"]["type"] == "file"
    assert manifest["user_config"]["database"]["default"] == ""
    assert server["mcp_config"]["env"] == {"SOUL_MCP_DB": "${user_config.database}"}

    # The lock pins soul-mcp to the bundled wheel and the same version.
    lock = tomllib.loads((bundle.folder / "uv.lock").read_text(encoding="utf-8"))
    (locked,) = [package for package in lock["package"] if package["name"] == "soul-mcp"]
    assert locked["version"] == __version__
    assert locked["source"] == {"path": f"wheels/{WHEEL}"}


@pytest.mark.anyio
async def test_bundle_starts_as_its_manifest_says_with_the_database_setting(
    bundle: Bundle, uv: Path, uv_env: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "chosen" / "soul.db"
    db.parent.mkdir()
    config = resolved_config(bundle, {"database": str(db)})
    assert config["env"] == {"SOUL_MCP_DB": str(db)}
    params = bundle_params(config, uv, db, tmp_path, {**uv_env, **config["env"]})
    await use_the_server(params, db, "Started from the Claude Desktop bundle")


@pytest.mark.anyio
async def test_bundle_without_a_database_setting_uses_the_default_file(
    bundle: Bundle, uv: Path, uv_env: dict[str, str], tmp_path: Path
) -> None:
    config = resolved_config(bundle, {})
    assert config["env"] == {"SOUL_MCP_DB": ""}
    # The platform's default folder, moved into tmp_path: XDG_DATA_HOME on Linux.
    data_home = tmp_path / "data"
    default_db = data_home / "soul-mcp" / "soul.db"
    env = {**uv_env, **config["env"], "XDG_DATA_HOME": str(data_home)}
    params = bundle_params(config, uv, default_db, tmp_path, env)
    assert params.env is not None and params.env["SOUL_MCP_DB"] == ""
    await use_the_server(params, default_db, "Started from the bundle on the default database")


# server.json for the MCP registry ---------------------------------------------------------------


def server_json() -> dict[str, Any]:
    return json.loads((ROOT / "server.json").read_text(encoding="utf-8"))


def registry_schema(declared: str) -> dict[str, Any]:
    """The registry's published schema for the version server.json declares, as the skillsaw
    package ships it (byte for byte the file the registry publishes)."""
    match = re.fullmatch(
        r"https://static\.modelcontextprotocol\.io/schemas/(\d{4})-(\d\d)-(\d\d)/server\.schema\.json",
        declared,
    )
    assert match, f"server.json's $schema is not a published registry schema: {declared}"
    shipped = importlib.util.find_spec("skillsaw") is not None
    require(
        shipped, "skillsaw (it ships the registry's server.json schema)", ".venv/bin/pip install -e '.[dev]'"
    )
    folder = importlib.resources.files("skillsaw.schemas.mcp_registry") / f"v{'_'.join(match.groups())}"
    schema = json.loads((folder / "server.schema.json").read_text("utf-8"))
    assert schema["$id"] == declared
    return schema


def test_server_json_is_valid_against_the_registrys_published_schema() -> None:
    from jsonschema import Draft7Validator

    document = server_json()
    schema = registry_schema(document["$schema"])
    validator = Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)
    assert [f"{list(error.path)}: {error.message}" for error in validator.iter_errors(document)] == []
    # The schema checks itself too: a document it rejects is rejected.
    assert not validator.is_valid({**document, "description": "x" * 101})


def registry_lint(folder: Path) -> subprocess.CompletedProcess[str]:
    """skillsaw's registry rules over a folder holding a server.json: the publishing constraints
    the schema cannot express (an exact package version, the name's shape)."""
    rules = ["--rule", "mcp-registry-server-json-valid", "--rule", "mcp-registry-version-semver"]
    command = [sys.executable, "-m", "skillsaw", "lint", "-q", "--strict", "--no-progress", "--no-color"]
    return subprocess.run(
        [*command, "--type", "mcp-registry", *rules, str(folder)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_server_json_meets_the_registrys_publishing_rules(tmp_path: Path) -> None:
    require(importlib.util.find_spec("skillsaw"), "skillsaw", ".venv/bin/pip install -e '.[dev]'")
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    document = server_json()
    (good / "server.json").write_text(json.dumps(document), encoding="utf-8")
    linted = registry_lint(good)
    assert linted.returncode == 0, linted.stdout + linted.stderr

    # The rules run: a version range where the registry wants one release is refused.
    (package,) = document["packages"]
    wrong = {**document, "packages": [{**package, "version": f">={__version__}"}]}
    (bad / "server.json").write_text(json.dumps(wrong), encoding="utf-8")
    refused = registry_lint(bad)
    assert refused.returncode == 1
    assert "packages[0].version must identify one exact release" in refused.stdout


def test_server_json_describes_this_package() -> None:
    document = server_json()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (package,) = document["packages"]
    assert document["version"] == package["version"] == __version__
    assert (package["registryType"], package["identifier"]) == ("pypi", project["name"])
    assert package["transport"] == {"type": "stdio"}
    # `uvx soul-mcp serve`: the console script and the command that serves.
    assert project["scripts"]["soul-mcp"] == "soul_mcp.cli:main"
    assert (package["runtimeHint"], package["packageArguments"]) == (
        "uvx",
        [{"type": "positional", "value": "serve"}],
    )
    assert [variable["name"] for variable in package["environmentVariables"]] == ["SOUL_MCP_DB"]
    # The name's owner is the GitHub account that publishes; the README carries it for PyPI.
    assert re.fullmatch(r"io\.github\.[A-Za-z0-9-]+/soul-mcp", document["name"])
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.findall(r"mcp-name: (\S+)", readme) == [document["name"]]
