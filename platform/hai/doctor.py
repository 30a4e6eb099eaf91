"""The environment report behind ``hai doctor``.

Collects what matters to the stack on this machine (torch build and CPU vector extension,
cores, memory, GPUs with their PCIe bus ids and NUMA nodes, FUSE, SQLite, PostgreSQL) and
checks the hard requirements. Each failed requirement carries one line saying what was
found and what to do about it.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib
import importlib.metadata
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

DISTRIBUTION = "fireflyer"

# SQLAlchemy 2 uses RETURNING (bulk inserts, server defaults) on SQLite 3.35 and newer;
# the state stores are built on it.
MIN_SQLITE = (3, 35, 0)

# PCI class codes of display controllers: 0x0300 VGA, 0x0302 3D (datacenter GPUs).
_GPU_CLASSES = ("0x0300", "0x0302")
_GPU_VENDORS = {"0x10de": "NVIDIA", "0x1002": "AMD"}

POSTGRES_SERVER_BINARIES = ("postgres", "initdb", "pg_ctl")


@dataclass
class Check:
    """One hard requirement and whether this machine meets it."""

    name: str
    ok: bool
    found: str
    fix: str = ""

    def line(self) -> str:
        """The one-line message shown when the requirement is not met."""
        return (
            f"{self.name}: {self.found}; {self.fix}" if self.fix else f"{self.name}: {self.found}"
        )


@dataclass
class TorchInfo:
    version: str | None = None
    cuda_available: bool = False
    cuda_version: str | None = None
    cpu_capability: str | None = None
    """The vector extension torch's CPU kernels dispatch to (e.g. AVX2, AVX512)."""
    num_threads: int | None = None
    error: str | None = None


@dataclass
class CpuInfo:
    model: str
    logical_cores: int
    physical_cores: int | None
    usable_cores: int
    """Cores this process may run on (its affinity mask), what worker pools should size to."""


@dataclass
class MemoryInfo:
    total_bytes: int
    available_bytes: int


@dataclass
class Gpu:
    pci_bus_id: str
    vendor: str
    name: str
    numa_node: int | None
    cuda_index: int | None = None
    memory_bytes: int | None = None


@dataclass
class FuseInfo:
    dev_fuse: bool
    fusermount3: str | None


@dataclass
class PostgresInfo:
    bindir: str | None
    version: str | None


@dataclass
class Report:
    fireflyer_version: str | None
    python_version: str
    python_executable: str
    os: str
    torch: TorchInfo
    cpu: CpuInfo
    memory: MemoryInfo
    gpus: list[Gpu]
    fuse: FuseInfo
    sqlite_version: str
    postgresql: PostgresInfo
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def collect_report() -> Report:
    """Probe this machine and return the full report, requirement checks included."""
    torch_info = probe_torch()
    report = Report(
        fireflyer_version=_installed_version(DISTRIBUTION),
        python_version=platform.python_version(),
        python_executable=sys.executable,
        os=f"{platform.system()} {platform.release()} {platform.machine()}",
        torch=torch_info,
        cpu=probe_cpu(),
        memory=probe_memory(),
        gpus=probe_gpus(),
        fuse=FuseInfo(
            dev_fuse=os.path.exists("/dev/fuse"), fusermount3=shutil.which("fusermount3")
        ),
        sqlite_version=sqlite3.sqlite_version,
        postgresql=probe_postgres(),
    )
    report.checks = [
        *distribution_checks(DISTRIBUTION),
        torch_import_check(torch_info),
        sqlite_check(sqlite3.sqlite_version),
    ]
    return report


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def distribution_checks(dist: str) -> list[Check]:
    """Check the running Python and every runtime dependency ``dist`` declares.

    Extras-only dependencies (``test``) are not hard requirements and are skipped.
    """
    try:
        metadata = importlib.metadata.metadata(dist)
    except importlib.metadata.PackageNotFoundError:
        return [Check(dist, False, "not installed", "run ./run setup from the repository root")]
    checks = []
    requires_python = metadata.get("Requires-Python")
    if requires_python:
        running = platform.python_version()
        checks.append(
            Check(
                "python",
                SpecifierSet(requires_python).contains(running),
                f"{running} (needs {requires_python})",
                f"use a Python {requires_python} interpreter (PYTHON=... ./run setup)",
            )
        )
    for raw in importlib.metadata.requires(dist) or []:
        checks.append(requirement_check(Requirement(raw)))
    return [c for c in checks if c is not None]


def requirement_check(req: Requirement) -> Check | None:
    """Whether ``req`` is installed at an allowed version; None when it applies only to an extra."""
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        return None
    fix = f"install it: pip install '{req}'"
    found = _installed_version(req.name)
    if found is None:
        return Check(req.name, False, f"not installed (needs {req})", fix)
    ok = req.specifier.contains(found, prereleases=True)
    return Check(req.name, ok, f"{found}" if ok else f"{found} does not satisfy {req}", fix)


def torch_import_check(info: TorchInfo) -> Check:
    """An installed but broken torch (missing libraries, ABI mismatch) is as bad as none."""
    if info.error is None:
        return Check("torch import", True, info.version or "")
    return Check(
        "torch import",
        False,
        f"import torch failed: {info.error}",
        "reinstall torch (pip install --force-reinstall torch)",
    )


def sqlite_check(version: str) -> Check:
    need = ".".join(map(str, MIN_SQLITE))
    parts = tuple(int(p) for p in version.split(".")[:3])
    return Check(
        "sqlite",
        parts >= MIN_SQLITE,
        f"{version} (needs {need} or newer)",
        "use a Python built against a newer libsqlite3",
    )


