"""The machines `guie plan` sizes a run for: GPU presets (vendor datasheet peaks, dense, no sparsity)
and `cpu`, the machine the plan runs on, whose peak is measured (`guie.plan.probe`)."""

from __future__ import annotations

from dataclasses import dataclass

from guie.errors import GuieError


@dataclass(frozen=True)
class Gpu:
    """One GPU kind: peak dense TFLOPs, memory as torch reports it, and the bandwidth one GPU's
    gradients leave it at in an all-reduce (GB/s, one direction)."""

    name: str
    half_tflops: float  # bf16 (fp16 where the GPU lacks bf16) tensor-core peak
    fp32_tflops: float  # without tensor cores (torch leaves TF32 off for matmuls)
    memory_gib: float
    link_gbps: float
    link: str
    bf16: bool = True  # train.precision auto: bf16, else loss-scaled fp16


GPUS: dict[str, Gpu] = {
    g.name: g
    for g in (
        Gpu("h100", 989.4, 66.9, 79.1, 450.0, "NVLink 4 (900 GB/s both ways)"),
        Gpu("h200", 989.4, 66.9, 139.8, 450.0, "NVLink 4 (900 GB/s both ways)"),
        Gpu("a100-80gb", 312.0, 19.5, 79.1, 300.0, "NVLink 3 (600 GB/s both ways)"),
        Gpu("a100-40gb", 312.0, 19.5, 39.4, 300.0, "NVLink 3 (600 GB/s both ways)"),
        Gpu("l4", 121.0, 30.3, 22.0, 32.0, "PCIe 4.0 x16"),
        Gpu("t4", 65.0, 8.1, 14.6, 16.0, "PCIe 3.0 x16", bf16=False),
    )
}
CPU = "cpu"
DEFAULT_MFU = 0.35  # share of the peak a training step reaches (ViT fine-tuning at 30-40% on GPUs)
# on a CPU the "peak" is a measured resblock forward (`guie.plan.probe.block_flops`): a training step
# (backward, optimizer, head, monitor) reaches about this share of it
DEFAULT_CPU_MFU = 0.7


@dataclass(frozen=True)
class Machine:
    """Where a plan runs: `gpus` devices of one kind (for `cpu`: the CPU itself, one device) and `cpus` cores."""

    kind: str  # a GPUS key, or CPU
    gpus: int
    cpus: int
    peak_flops: float  # per device, at the precision training uses
    fp32_flops: float  # per device, float32 (embedding for PCA and evaluate, which run in float32)
    memory_bytes: float  # per device (for `cpu`: this machine's RAM)
    link_bytes_s: float  # per device, one direction
    precision: str  # what train.precision auto picks here
    note: str  # how the peak was obtained

    @property
    def on_cpu(self) -> bool:
        return self.kind == CPU


def gpu_machine(kind: str, gpus: int, cpus: int, precision: str = "auto") -> Machine:
    if kind not in GPUS:
        known = ", ".join([*GPUS, CPU])
        raise GuieError(f"--gpu: unknown GPU {kind!r}; presets: {known}")
    if gpus < 1 or cpus < 1:
        raise GuieError(f"--gpus and --cpus must be >= 1 (got {gpus} and {cpus})")
    g = GPUS[kind]
    chosen = precision if precision != "auto" else ("bf16" if g.bf16 else "fp16")
    if chosen == "bf16" and not g.bf16:
        raise GuieError(f"train.precision: bf16, and {kind} has no bf16 tensor cores (use fp16 or auto)")
    peak = g.fp32_tflops if chosen == "fp32" else g.half_tflops
    return Machine(
        kind,
        gpus,
        cpus,
        peak * 1e12,
        g.fp32_tflops * 1e12,
        g.memory_gib * 2**30,
        g.link_gbps * 1e9,
        chosen,
        f"{kind}: {peak:g} TFLOPs {chosen} peak (datasheet, dense), {g.memory_gib:g} GiB, {g.link}",
    )


def cpu_machine(cpus: int, flops: float, ram_bytes: float, link_bytes_s: float, how: str) -> Machine:
    """The CPU as the training device: `flops` measured with the threads the stages compute with."""
    if cpus < 1:
        raise GuieError(f"--cpus must be >= 1 (got {cpus})")
    return Machine(CPU, 1, cpus, flops, flops, ram_bytes, link_bytes_s, "fp32", how)


def preset_for(gpu_name: str, memory_gib: float) -> str | None:
    """The preset of a GPU torch names (e.g. "NVIDIA H100 80GB HBM3"), or None."""
    words = gpu_name.upper().replace("-", " ").split()  # "L4" but not "L40S"
    for key, preset in (("H200", "h200"), ("H100", "h100"), ("L4", "l4"), ("T4", "t4")):
        if key in words:
            return preset
    if "A100" in words:
        return "a100-80gb" if memory_gib > 50 else "a100-40gb"
    return None
