"""`edgemill agent bundle`: an offline install bundle, built and installed for real.

Offline tests build bundles with `--wheelhouse` (pip resolves from a local folder, pip's own settings
off): small made-up wheels for the resolution and the installer's upgrade logic, and wheels repacked
from this environment's own installed packages for a full install of the real agent. The `network`
test fetches a linux-aarch64 bundle from the package index (EDGEMILL_TEST_NETWORK=1).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.tags import Tag
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from edgemill import __version__
from edgemill.bundle import files as bundle_files
from edgemill.bundle.resolve import WheelInfo, resolve, supported_tags
from edgemill.bundle.target import host_platform, parse_target
from edgemill.bundle.wheel import write_wheel
from edgemill.agent.config import load_config
from edgemill.errors import OptionError

from .conftest import CliResult, run_cli


def extract_bundle(tar: tarfile.TarFile, dest: Path) -> None:
    """Unpack a bundle the safe way on every Python 3.11: the "data" filter where tarfile has it
    (3.11.4 and later), else the same refusals by hand (the bundle holds plain files and folders)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    for member in tar.getmembers():
        name = Path(member.name)
        if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
            raise AssertionError(f"unsafe bundle member {member.name!r}")
    tar.extractall(dest)


ROOT = Path(__file__).resolve().parent.parent
HOST = host_platform()
HOST_GLIBC = platform.libc_ver()[1] if platform.libc_ver()[0] == "glibc" else None
needs_host = pytest.mark.skipif(HOST is None or HOST_GLIBC is None or not Path("/bin/sh").exists(),
                                reason="installs on this machine: needs Linux with glibc on aarch64, x86_64 or armv7l")


# --- the device target: pure -------------------------------------------------------------------------


def test_glibc_target_accepts_every_older_manylinux_and_the_linux_tag() -> None:
    tags = parse_target("linux-aarch64", "3.11", libc_version="2.28").pip_platforms()
    assert tags[0] == "manylinux_2_28_aarch64"  # the newest first: pip prefers earlier tags
    assert {"manylinux_2_17_aarch64", "manylinux2014_aarch64", "manylinux_2_27_aarch64"} <= set(tags)
    assert tags[-1] == "linux_aarch64"  # wheels built on a device, given with --find-links
    assert "manylinux_2_29_aarch64" not in tags and not any("x86_64" in t or "musl" in t for t in tags)
    assert "manylinux1_x86_64" in parse_target("linux-x86_64", "3.11").pip_platforms()


def test_musl_target_lists_musllinux_tags_only() -> None:
    tags = parse_target("linux-x86_64", "3.12", libc="musl").pip_platforms()
    assert tags == ["musllinux_1_2_x86_64", "musllinux_1_1_x86_64", "musllinux_1_0_x86_64", "linux_x86_64"]


@pytest.mark.parametrize("args, needle", [
    (("linux-riscv64", "3.11"), "unknown --platform: 'linux-riscv64'"),
    (("linux-aarch64", "3"), "--python is not a version: '3'"),
    (("linux-aarch64", "2.7"), "Python 3.10 or newer"),
    (("linux-aarch64", "3.11", "glibc", "2.12"), "no wheels are built for glibc 2.12"),
    (("linux-aarch64", "3.11", "uclibc"), "unknown --libc: 'uclibc'"),
])
def test_bad_target_values_are_refused_with_the_value(args: tuple[str, ...], needle: str) -> None:
    with pytest.raises(OptionError) as caught:
        parse_target(*args)
    assert needle in caught.value.one_line()


def test_device_markers_and_tags_describe_the_device_not_this_machine() -> None:
    target = parse_target("linux-armv7l", "3.10.4")
    env = target.marker_environment()
    assert (env["platform_machine"], env["python_version"], env["python_full_version"]) == ("armv7l", "3.10", "3.10.4")
    tags = supported_tags(target)
    assert Tag("cp310", "cp310", "manylinux_2_17_armv7l") in tags and Tag("py3", "none", "any") in tags
    assert Tag("cp311", "cp311", "manylinux_2_17_armv7l") not in tags
    assert not any(t.platform.endswith("x86_64") for t in tags)


