"""What this node serves on: GPUs (their memory and compute capability) or the CPU under a memory limit.

Declared wins over detected (`--accelerator`, PREFLIGHT_ACCELERATOR, a manifest's
`accelerator:`): an init container often sees neither the GPUs nor the limit of the
server it runs before. Detection reads, in order:

- NVIDIA through NVML (the nvidia-ml-py binding, module `pynvml`, imported only here and
  only when asked): no binding or no driver means no NVIDIA GPU, never a crash;
- AMD through sysfs (`/sys/class/drm/card*/device/`: vendor 0x1002, `mem_info_vram_total`,
  `mem_info_vram_used`, `mem_info_gtt_total`). APUs (Strix Halo, Strix Point, Phoenix,
  Hawk Point, Rembrandt: a table of PCI device ids) share system memory: their usable
  memory is the larger of the VRAM carve-out and GTT, and `unified` is set;
- the CPU: the cgroup memory limit (v2 `memory.max`, v1 `memory.limit_in_bytes`, the
  smallest on the way up the hierarchy), that cgroup's usage (`memory.current`,
  `memory.usage_in_bytes`), its swap allowance (`memory.swap.max`, v1 `memory.memsw.limit_in_bytes`
  less the limit) against SwapTotal, and MemAvailable from /proc/meminfo. A process over its
  limit is killed only when it cannot swap: with swap allowed, fit warns instead of refusing.

Every reader takes its root folder, so tests feed recorded sysfs and procfs trees through
the same code; NVML values go through `parse_nvml` as the binding returns them.
"""

from __future__ import annotations

import os
import re
from dataclasses import field
from pathlib import Path
from typing import Any

from ..record import record

GiB = 2**30
MiB = 2**20
UNLIMITED = 1 << 62  # cgroup v1 writes "no limit" as a page-rounded 2^63-1

# PCI device ids of AMD APUs whose GPU memory is system memory (amdgpu_drv.c / pci.ids):
# Strix Halo, Strix Point, Krackan, Phoenix 1/2, Hawk Point, Rembrandt, Mendocino, Van Gogh.
AMD_APU_IDS = frozenset({0x1586, 0x150E, 0x1114, 0x15BF, 0x15C8, 0x1900, 0x1901, 0x1681, 0x1506, 0x163F})


class AcceleratorError(ValueError):
    """A declared accelerator that cannot be read."""


@record(frozen=True)
class Device:
    """One accelerator device: its name, its memory and, for NVIDIA, its compute capability."""

    name: str
    total: int  # bytes of memory the engine may allocate on it
    free: int | None = None  # bytes free now (detected only)
    cc: tuple[int, int] | None = None  # NVIDIA compute capability
    vendor: str = "nvidia"  # nvidia | amd
    unified: bool = False  # GPU memory is system memory (APUs)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "vendor": self.vendor, "total_bytes": self.total}
        if self.free is not None:
            d["free_bytes"] = self.free
        if self.cc is not None:
            d["compute_capability"] = f"{self.cc[0]}.{self.cc[1]}"
        if self.unified:
            d["unified_memory"] = True
        return d


@record(frozen=True)
class Accelerator:
    """A node as fit sees it: its devices and the container's memory limit and availability."""

    devices: tuple[Device, ...] = ()
    memory_limit: int | None = None  # the container's (cgroup) memory limit, None when unlimited
    memory_available: int | None = None  # MemAvailable
    source: str = "detected"  # declared | nvml | sysfs | cgroup
    notes: tuple[str, ...] = field(default=())
    memory_used: int | None = None  # the limiting cgroup's usage now (page cache included): informational
    swap: int | None = None  # bytes of swap a process here may use (None or 0: none, the OOM killer acts at the limit)

    @property
    def gpus(self) -> int:
        return len(self.devices)

    @property
    def host_memory(self) -> int | None:
        """What a CPU process may use: the smaller of the limit and what the host has available."""
        values = [v for v in (self.memory_limit, self.memory_available) if v is not None]
        return min(values) if values else None

    def describe(self) -> str:
        if self.devices:
            d = self.devices[0]
            same = all(x.total == d.total and x.cc == d.cc for x in self.devices)
            each = f"{_gib(d.total)}" + (f", cc {d.cc[0]}.{d.cc[1]}" if d.cc else "") + (", unified memory" if d.unified else "")
            what = f"{len(self.devices)}x {d.name} ({each})" if same else ", ".join(f"{x.name} ({_gib(x.total)})" for x in self.devices)
        else:
            what = "CPU only"
        if self.memory_limit is not None:
            what += f", memory limit {_gib(self.memory_limit)}" + (f" ({_gib(self.memory_used)} in use)" if self.memory_used is not None else "")
        elif self.memory_available is not None:
            what += f", {_gib(self.memory_available)} available"
        if self.swap:
            what += f", {_gib(self.swap)} swap"
        return f"{what} ({self.source})"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source, "devices": [x.to_dict() for x in self.devices]}
        if self.memory_limit is not None:
            d["memory_limit_bytes"] = self.memory_limit
        if self.memory_available is not None:
            d["memory_available_bytes"] = self.memory_available
        if self.memory_used is not None:
            d["memory_used_bytes"] = self.memory_used
        if self.swap:
            d["swap_bytes"] = self.swap
        if self.notes:
            d["notes"] = list(self.notes)
        return d


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