def probe_torch() -> TorchInfo:
    try:
        torch = importlib.import_module("torch")
    except Exception as exc:  # a broken install raises more than ImportError
        return TorchInfo(error=f"{type(exc).__name__}: {exc}")
    return TorchInfo(
        version=torch.__version__,
        cuda_available=torch.cuda.is_available(),
        cuda_version=torch.version.cuda,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        num_threads=torch.get_num_threads(),
    )


def probe_cpu() -> CpuInfo:
    import psutil

    return CpuInfo(
        model=_cpu_model(),
        logical_cores=os.cpu_count() or 1,
        physical_cores=psutil.cpu_count(logical=False),
        usable_cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1,
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe_memory() -> MemoryInfo:
    import psutil

    vm = psutil.virtual_memory()
    return MemoryInfo(total_bytes=vm.total, available_bytes=vm.available)


def probe_gpus(sysfs: Path = Path("/sys")) -> list[Gpu]:
    """GPUs found on the PCI bus, matched to the CUDA devices torch sees.

    The PCI scan finds GPUs even when torch is a CPU build or the driver is missing,
    which is exactly when an operator needs to know they are there.
    """
    gpus = scan_pci_gpus(sysfs)
    for index, bus_id, name, memory in _torch_cuda_devices():
        match = next((g for g in gpus if g.pci_bus_id == bus_id), None)
        if match is None:
            match = Gpu(pci_bus_id=bus_id, vendor="", name=name, numa_node=None)
            gpus.append(match)
        match.cuda_index, match.name, match.memory_bytes = index, name, memory
    return gpus


def scan_pci_gpus(sysfs: Path) -> list[Gpu]:
    """Display controllers of known GPU vendors under ``sysfs/bus/pci/devices``."""
    gpus = []
    for dev in sorted((sysfs / "bus" / "pci" / "devices").glob("*")):
        cls, vendor = _read(dev / "class"), _read(dev / "vendor")
        if cls is None or not cls.startswith(_GPU_CLASSES) or vendor not in _GPU_VENDORS:
            continue
        numa = _read(dev / "numa_node")
        gpus.append(
            Gpu(
                pci_bus_id=dev.name.lower(),
                vendor=_GPU_VENDORS[vendor],
                name=f"{_GPU_VENDORS[vendor]} device {_read(dev / 'device') or '?'}",
                # The kernel writes -1 when the platform does not report a NUMA node.
                numa_node=int(numa) if numa is not None and int(numa) >= 0 else None,
            )
        )
    return gpus


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _torch_cuda_devices() -> list[tuple[int, str, str, int]]:
    try:
        import torch
    except Exception:
        return []
    if not torch.cuda.is_available():
        return []
    devices = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        bus_id = f"{p.pci_domain_id:04x}:{p.pci_bus_id:02x}:{p.pci_device_id:02x}.0"
        devices.append((i, bus_id, p.name, p.total_memory))
    return devices


def find_postgres_bindir() -> str | None:
    """The folder holding PostgreSQL's server binaries, or None when they are not installed.

    Debian keeps them off PATH under /usr/lib/postgresql/<major>/bin.
    """
    on_path = [shutil.which(b) for b in POSTGRES_SERVER_BINARIES]
    if all(on_path):
        return str(Path(on_path[0]).parent)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major_version, reverse=True)
    for bindir in candidates:
        if all(os.access(Path(bindir) / b, os.X_OK) for b in POSTGRES_SERVER_BINARIES):
            return bindir
    return None


def _major_version(bindir: str) -> int:
    major = Path(bindir).parent.name
    return int(major) if major.isdigit() else 0


def probe_postgres() -> PostgresInfo:
    bindir = find_postgres_bindir()
    if bindir is None:
        return PostgresInfo(bindir=None, version=None)
    out = subprocess.run(
        [str(Path(bindir) / "postgres"), "--version"], capture_output=True, text=True, timeout=10
    )
    return PostgresInfo(bindir=bindir, version=out.stdout.strip() or None)


def summary_rows(report: Report) -> list[tuple[str, str]]:
    """The report as (item, value) rows for a human reader."""
    t, c, m = report.torch, report.cpu, report.memory
    gib = 1 << 30
    torch_row = (
        f"{t.version}, CPU kernels {t.cpu_capability}, {t.num_threads} threads, "
        f"CUDA {t.cuda_version if t.cuda_available else 'not available'}"
        if t.error is None
        else f"broken: {t.error}"
    )
    rows = [
        ("fireflyer", report.fireflyer_version or "not installed"),
        ("python", f"{report.python_version} ({report.python_executable})"),
        ("os", report.os),
        ("torch", torch_row),
        (
            "cpu",
            f"{c.model}; {c.logical_cores} logical, {c.physical_cores} physical, "
            f"{c.usable_cores} usable",
        ),
        ("memory", f"{m.total_bytes / gib:.1f} GiB total, {m.available_bytes / gib:.1f} GiB free"),
    ]
    for g in report.gpus or []:
        cuda = f"cuda:{g.cuda_index}" if g.cuda_index is not None else "not visible to torch"
        numa = g.numa_node if g.numa_node is not None else "unknown"
        rows.append(("gpu", f"{g.name} at {g.pci_bus_id}, NUMA node {numa}, {cuda}"))
    if not report.gpus:
        rows.append(("gpu", "none"))
    fuse = report.fuse
    rows += [
        (
            "fuse",
            f"/dev/fuse {'present' if fuse.dev_fuse else 'missing'}, "
            f"fusermount3 {fuse.fusermount3 or 'missing'}",
        ),
        ("sqlite", report.sqlite_version),
        ("postgresql", report.postgresql.version or "server binaries not installed"),
    ]
    return rows