# --- the requirement closure: pure ---------------------------------------------------------------------


def _info(name: str, version: str = "1.0", *requires: str) -> WheelInfo:
    return WheelInfo(f"{name.replace('-', '_')}-{version}-py3-none-any.whl", canonicalize_name(name), Version(version),
                     requires, frozenset({Tag("py3", "none", "any")}))


def test_markers_are_evaluated_for_the_device() -> None:
    wheels = [_info("app", "1.0", "old-py; python_version < '3.11'", "arm-only; platform_machine == 'aarch64'",
                    "host-only; platform_machine == 'x86_64'"), _info("old-py"), _info("arm-only"), _info("host-only")]
    device = parse_target("linux-aarch64", "3.10").marker_environment()
    result = resolve(["app"], wheels, device)
    assert [w.name for w in result.needed] == ["app", "arm-only", "old-py"]
    assert [w.name for w in result.unused] == ["host-only"] and result.missing == ()
    other = resolve(["app"], wheels, parse_target("linux-x86_64", "3.12").marker_environment())
    assert [w.name for w in other.needed] == ["app", "host-only"]


def test_missing_and_too_old_requirements_are_named_with_who_needs_them() -> None:
    wheels = [_info("app", "2.0", "lib>=2", "absent[x]>1; sys_platform == 'linux'"), _info("lib", "1.5")]
    result = resolve(["app==2.0"], wheels, parse_target("linux-x86_64", "3.11").marker_environment())
    assert {(m.requirement, m.needed_by, m.found) for m in result.missing} == {
        ("lib>=2", "app 2.0", "1.5"), ("absent>1", "app 2.0", None)}


def test_extras_pull_their_requirements_and_the_newest_duplicate_wins() -> None:
    wheels = [_info("app", "1.0", "boto; extra == 's3'", "never; extra == 'server'"), _info("boto"), _info("never"),
              _info("boto", "0.9")]
    env = parse_target("linux-x86_64", "3.11").marker_environment()
    plain = resolve(["app"], wheels, env)
    assert [w.name for w in plain.needed] == ["app"]
    with_s3 = resolve(["app[s3]==1.0"], wheels, env)
    assert [(w.name, str(w.version)) for w in with_s3.needed] == [("app", "1.0"), ("boto", "1.0")]
    assert sorted(w.filename for w in with_s3.unused) == ["boto-0.9-py3-none-any.whl", "never-1.0-py3-none-any.whl"]


# --- the text files ------------------------------------------------------------------------------------


def test_bundled_unit_and_config_are_the_ones_in_deploy_systemd() -> None:
    assert bundle_files.SERVICE_UNIT == (ROOT / "deploy/systemd/edgemill-agent.service").read_text()
    assert bundle_files.AGENT_TOML == (ROOT / "deploy/systemd/agent.toml").read_text()
    assert "ExecStart=/opt/edgemill/venv/bin/edgemill agent --config /etc/edgemill/agent.toml" in bundle_files.SERVICE_UNIT