def node_key(accel: Accelerator) -> str:
    """This node as a remembered variant choice names it: every device's name, memory, compute
    capability and kind, and the memory limit. Free memory and MemAvailable change from run to
    run and are left out; another GPU model, count or size, or another limit, is another node."""
    import hashlib

    devices = [(d.name, d.total, d.cc, d.vendor, d.unified) for d in accel.devices]
    return hashlib.sha256(repr((devices, accel.memory_limit, bool(accel.swap))).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- declared

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|[kmgt]b?|B)?\s*$")
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str | int) -> int:
    """'80GiB', '80G', '80 GB' (binary, as nvidia-smi and Kubernetes Gi count), '81920MiB' or bytes."""
    if isinstance(text, bool):
        raise AcceleratorError(f"expected a size, found {text!r}")
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise AcceleratorError(f"{text!r} is not a size (e.g. 80GiB, 24G, 81920MiB)")
    number, unit = m.groups()
    return int(float(number) * _UNITS[(unit or "").upper()[:1]])


def parse_cc(text: str | float) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", str(text))
    if not m:
        raise AcceleratorError(f"compute capability {text!r} is not MAJOR.MINOR (e.g. 8.0, 9.0)")
    return int(m[1]), int(m[2])


def parse_declared(spec: str | dict) -> Accelerator:
    """`2x80GiB,cc=9.0`, `1x24GiB,cc=8.9,name=L4`, `cpu,memory=16GiB`, `amd:1x128GiB,unified`,
    or a mapping {gpus: 2, memory: 80GiB, cc: "9.0", name, vendor, unified, memory_limit}."""
    if isinstance(spec, dict):
        return _from_mapping(spec)
    text = str(spec).strip()
    if not text:
        raise AcceleratorError("the accelerator is empty")
    parts = [p.strip() for p in text.split(",") if p.strip()]
    head, opts = parts[0], parts[1:]
    mapping: dict[str, Any] = {}
    vendor, _, head_rest = head.rpartition(":") if ":" in head else ("", "", head)
    if vendor:
        mapping["vendor"] = vendor
    if head_rest.lower() == "cpu":
        mapping["gpus"] = 0
    else:
        m = re.fullmatch(r"(?:(\d+)\s*[xX*]\s*)?(.+)", head_rest)
        if not m:
            raise AcceleratorError(f"{head!r}: expected COUNTxSIZE (e.g. 2x80GiB) or cpu")
        mapping["gpus"] = int(m[1] or 1)
        mapping["memory"] = m[2]
    for opt in opts:
        key, eq, value = opt.partition("=")
        key = key.strip().lower()
        if not eq:
            if key == "unified":
                mapping["unified"] = True
                continue
            raise AcceleratorError(f"{opt!r}: expected KEY=VALUE (cc, name, vendor, memory, memory_limit) or unified")
        mapping[key] = value.strip()
    return _from_mapping(mapping)


_KEYS = {"gpus", "memory", "cc", "name", "vendor", "unified", "memory_limit", "memory_available", "swap"}


