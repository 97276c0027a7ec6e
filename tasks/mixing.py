"""Mix planning without Spark: presets from include/mix_presets.yaml and the integer target of every part.

The engine (spark_ops.mix) counts what each part holds, asks :func:`plan_mix` how many records to take
from each, and samples. Keeping the arithmetic here makes it testable exactly and lets the CLI or a DAG
check a spec (presets, roles, bands) before any Spark starts.

All proportions are :class:`fractions.Fraction`: a requested ratio 1:6 is 1/7 and 6/7 of the mix, and the
report says whether the targets achieve that exactly ("1/7") or as closely as integers allow.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    from tasks.specs import MixSpec

log = logging.getLogger("forgeflow.mixing")
PRESETS_FILE = Path(__file__).resolve().parent.parent / "include" / "mix_presets.yaml"


class MixError(ValueError):
    """A mix that cannot be planned as asked; the message names the part and what to change."""


class RatioBand(BaseModel):
    """The range the seeds allow for ``part`` records per ``per`` record (e.g. general per industry)."""

    model_config = ConfigDict(extra="forbid")

    part: str = Field(description="Role in the numerator, e.g. general.")
    per: str = Field(description="Role in the denominator, e.g. industry.")
    min: float = Field(gt=0, description="Lowest ratio the guidance allows.")
    max: float = Field(gt=0, description="Highest ratio the guidance allows.")


class MixPreset(BaseModel):
    """Seed guidance for a mix: its roles with default ratios, the baseline role and the allowed band."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field(description="What the preset is for and where the guidance comes from.")
    usage: str = Field(description="Usage of the data the preset is meant for.")
    roles: dict[str, float] = Field(min_length=2, description="Role -> default ratio weight, in order.")
    baseline: str | None = Field(default=None, description="Role kept whole when no total is given.")
    sampling: str = Field(default="both", description="Default sampling of the preset.")
    band: RatioBand | None = Field(default=None, description="Allowed ratio band; outside it warns.")


@cache
def load_presets(path: str | None = None) -> dict[str, MixPreset]:
    """The presets of ``path`` (default include/mix_presets.yaml), validated."""
    import yaml

    file = Path(path) if path else PRESETS_FILE
    raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    out = {}
    for name, body in raw.items():
        try:
            preset = MixPreset.model_validate(body)
        except ValidationError as e:
            raise MixError(f"{file}: preset {name!r} is invalid: {e}") from e
        band = (preset.band.part, preset.band.per) if preset.band else ()
        for role in filter(None, (preset.baseline, *band)):
            if role not in preset.roles:
                raise MixError(f"{file}: preset {name!r} refers to unknown role {role!r}")
        out[name] = preset
    return out


def resolve_preset(spec: MixSpec) -> MixPreset | None:
    """The spec's preset, after checking that its parts fill each of the preset's roles exactly once."""
    if spec.preset is None:
        return None
    presets = load_presets()
    preset = presets.get(spec.preset)
    if preset is None:
        raise ValueError(f"preset {spec.preset!r} is unknown; presets: {', '.join(sorted(presets))}")
    roles = [p.role for p in spec.parts]
    for i, role in enumerate(roles):
        if role not in preset.roles:
            raise ValueError(
                f"parts[{i}]: role {role!r} is not a role of preset {spec.preset!r} "
                f"(roles: {', '.join(preset.roles)})"
            )
    missing = [r for r in preset.roles if r not in roles]
    twice = sorted({r for r in roles if roles.count(r) > 1})
    if missing or twice:
        raise ValueError(
            f"preset {spec.preset!r} needs one part per role ({', '.join(preset.roles)}); "
            + (f"missing: {', '.join(missing)}" if missing else f"given twice: {', '.join(twice)}")
        )
    if spec.usage is not None and spec.usage != preset.usage:
        raise ValueError(
            f"preset {spec.preset!r} is for {preset.usage} data, but the spec's usage is {spec.usage}"
        )
    return preset


def fraction_str(f: Fraction) -> str:
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


@dataclass
class PartPlan:
    """What the mix takes from one part."""

    label: str
    role: str | None
    requested: dict[str, Any]  # {"count": n} or {"ratio": w}
    weight: Fraction
    available: int
    target: int = 0

    @property
    def whole_copies(self) -> int:
        """How many times every record is taken (0 when down-sampling)."""
        return self.target // self.available if self.available else 0

    @property
    def sampled(self) -> int:
        """Records taken once more, by the seeded sample (the whole target when down-sampling)."""
        return self.target % self.available if self.available else 0

    @property
    def upsampled_copies(self) -> int:
        """Records in the mix beyond the part's own (repetitions)."""
        return max(0, self.target - self.available)


@dataclass
class MixPlan:
    parts: list[PartPlan]
    sampling: str
    method: str
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(p.target for p in self.parts)

    def report(self) -> list[dict[str, Any]]:
        """Per part: available, requested, target, copies and the requested vs achieved proportion."""
        weights = sum(p.weight for p in self.parts)
        total = self.total
        rows = []
        for p in self.parts:
            requested = p.weight / weights
            achieved = Fraction(p.target, total) if total else Fraction(0)
            rows.append(
                {
                    "part": p.label,
                    "role": p.role,
                    "requested": p.requested,
                    "available": p.available,
                    "target": p.target,
                    "whole_copies": p.whole_copies,
                    "sampled": p.sampled,
                    "upsampled_copies": p.upsampled_copies,
                    "requested_proportion": fraction_str(requested),
                    "achieved_proportion": fraction_str(achieved),
                    "achieved_proportion_float": float(achieved),
                    "exact": achieved == requested,
                }
            )
        return rows