def test_config_template_loads_with_and_without_the_server_section(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(bundle_files.AGENT_TOML)
    config = load_config(path)
    assert config.models.trusted_keys == [Path("/etc/edgemill/keys/edgemill.pub")] and not config.server.url
    # Uncommenting the [server] block, as its comment says, gives a valid fleet config whose files the
    # sandboxed agent can write (the state directory, not /etc).
    head, _, block = bundle_files.AGENT_TOML.partition("# [server]")
    text = head + "[server]" + re.sub(r"^# ([a-z_]+ = .*)$", r"\1", block, flags=re.MULTILINE)
    fleet = load_config(_write(tmp_path / "fleet.toml", text))
    assert fleet.server.url == "https://fleet.example.com"
    assert fleet.server.credential_file == Path("/var/lib/edgemill/state/credential")
    assert fleet.server.token_file == Path("/etc/edgemill/token") and fleet.server.tags == {"site": "north"}


def test_install_script_is_posix_sh() -> None:
    script = bundle_files.install_sh({"BUNDLE_VERSION": "1.0", "BUNDLE_ID": "abc", "BUNDLE_PYTHON": "3.11"})
    assert script.startswith("#!/bin/sh\n") and "BUNDLE_PYTHON=3.11\n" in script
    for shell in ("sh", "dash", "bash", "busybox"):
        path = _which(shell)
        if path:
            argv = [path, "sh", "-n"] if shell == "busybox" else [path, "-n"]
            result = subprocess.run(argv, input=script, text=True, capture_output=True, timeout=30, check=False)
            assert result.returncode == 0, (shell, result.stderr)


# --- made-up wheels: resolution rounds, errors, the installer's upgrade path -----------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _which(name: str) -> str | None:
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if folder and os.access(os.path.join(folder, name), os.X_OK):
            return os.path.join(folder, name)
    return None


def _fake_wheel(dest: Path, name: str, version: str = "1.0", requires: tuple[str, ...] = (),
                script: str | None = None) -> Path:
    """A pure wheel with one module; ``script`` adds a console script of that name printing name+version."""
    module = canonicalize_name(name).replace("-", "_")
    src = dest.parent / f"src-{module}-{version}"
    src.mkdir(parents=True, exist_ok=True)
    (src / "__init__.py").write_text(f"def main():\n    print('{script} {version}')\n")
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    dist_info = {"METADATA": metadata.encode()}
    if script:
        dist_info["entry_points.txt"] = f"[console_scripts]\n{script} = {module}:main\n".encode()
    return write_wheel(dest, name, version, ["py3-none-any"], [(f"{module}/__init__.py", src / "__init__.py")], dist_info)


def _repack_installed(name: str, dest: Path, compression: int = zipfile.ZIP_STORED) -> Path:
    """A wheel of an installed (non-editable) distribution, from its RECORD and its WHEEL tags."""
    dist = importlib.metadata.distribution(name)
    base = Path(str(dist.locate_file("")))
    files, dist_info, tags = [], {}, []
    for entry in dist.files or []:
        if entry.parts[0] == ".." or entry.suffix == ".pyc" or "__pycache__" in entry.parts:
            continue  # scripts pip generated, byte code
        if entry.parts[0].endswith(".dist-info"):
            dist_info["/".join(entry.parts[1:])] = (base / entry).read_bytes()
        else:
            files.append((entry.as_posix(), base / entry))
    tags = [line.split(":", 1)[1].strip() for line in dist_info["WHEEL"].decode().splitlines() if line.startswith("Tag:")]
    return write_wheel(dest, dist.metadata["Name"], dist.version, tags, files, dist_info, compression=compression)


@pytest.fixture(scope="module")
def pip_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This environment's pip as a wheel: every bundle carries pip, install.sh runs it from the wheel."""
    return _repack_installed("pip", tmp_path_factory.mktemp("pip-wheel"), zipfile.ZIP_DEFLATED)


@pytest.fixture
def hermetic_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    """pip as a user without configuration: this machine's pip.conf names local indexes."""
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)


def _bundle(tmp: Path, *args: str | Path) -> tuple[CliResult, Path]:
    out = tmp / "bundle.tar"
    return run_cli("agent", "bundle", "-o", out, *args), out


def _members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return {m.name.split("/", 1)[1] if "/" in m.name else "": m for m in tar.getmembers()}


