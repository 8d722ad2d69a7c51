"""Per-device memory of a compiled program, and the accelerators it is compared against.

:func:`device_bytes` reads XLA's ``compiled.memory_analysis()`` of an SPMD-partitioned program:
every figure is *per device* (the partitioned module is what each device runs).
``total = arguments + outputs - aliased + temporaries``: donated inputs that the outputs reuse
(the train step donates params and optimizer state) are counted once.
"""

from __future__ import annotations

import dataclasses

GiB = 1 << 30

# Memory per accelerator chip / card, in bytes (what the vendor sells; the runtime keeps a little).
ACCELERATORS: dict[str, int] = {
    "V100-32GB": 32 * GiB,
    "A100-80GB": 80 * GiB,
    "H100-80GB": 80 * GiB,
    "TPU-v4": 32 * GiB,
    "TPU-v5e": 16 * GiB,
    "TPU-v5p": 95 * GiB,
}


def check_accelerator(name: str) -> int:
    if name not in ACCELERATORS:
        raise ValueError(f"accelerator {name!r} unknown; allowed: {tuple(ACCELERATORS)}")
    return ACCELERATORS[name]


@dataclasses.dataclass(frozen=True)
class DeviceBytes:
    """Bytes per device of one compiled program (from ``memory_analysis()``)."""

    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    code: int = 0

    @property
    def total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries

    def as_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "total": self.total}

    def fits(self) -> dict[str, bool]:
        """``{accelerator: total <= its memory}`` for every entry of :data:`ACCELERATORS`."""
        return {name: self.total <= cap for name, cap in ACCELERATORS.items()}


def device_bytes(compiled) -> DeviceBytes:
    """:class:`DeviceBytes` of a ``jax.jit(...).lower(...).compile()`` result."""
    m = compiled.memory_analysis()
    if m is None:
        raise ValueError("this backend gives no memory_analysis() for the compiled program")
    return DeviceBytes(
        arguments=int(m.argument_size_in_bytes),
        outputs=int(m.output_size_in_bytes),
        aliased=int(m.alias_size_in_bytes),
        temporaries=int(m.temp_size_in_bytes),
        code=int(getattr(m, "generated_code_size_in_bytes", 0)),
    )


def gib(n: int) -> str:
    return f"{n / GiB:.2f}"