def largest_remainder(total: int, weights: list[Fraction]) -> list[int]:
    """Integers summing to ``total`` proportional to ``weights``: floors, then +1 to the largest remainders.

    Ties go to the earlier part, so the result is a pure function of the inputs.
    """
    whole = sum(weights)
    quotas = [total * w / whole for w in weights]
    targets = [math.floor(q) for q in quotas]
    left = total - sum(targets)
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - targets[i]), i))
    for i in order[:left]:
        targets[i] += 1
    return targets


def reduced(weights: list[Fraction]) -> list[int]:
    """The smallest integers in the proportions of ``weights`` (1:6 for 0.5:3)."""
    lcm = math.lcm(*(w.denominator for w in weights))
    ints = [int(w * lcm) for w in weights]
    g = math.gcd(*ints)
    return [i // g for i in ints]


def _round_half_up(f: Fraction) -> int:
    return math.floor(f + Fraction(1, 2))


def _weight(part: Any, preset: MixPreset | None) -> tuple[dict[str, Any], Fraction]:
    if part.count is not None:
        return {"count": part.count}, Fraction(part.count)
    ratio = part.ratio if part.ratio is not None else preset.roles[part.role]  # type: ignore[union-attr]
    # str() keeps the decimal the user wrote: 0.1 is 1/10, not the binary float's 3602879701896397/2**55
    return {"ratio": ratio}, Fraction(str(ratio))


def _baseline_index(name: str, spec: MixSpec) -> int:
    for i, p in enumerate(spec.parts):
        if name in (p.label, p.ref, p.role):
            return i
    raise MixError(f"baseline {name!r} names no part; use a part's name, ref or role")


def _band_warning(spec: MixSpec, preset: MixPreset, weights: list[Fraction]) -> str | None:
    band = preset.band
    if band is None:
        return None
    by_role = {p.role: w for p, w in zip(spec.parts, weights, strict=True)}
    ratio = by_role[band.part] / by_role[band.per]
    if Fraction(str(band.min)) <= ratio <= Fraction(str(band.max)):
        return None
    return (
        f"{band.per}:{band.part} is 1:{float(ratio):g}, outside the {band.min:g}-{band.max:g} band of preset "
        f"{spec.preset!r} (seed guidance: {band.per}:{band.part} between 1:{band.min:g} and 1:{band.max:g})"
    )


def plan_mix(spec: MixSpec, available: list[int]) -> MixPlan:
    """Integer targets for every part of ``spec``, given how many records each part holds."""
    preset = resolve_preset(spec)
    sampling = spec.sampling or (preset.sampling if preset else "down")
    parts = []
    for part, n in zip(spec.parts, available, strict=True):
        requested, weight = _weight(part, preset)
        parts.append(PartPlan(part.label, part.role, requested, weight, n))
    weights = [p.weight for p in parts]
    plan = MixPlan(parts, sampling, method="")
    if preset is not None and (w := _band_warning(spec, preset, weights)):
        plan.warnings.append(w)
        log.warning("%s", w)
    for p in parts:
        if p.available == 0:
            raise MixError(f"part {p.label!r} holds no records; there is nothing to sample from")

    baseline = spec.baseline or (preset.baseline if preset and spec.total is None else None)
    if "count" in parts[0].requested:
        targets = [int(w) for w in weights]
        plan.method = "counts"
    elif spec.total is not None:
        targets = largest_remainder(spec.total, weights)
        plan.method = f"largest remainder of total {spec.total}"
    elif baseline is not None and (spec.baseline is not None or sampling == "both"):
        b = _baseline_index(baseline, spec)
        base = parts[b]
        targets = [
            base.available if i == b else _round_half_up(base.available * w / base.weight)
            for i, w in enumerate(weights)
        ]
        plan.method = f"baseline {base.label!r} kept whole ({base.available}), the others scaled to it"
    elif sampling in ("down", "up"):
        ints = reduced(weights)
        step = sum(ints)
        if sampling == "down":
            bound = min(math.floor(p.available * sum(weights) / p.weight) for p in parts)
            k = min(p.available // c for p, c in zip(parts, ints, strict=True))
        else:
            bound = max(math.ceil(p.available * sum(weights) / p.weight) for p in parts)
            k = max(-(-p.available // c) for p, c in zip(parts, ints, strict=True))
        if step <= bound:
            targets = [k * c for c in ints]
            plan.method = f"exact: {k} x the reduced weights {':'.join(map(str, ints))}"
        else:  # the reduced weights are larger than the mix (e.g. 0.333:0.667): as close as integers allow
            targets = largest_remainder(bound, weights)
            plan.method = f"largest remainder of total {bound}"
    else:
        raise MixError(
            "sampling 'both' with ratios needs total (the size of the mix) or baseline (the part kept whole)"
        )
    for p, t in zip(parts, targets, strict=True):
        p.target = t

    for p in parts:
        if p.target == 0:
            raise MixError(f"part {p.label!r} gets 0 records at this total; raise total or its ratio")
        if sampling == "down" and p.target > p.available:
            raise MixError(
                f"part {p.label!r} needs {p.target} records but holds {p.available}; sampling 'down' never "
                "repeats records: lower total or count, or use sampling 'up' or 'both'"
            )
        if sampling == "up" and p.target < p.available:
            raise MixError(
                f"part {p.label!r} would take {p.target} of its {p.available} records; sampling 'up' never "
                "drops records: raise total or count, or use sampling 'down' or 'both'"
            )
    return plan