def test_wheels_only_the_device_needs_are_fetched_and_host_only_ones_left_out(tmp_path: Path, pip_wheel: Path) -> None:
    house = tmp_path / "house"
    app = _fake_wheel(house, "edgemill", "9.1", ("emtest-alpha", "emtest-beta; python_version < '3.11'",
                                               "emtest-gamma; platform_machine == 'aarch64'",
                                               "emtest-delta; python_version >= '3.11'"), script="edgemill")
    for name in ("emtest-alpha", "emtest-beta", "emtest-gamma", "emtest-delta"):
        _fake_wheel(house, name)
    (house / pip_wheel.name).write_bytes(pip_wheel.read_bytes())
    result, out = _bundle(tmp_path, "--platform", "linux-aarch64", "--python", "3.10", "--wheelhouse", house,
                          "--edgemill-wheel", app, "--json")
    assert result.code == 0, result.err
    if sys.version_info[:2] >= (3, 11) and platform.machine() != "aarch64":  # pip judged beta and gamma by this host
        assert "the device also needs" in result.err and "emtest-beta" in result.err and "emtest-gamma" in result.err
    names = {parse_wheel_filename(m.split("/")[-1])[0] for m in _members(out) if m.startswith("wheels/") and m.endswith(".whl")}
    assert names == {"edgemill", "emtest-alpha", "emtest-beta", "emtest-gamma", "pip"}
    manifest = json.loads(result.out)
    assert (manifest["platform"], manifest["python"], manifest["edgemill_version"]) == ("linux-aarch64", "3.10", "9.1")
    members = _members(out)
    assert members["install.sh"].mode == 0o755 and members["wheels"].isdir()
    assert {"agent.toml", "edgemill-agent.service", "bundle.json", "SHA256SUMS", "README.txt"} <= set(members)
    with tarfile.open(out) as tar:
        top = tar.getnames()[0]
        extract_bundle(tar, tmp_path / "x")
    root = tmp_path / "x" / top
    assert top == "edgemill-agent-9.1-linux-aarch64-py3.10"
    assert json.loads((root / "bundle.json").read_text())["wheels"] == manifest["wheels"]
    script = (root / "install.sh").read_text()
    assert "BUNDLE_PYTHON=3.10\n" in script and "BUNDLE_ARCH=aarch64\n" in script
    assert "BUNDLE_REQUIREMENT=edgemill==9.1\n" in script
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=root, capture_output=True, text=True, timeout=60,
                           check=False)
    assert check.returncode == 0 and check.stdout.count(": OK") == 5, check.stdout + check.stderr


def test_a_wheel_missing_for_the_platform_is_named_with_the_fix(tmp_path: Path, pip_wheel: Path) -> None:
    house = tmp_path / "house"
    app = _fake_wheel(house, "edgemill", "9.1", ("emtest-alpha", "emtest-gamma>=2"), script="edgemill")
    _fake_wheel(house, "emtest-alpha")
    _fake_wheel(house, "emtest-gamma", "1.0")  # too old
    (house / pip_wheel.name).write_bytes(pip_wheel.read_bytes())
    result, out = _bundle(tmp_path, "--platform", "linux-armv7l", "--wheelhouse", house, "--edgemill-wheel", app)
    assert result.code == 1 and "Traceback" not in result.err
    last = result.err.strip().splitlines()[-1]
    assert last.startswith("edgemill: error: no wheel of emtest-gamma>=2 for linux-armv7l (glibc >= 2.28), CPython")
    assert "versions seen for this platform: 1.0" in last and "--find-links DIR" in last and "--python" in last
    assert not out.exists() and not list(tmp_path.glob(".bundle.tar.*"))


def test_an_unreachable_index_is_reported_as_such(tmp_path: Path, hermetic_pip: None) -> None:
    from ._agent import free_port

    app = _fake_wheel(tmp_path / "own", "edgemill", "9.1", ("emtest-alpha",), script="edgemill")
    url = f"http://127.0.0.1:{free_port()}/simple"  # nothing listens there
    result, out = _bundle(tmp_path, "--platform", "linux-aarch64", "--index-url", url, "--edgemill-wheel", app)
    assert result.code == 1 and "Traceback" not in result.err
    last = result.err.strip().splitlines()[-1]
    assert last.startswith("edgemill: error: the package index could not be reached while looking for")
    assert "--index-url" in last and "--wheelhouse" in last and not out.exists()