def _from_mapping(m: dict) -> Accelerator:
    unknown = set(m) - _KEYS
    if unknown:
        raise AcceleratorError(f"unknown accelerator key(s) {', '.join(sorted(map(str, unknown)))} (keys: {', '.join(sorted(_KEYS))})")
    gpus = m.get("gpus", 1 if "memory" in m else 0)
    if isinstance(gpus, str):
        if not gpus.isdigit():
            raise AcceleratorError(f"gpus {gpus!r} is not a count")
        gpus = int(gpus)
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 0 or gpus > 1024:
        raise AcceleratorError(f"gpus {gpus!r} is not a count")
    vendor = str(m.get("vendor") or "nvidia").lower()
    if vendor not in ("nvidia", "amd", "cpu"):
        raise AcceleratorError(f"vendor {vendor!r}: expected nvidia or amd")
    limit = parse_size(m["memory_limit"]) if m.get("memory_limit") is not None else None
    avail = parse_size(m["memory_available"]) if m.get("memory_available") is not None else None
    swap = parse_size(m["swap"]) if m.get("swap") is not None else None
    devices: tuple[Device, ...] = ()
    if gpus and vendor != "cpu":
        if m.get("memory") is None:
            raise AcceleratorError("a declared GPU needs its memory (e.g. 80GiB)")
        total = parse_size(m["memory"])
        cc = parse_cc(m["cc"]) if m.get("cc") is not None else None
        unified = m.get("unified") in (True, "true", "yes", "1")
        name = str(m.get("name") or ("GPU" if vendor == "nvidia" else "AMD GPU"))
        devices = tuple(Device(name, total, None, cc, vendor, unified) for _ in range(gpus))
    elif m.get("memory") is not None and limit is None:
        limit = parse_size(m["memory"])  # `cpu,memory=16GiB`
    return Accelerator(devices, limit, avail, "declared", swap=swap)


# --------------------------------------------------------------------------- NVIDIA

def parse_nvml(raw: list[tuple[Any, Any, Any]]) -> tuple[Device, ...]:
    """Devices from what the binding returns per GPU: (nvmlDeviceGetName → str or bytes,
    nvmlDeviceGetMemoryInfo → an object with .total/.free in bytes,
    nvmlDeviceGetCudaComputeCapability → (major, minor))."""
    out = []
    for name, mem, cc in raw:
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        total = int(getattr(mem, "total"))
        free = getattr(mem, "free", None)
        out.append(Device(str(name), total, int(free) if free is not None else None, (int(cc[0]), int(cc[1])) if cc else None, "nvidia"))
    return tuple(out)


def query_nvml(nvml: Any) -> list[tuple[Any, Any, Any]]:
    """The raw values of every GPU, through an initialised binding module."""
    nvml.nvmlInit()
    try:
        raw = []
        for i in range(int(nvml.nvmlDeviceGetCount())):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            raw.append((nvml.nvmlDeviceGetName(h), nvml.nvmlDeviceGetMemoryInfo(h), nvml.nvmlDeviceGetCudaComputeCapability(h)))
        return raw
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutting down a half-initialised library
            pass


def detect_nvidia(import_name: str = "pynvml") -> tuple[tuple[Device, ...], str | None]:
    """NVIDIA GPUs, or () with why none were seen (no binding, no driver)."""
    try:
        import importlib

        nvml = importlib.import_module(import_name)
    except ImportError:
        return (), "NVML binding not installed (pip install 'lane-preflight[nvml]'): NVIDIA GPUs not looked for"
    try:
        return parse_nvml(query_nvml(nvml)), None
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return (), f"no NVIDIA driver ({type(exc).__name__}: {exc})"


# --------------------------------------------------------------------------- AMD

def detect_amd(sys_root: str | os.PathLike[str] = "/sys") -> tuple[Device, ...]:
    out = []
    for card in sorted(Path(sys_root, "class", "drm").glob("card*")):
        if not re.fullmatch(r"card\d+", card.name):
            continue
        dev = card / "device"
        if _read(dev / "vendor") != "0x1002":
            continue
        vram = _int(dev / "mem_info_vram_total")
        if vram is None:
            continue
        used = _int(dev / "mem_info_vram_used")
        gtt = _int(dev / "mem_info_gtt_total") or 0
        dev_id = _read(dev / "device")
        apu = dev_id is not None and int(dev_id, 16) in AMD_APU_IDS
        name = (_read(dev / "product_name") or f"AMD GPU {dev_id or '?'}")
        if apu:
            total = max(vram, gtt)
            gtt_used = _int(dev / "mem_info_gtt_used") or 0
            free = total - (used or 0) - gtt_used if total == gtt else (vram - used if used is not None else None)
            out.append(Device(name, total, free, None, "amd", True))
        else:
            out.append(Device(name, vram, vram - used if used is not None else None, None, "amd"))
    return tuple(out)


# --------------------------------------------------------------------------- CPU

@record(frozen=True)
class CgroupMemory:
    """One memory cgroup's files, as the kernel writes them (cgroup-v2.rst, cgroup-v1/memory.rst)."""

    version: int  # 1 or 2
    limit: int | None  # memory.max / memory.limit_in_bytes; None: unlimited
    current: int | None  # memory.current / memory.usage_in_bytes
    swap_limit: int | None  # swap alone: memory.swap.max, or v1 memory.memsw.limit_in_bytes less the limit; None: unlimited
    oom_kills: int | None  # memory.events / memory.oom_control `oom_kill`: processes the OOM killer ended here


