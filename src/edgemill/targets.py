"""The target catalog: frozen descriptions of the hardware a package is compiled for.

``host`` is detected from this machine; the others are fixed values. A target names the backends and
onnxruntime execution providers it allows; the compiler picks among those.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from .errors import UnknownTargetError


@dataclass(frozen=True)
class Target:
    name: str
    arch: str  # x86_64, aarch64, armv7
    os: str  # linux, android, macos
    description: str
    cpu_features: tuple[str, ...] = ()
    accelerators: tuple[str, ...] = ()
    backends: tuple[str, ...] = ("onnxruntime", "reference")
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    cores: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """What a package records about its target (stable across machines for catalog targets)."""
        return {"name": self.name, "arch": self.arch, "os": self.os, "cpu_features": list(self.cpu_features),
                "accelerators": list(self.accelerators)}


# litert runs a .tflite as the source wrote it (only sources in that format can use it).
_CPU_BACKENDS = ("onnxruntime", "openvino", "tvm", "litert", "reference")
_ARM_BACKENDS = ("onnxruntime", "tvm", "litert", "reference")

CATALOG: dict[str, Target] = {}


def register(target: Target) -> Target:
    CATALOG[target.name] = target
    return target


for _t in (
    Target("x86_64-avx2", "x86_64", "linux", "Generic x86-64 CPU with AVX2/FMA (Haswell and later, Zen)",
           cpu_features=("avx2", "f16c", "fma"), backends=_CPU_BACKENDS),
    Target("x86_64-avx512", "x86_64", "linux", "x86-64 CPU with AVX-512 and VNNI (Ice Lake and later, Zen4)",
           cpu_features=("avx2", "avx512bw", "avx512f", "avx512vl", "avx512_vnni", "fma"), backends=_CPU_BACKENDS),
    Target("aarch64", "aarch64", "linux", "64-bit Arm CPU: Raspberry Pi 4/5, AWS Graviton, Jetson CPU cores",
           cpu_features=("asimd",), backends=_ARM_BACKENDS),
    # Armv8.2-A and later cores (Cortex-A55/A76/A78, Neoverse N1/V1) add fp16 arithmetic and int8 dot product.
    Target("aarch64-v8.2", "aarch64", "linux", "64-bit Arm v8.2+ CPU with fp16 arithmetic and dot product: "
           "Raspberry Pi 5, AWS Graviton2/3, Jetson Orin CPU cores",
           cpu_features=("asimd", "asimddp", "asimdhp", "fphp"), backends=_ARM_BACKENDS),
    Target("armv7", "armv7", "linux", "32-bit Arm CPU with NEON (Raspberry Pi 2/3 on a 32-bit OS)",
           cpu_features=("neon",), backends=("onnxruntime", "tvm", "litert", "reference")),
    Target("jetson", "aarch64", "linux", "NVIDIA Jetson (Orin/Xavier): CUDA GPU with TensorRT",
           cpu_features=("asimd",), accelerators=("cuda", "tensorrt"), backends=("onnxruntime", "tvm", "reference"),
           execution_providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")),
    Target("intel-npu", "x86_64", "linux", "Intel Core Ultra NPU through OpenVINO",
           cpu_features=("avx2", "fma"), accelerators=("npu",), backends=("openvino", "onnxruntime", "reference"),
           execution_providers=("OpenVINOExecutionProvider", "CPUExecutionProvider")),
    Target("intel-gpu", "x86_64", "linux", "Intel integrated or Arc GPU through OpenVINO",
           cpu_features=("avx2", "fma"), accelerators=("gpu",), backends=("openvino", "onnxruntime", "reference"),
           execution_providers=("OpenVINOExecutionProvider", "CPUExecutionProvider")),
    Target("qualcomm", "aarch64", "android", "Qualcomm Snapdragon with the Hexagon NPU through QNN",
           cpu_features=("asimd",), accelerators=("htp",), backends=("onnxruntime", "reference"),
           execution_providers=("QNNExecutionProvider", "CPUExecutionProvider")),
    Target("apple", "aarch64", "macos", "Apple silicon with the Neural Engine through CoreML",
           cpu_features=("asimd",), accelerators=("ane",), backends=("onnxruntime", "reference"),
           execution_providers=("CoreMLExecutionProvider", "CPUExecutionProvider")),
    Target("android", "aarch64", "android", "Android phone or board through NNAPI",
           cpu_features=("asimd",), accelerators=("nnapi",), backends=("onnxruntime", "litert", "reference"),
           execution_providers=("NnapiExecutionProvider", "CPUExecutionProvider")),
    Target("ti-tda4", "aarch64", "linux", "TI Jacinto TDA4 with the C7x/MMA deep-learning accelerator (TIDL)",
           cpu_features=("asimd",), accelerators=("tidl",), backends=("onnxruntime", "reference"),
           execution_providers=("TIDLExecutionProvider", "CPUExecutionProvider")),
    Target("inf1", "x86_64", "linux", "AWS Inferentia (inf1) through the Neuron SDK",
           cpu_features=("avx2", "fma"), accelerators=("neuron",), backends=("onnxruntime", "reference")),
    Target("inf2", "x86_64", "linux", "AWS Inferentia2 (inf2) through the Neuron SDK",
           cpu_features=("avx2", "avx512f", "fma"), accelerators=("neuron",), backends=("onnxruntime", "reference")),
):
    register(_t)

# CPU feature flags worth recording: the ones that decide which kernels run fast.
_INTERESTING_FLAGS = {
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
    "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
    "neon", "asimd", "asimdhp", "asimddp", "sve", "sve2", "i8mm", "bf16",
}


def _normalize_arch(machine: str) -> str:
    machine = machine.lower()
    if machine in ("amd64", "x86_64", "x64"):
        return "x86_64"
    if machine in ("arm64", "aarch64"):
        return "aarch64"
    if machine.startswith("armv7") or machine == "armhf":
        return "armv7"
    return machine


def _cpu_flags(cpuinfo_text: str) -> tuple[str, ...]:
    flags: set[str] = set()
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return tuple(sorted(flags & _INTERESTING_FLAGS))


def detect_host(cpuinfo_path: str = "/proc/cpuinfo") -> Target:
    """Describe this machine as a target."""
    arch = _normalize_arch(platform.machine())
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            features = _cpu_flags(f.read())
    except OSError:
        features = ()
    system = platform.system().lower()
    os_name = {"darwin": "macos"}.get(system, system)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    backends = _CPU_BACKENDS if arch == "x86_64" else _ARM_BACKENDS
    return Target(
        name="host",
        arch=arch,
        os=os_name,
        description=f"This machine: {arch}, {cores} cores" + (f", {', '.join(features)}" if features else ""),
        cpu_features=features,
        backends=backends,
        cores=cores,
    )


@lru_cache(maxsize=1)
def host() -> Target:
    return detect_host()


def all_targets() -> list[Target]:
    return [host(), *CATALOG.values()]


def get_target(name: str) -> Target:
    """Look a target up by name; an unknown name lists the catalog."""
    if name == "host":
        return host()
    try:
        return CATALOG[name]
    except KeyError:
        names = ["host", *CATALOG]
        query = name.lower()
        close = [n for n in names if query in n or n in query]
        close += [t.name for t in CATALOG.values() if len(query) >= 3 and query in t.description.lower()]
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UnknownTargetError(
            "unknown target",
            value=name,
            expected="one of " + ", ".join(names),
            fix=f"{hint}run `edgemill targets` to see the catalog",
        ) from None


def runnable_here(target: Target, here: Target | None = None) -> bool:
    """Can this machine run (and so measure) code built for ``target``?"""
    here = here or host()
    if target.name == "host":
        return True
    if target.accelerators or target.arch != here.arch or target.os != here.os:
        return False
    return set(target.cpu_features) <= set(here.cpu_features)