@pytest.mark.parametrize("args, code, needle", [
    (("--platform", "linux-sparc"), 2, "invalid choice: 'linux-sparc'"),
    (("--platform", "linux-aarch64", "--extra", "server"), 1, "not an extra for devices: 'server'"),
    (("--platform", "linux-aarch64", "--wheelhouse", ".", "--index-url", "http://x"), 2, "--wheelhouse takes every"),
    (("--platform", "linux-aarch64", "--find-links", "/no/such/dir"), 1, "no such wheel folder: '/no/such/dir'"),
    (("--platform", "linux-aarch64", "--python", "3.x"), 1, "--python is not a version"),
])
def test_bad_options_are_refused_before_any_work(tmp_path: Path, args: tuple[str, ...], code: int, needle: str) -> None:
    result, out = _bundle(tmp_path, *args)
    assert result.code == code and needle in result.err and "Traceback" not in result.err
    assert not out.exists()


def test_an_existing_bundle_is_kept_unless_forced(tmp_path: Path) -> None:
    out = _write(tmp_path / "bundle.tar", "mine")
    result = run_cli("agent", "bundle", "--platform", "linux-aarch64", "-o", out)
    assert result.code == 1 and "the output exists" in result.err and "--force" in result.err
    assert out.read_text() == "mine"


def test_agent_without_an_action_still_runs_the_daemon_path() -> None:
    result = run_cli("agent")
    assert result.code == 2 and "no configuration given" in result.err


def _host_bundle(tmp: Path, pip_wheel: Path, version: str, name: str) -> Path:
    """An unpacked bundle of a made-up edgemill ``version`` for this machine."""
    house = tmp / f"house-{name}"
    app = _fake_wheel(house, "edgemill", version, ("emtest-alpha",), script="edgemill")
    _fake_wheel(house, "emtest-alpha")
    (house / pip_wheel.name).write_bytes(pip_wheel.read_bytes())
    out = tmp / f"{name}.tar.gz"
    result = run_cli("agent", "bundle", "--platform", HOST, "--libc-version", HOST_GLIBC, "--wheelhouse", house,
                     "--edgemill-wheel", app, "-o", out)
    assert result.code == 0, result.err
    assert out.read_bytes()[:2] == b"\x1f\x8b"  # .tar.gz: compressed
    with tarfile.open(out) as tar:
        top = tar.getnames()[0]
        extract_bundle(tar, tmp / name)
    return tmp / name / top


def _install(bundle: Path, root: Path, script: str = "install.sh", **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "EDGEMILL_PREFIX": str(root / "opt"), "EDGEMILL_CONFIG_DIR": str(root / "etc"),
                   "EDGEMILL_UNIT_DIR": str(root / "systemd"), "EDGEMILL_SYSTEMD": "no", **env}
    return subprocess.run(["sh", str(bundle / script)], env=environment, capture_output=True, text=True, timeout=300,
                          check=False)


def _variant(bundle: Path, **facts: str) -> str:
    """A copy of install.sh beside it with some bundle facts changed: a bundle made for another device."""
    text = (bundle / "install.sh").read_text()
    for key, value in facts.items():
        text, count = re.subn(rf"^{key}=.*$", f"{key}={value}", text, flags=re.MULTILINE)
        assert count == 1
    name = "install-" + "-".join(f"{k}{v}" for k, v in facts.items()) + ".sh"
    _write(bundle / name, text)
    return name