def read_cgroup(folder: str | os.PathLike[str]) -> CgroupMemory | None:
    """The memory files of one cgroup folder (v2 when it has memory.max, else v1), or None."""
    d = Path(folder)
    if (d / "memory.max").exists():
        return CgroupMemory(2, _limit(d / "memory.max"), _int(d / "memory.current"), _limit(d / "memory.swap.max"),
                            _keyed(d / "memory.events", "oom_kill"))
    if (d / "memory.limit_in_bytes").exists():
        limit = _limit(d / "memory.limit_in_bytes")
        memsw = _limit(d / "memory.memsw.limit_in_bytes")
        swap = None if memsw is None else max(0, memsw - (limit or 0)) if limit is not None else None
        return CgroupMemory(1, limit, _int(d / "memory.usage_in_bytes"), swap, _keyed(d / "memory.oom_control", "oom_kill"))
    return None


def _limit(p: Path) -> int | None:
    text = _read(p)
    if text is None or text == "max" or not text.isdigit():
        return None
    value = int(text)
    return None if value >= UNLIMITED else value


def _keyed(p: Path, key: str) -> int | None:
    for line in (_read(p) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


def cgroup_memory(proc_root: str | os.PathLike[str] = "/proc", cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup") -> CgroupMemory | None:
    """The cgroup with the smallest memory limit on this process's path (v2 memory.max, v1
    memory.limit_in_bytes), with its usage, swap allowance and OOM kills; the leaf's when none
    sets a limit; None without a memory controller. Inside a container the path is often `/`
    (a cgroup namespace), so the root's own files count too."""
    try:
        lines = Path(proc_root, "self", "cgroup").read_text().splitlines()
    except OSError:
        lines = []
    root = Path(cgroup_root)
    found: list[CgroupMemory] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hid, controllers, path = parts
        if controllers == "" and (root / "cgroup.controllers").exists():
            found += _walk(root, path)
        elif "memory" in controllers.split(","):
            found += _walk(root / "memory" if (root / "memory").is_dir() else root, path)
    if not lines:
        found += _walk(root, "/") or _walk(root / "memory", "/")
    if not found:
        return None
    limited = [c for c in found if c.limit is not None]
    return min(limited, key=lambda c: c.limit or 0) if limited else found[0]


def cgroup_limit(proc_root: str | os.PathLike[str] = "/proc", cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup") -> int | None:
    """The smallest memory limit on this process's cgroup path, or None when unlimited."""
    got = cgroup_memory(proc_root, cgroup_root)
    return got.limit if got is not None else None


def _walk(base: Path, path: str) -> list[CgroupMemory]:
    """The cgroups from `path` (the leaf first) up to `base`."""
    out = []
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    for i in range(len(parts), -1, -1):
        got = read_cgroup(base.joinpath(*parts[:i]))
        if got is not None:
            out.append(got)
    return out


def swap_total(proc_root: str | os.PathLike[str] = "/proc") -> int | None:
    try:
        for line in Path(proc_root, "meminfo").read_text().splitlines():
            if line.startswith("SwapTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def mem_available(proc_root: str | os.PathLike[str] = "/proc") -> int | None:
    try:
        for line in Path(proc_root, "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read(p: Path) -> str | None:
    try:
        return p.read_text().strip()
    except OSError:
        return None


def _int(p: Path) -> int | None:
    text = _read(p)
    return int(text) if text is not None and text.isdigit() else None


def detect(sys_root: str = "/sys", proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup", nvml_module: str = "pynvml") -> Accelerator:
    """The accelerator this process sees: NVIDIA, else AMD, else the CPU; always the memory limit."""
    notes: list[str] = []
    devices, why = detect_nvidia(nvml_module)
    source = "nvml"
    if why:
        notes.append(why)
    if not devices:
        devices, source = detect_amd(sys_root), "sysfs"
    if not devices:
        source = "cgroup"
    cg = cgroup_memory(proc_root, cgroup_root)
    host_swap = swap_total(proc_root) or 0
    swap = min(host_swap, cg.swap_limit) if cg is not None and cg.swap_limit is not None else host_swap
    return Accelerator(devices, cg.limit if cg else None, mem_available(proc_root), source, tuple(notes),
                       memory_used=cg.current if cg else None, swap=swap or None)


def resolve(declared: str | dict | None) -> Accelerator:
    """A declared accelerator when there is one, else what is detected here."""
    if declared not in (None, ""):
        return parse_declared(declared)  # type: ignore[arg-type]
    return detect()
