"""Build hook: generate the agent's gRPC stubs from proto/ whenever the package is built.

The .proto files are the source of truth; the generated modules land in
src/edgemill/agent/_proto/ (git-ignored) so that regular and editable installs both carry them.
Everything else about the package lives in pyproject.toml.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop
from setuptools.command.egg_info import egg_info

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = ROOT / "proto"
OUT_ROOT = ROOT / "src"
PACKAGE = "edgemill/agent/_proto"  # where the stubs live, as a path under src/


def generate_stubs() -> None:
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    if not protos:
        return
    outputs = [OUT_ROOT / PACKAGE / p.relative_to(PROTO_ROOT).with_name(p.stem + "_pb2.py") for p in protos]
    newest = max(p.stat().st_mtime for p in protos + [Path(__file__)])
    if all(o.exists() and o.stat().st_mtime >= newest for o in outputs):
        return
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # the build requirements name grpcio-tools; this is a broken build env
        raise SystemExit(f"edgemill build: grpcio-tools is needed to generate the gRPC stubs ({exc})") from None
    include = str(Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto
    args = ["protoc", f"-I{PACKAGE}={PROTO_ROOT}", f"-I{include}",
            f"--python_out={OUT_ROOT}", f"--grpc_python_out={OUT_ROOT}", f"--pyi_out={OUT_ROOT}"]
    args += [str(p) for p in protos]
    if protoc.main(args) != 0:
        raise SystemExit("edgemill build: protoc failed on " + " ".join(str(p) for p in protos))
    # Packages, so that setuptools ships them and they import as edgemill.agent._proto.<package>.
    for folder in {o.parent for o in outputs} | {OUT_ROOT / PACKAGE}:
        node = folder
        while node != OUT_ROOT / "edgemill" / "agent":
            (node / "__init__.py").touch()
            node = node.parent
    print(f"edgemill build: generated gRPC stubs for {len(protos)} proto files", file=sys.stderr)


class _Generate:
    def run(self) -> None:  # type: ignore[misc]
        generate_stubs()
        super().run()  # type: ignore[misc]


class BuildPy(_Generate, build_py):
    pass


class Develop(_Generate, develop):
    pass


class EggInfo(_Generate, egg_info):
    pass


class GenerateStubs(Command):
    """`python setup.py generate_stubs`: regenerate without building."""

    user_options: list = []

    def initialize_options(self) -> None: ...

    def finalize_options(self) -> None: ...

    def run(self) -> None:
        generate_stubs()


setup(cmdclass={"build_py": BuildPy, "develop": Develop, "egg_info": EggInfo, "generate_stubs": GenerateStubs})