@needs_host
def test_installer_refuses_another_device_and_a_damaged_bundle_before_changing_anything(tmp_path: Path,
                                                                                          pip_wheel: Path) -> None:
    bundle = _host_bundle(tmp_path, pip_wheel, "9.1", "one")
    root = tmp_path / "device"
    other_arch = "armv7l" if platform.machine() != "armv7l" else "x86_64"
    cases = [
        ({"EDGEMILL_PYTHON": "/no/python3"}, "install.sh",
         "'/no/python3' not found: this bundle needs Python"),
        ({}, _variant(bundle, BUNDLE_PYTHON="3.99"), "this bundle is for Python 3.99, but"),
        ({}, _variant(bundle, BUNDLE_ARCH=other_arch), f"this bundle is for linux-{other_arch}, but this device's Python"),
        ({}, _variant(bundle, BUNDLE_LIBC_VERSION="2.99"), "this bundle needs glibc 2.99 or newer; this device has glibc"),
        ({"EDGEMILL_PREFIX": "relative/opt"}, "install.sh", "'relative/opt' is not an absolute path"),
    ]
    for env, script, needle in cases:
        result = _install(bundle, root, script, **env)
        assert result.returncode == 1 and needle in result.stderr, (needle, result.stderr)
    wheel = next((bundle / "wheels").glob("emtest_alpha-*.whl"))
    wheel.write_bytes(wheel.read_bytes() + b"x")
    result = _install(bundle, root)
    assert result.returncode == 1 and f"wheels/{wheel.name} does not match its sha256" in result.stderr
    assert not root.exists()  # every refusal came before the first change


@pytest.mark.slow
@needs_host
def test_installer_upgrades_keeps_one_previous_version_and_never_overwrites_the_config(tmp_path: Path,
                                                                                        pip_wheel: Path) -> None:
    root = tmp_path / "device"
    opt = root / "opt"
    first, second, third = (_host_bundle(tmp_path, pip_wheel, v, n) for v, n in
                            (("9.1", "one"), ("9.2", "two"), ("9.3", "three")))
    result = _install(first, root)
    assert result.returncode == 0, result.stderr
    assert _run(opt / "venv/bin/edgemill", "--version") == "edgemill 9.1"
    assert "systemd is not running here" in result.stdout and "Next steps" in result.stdout
    _write(root / "etc/agent.toml", "# edited on the device\n")
    again = _install(first, root)
    assert again.returncode == 0 and "is already in" in again.stdout and "kept " in again.stdout

    assert _install(second, root).returncode == 0
    assert _run(opt / "venv/bin/edgemill", "--version") == "edgemill 9.2"
    assert _run(opt / "venv.previous/bin/edgemill", "--version") == "edgemill 9.1"
    result = _install(third, root)
    assert result.returncode == 0 and "removing the older" in result.stdout
    assert sorted(p.name.split("-")[1] for p in (opt / "venvs").iterdir()) == ["9.2", "9.3"]
    assert _run(opt / "venv/bin/edgemill", "--version") == "edgemill 9.3"
    assert (root / "etc/agent.toml").read_text() == "# edited on the device\n"
    # Rolling back is installing the older bundle again.
    assert _install(second, root).returncode == 0
    assert _run(opt / "venv/bin/edgemill", "--version") == "edgemill 9.2"
    assert _run(opt / "venv.previous/bin/edgemill", "--version") == "edgemill 9.3"


def _run(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120, check=True).stdout.strip()


# --- the real agent, offline -----------------------------------------------------------------------------


def _device_closure() -> list[str]:
    """This environment's distributions that a bare `pip install edgemill` needs, pip included."""
    seen: dict[str, str] = {}
    queue = list(importlib.metadata.requires("edgemill") or []) + ["pip"]
    while queue:
        req = Requirement(queue.pop())
        name = canonicalize_name(req.name)
        if (req.marker and not req.marker.evaluate({"extra": ""})) or name in seen:
            continue
        seen[name] = req.name
        queue += importlib.metadata.requires(name) or []
    return sorted(seen.values())


@pytest.mark.slow
@needs_host
def test_bundle_installs_the_real_agent_with_no_index(tmp_path: Path) -> None:
    house = tmp_path / "house"
    for name in _device_closure():
        _repack_installed(name, house)
    result, out = _bundle(tmp_path, "--platform", HOST, "--libc-version", HOST_GLIBC, "--wheelhouse", house)
    assert result.code == 0, result.err
    assert "wheels, " in result.out and "On the device: tar -xf bundle.tar" in result.out
    with tarfile.open(out) as tar:
        top = tar.getnames()[0]
        extract_bundle(tar, tmp_path / "x")
    bundle = tmp_path / "x" / top
    manifest = json.loads((bundle / "bundle.json").read_text())
    own = next(w for w in manifest["wheels"] if w["name"] == "edgemill")
    assert own["file"] == f"edgemill-{__version__}-py3-none-any.whl" and manifest["python"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    # The edgemill wheel carries the generated gRPC stubs and no byte code.
    with zipfile.ZipFile(bundle / "wheels" / own["file"]) as wheel:
        names = wheel.namelist()
    assert "edgemill/agent/_proto/edgemill/v1/agent_pb2.py" in names and not any(n.endswith(".pyc") for n in names)

    root = tmp_path / "device"
    result = _install(bundle, root)
    assert result.returncode == 0, result.stdout + result.stderr
    edgemill = root / "opt/venv/bin/edgemill"
    assert _run(edgemill, "--version") == f"edgemill {__version__}"
    # The new environment is its own: its edgemill is the wheel's copy, not this checkout.
    where = _run(root / "opt/venv/bin/python", "-c", "import edgemill, onnxruntime, grpc; print(edgemill.__file__)")
    assert Path(where).resolve().is_relative_to(root / "opt/venvs")
    unit = (root / "systemd/edgemill-agent.service").read_text()
    assert f"ExecStart={root}/opt/venv/bin/edgemill agent --config {root}/etc/agent.toml" in unit
    config = load_config(root / "etc/agent.toml")
    assert config.models.trusted_keys == [root / "etc/keys/edgemill.pub"] and (root / "etc/keys").is_dir()


@pytest.mark.network
@pytest.mark.parametrize("python", ["3.11", "3.10"])
def test_aarch64_bundle_from_the_package_index(tmp_path: Path, python: str) -> None:
    out = tmp_path / "a64.tar"
    result = run_cli("agent", "bundle", "--platform", "linux-aarch64", "--python", python, "-o", out, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    names = {w["name"] for w in report["wheels"]}
    assert {"edgemill", "onnxruntime", "numpy", "grpcio", "protobuf", "cryptography", "pydantic-core", "pip"} <= names
    # pip on this machine skips tomli (python_version < "3.11" is false here); the device needs it.
    assert ("tomli" in names) == (python == "3.10")
    target = parse_target("linux-aarch64", python)
    aarch64 = supported_tags(target)
    for wheel in report["wheels"]:
        tags = parse_wheel_filename(wheel["file"])[3]
        assert all(t.platform == "any" or t.platform.endswith("_aarch64") for t in tags), wheel["file"]
        assert tags & aarch64, wheel["file"]
    with tarfile.open(out) as tar:
        extract_bundle(tar, tmp_path / "x")
    wheels = next((tmp_path / "x").iterdir()) / "wheels"
    assert sorted(p.name for p in wheels.iterdir()) == sorted(w["file"] for w in report["wheels"])
    # What pip on the device will do, short of running aarch64 code: resolve edgemill from the
    # bundle's folder alone for aarch64 wheel tags.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    platforms = [arg for tag in target.pip_platforms() for arg in ("--platform", tag)]
    dry = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--target",
                          str(tmp_path / "t"), "--no-index", "--find-links", str(wheels), "--only-binary=:all:",
                          "--python-version", python, "--implementation", "cp", *platforms, "edgemill", "pip"],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert dry.returncode == 0 and "Would install" in dry.stdout, dry.stdout + dry.stderr
    print(f"\naarch64 / Python {python} bundle: {report['size_bytes'] / 1e6:.1f} MB, {len(report['wheels'])} wheels, "
          f"{report['seconds']} s")
