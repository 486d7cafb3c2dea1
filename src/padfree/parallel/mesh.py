"""The device mesh and the sequence-parallel settings a patched model is given (no globals).

Two ways to split a packed row's tokens over the `sp` ranks of a mesh, chosen per layer kind:
  "ulysses"  all-to-all from sequence shards to head shards, then the whole row per head group.
             Moves ~4 activations per layer, needs the degree to divide the heads (query heads for
             attention, value heads for Gated DeltaNet; key/value heads may be replicated).
  "context"  every rank keeps its tokens and all heads; attention all-gathers K and V (Qwen3.5
             has 2-4 KV heads), Gated DeltaNet passes per-document states between ranks. Works at
             any degree.
  "auto"     Ulysses where the heads allow it, else context (decided per layer kind).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from padfree.parallel.comm import check_collectives
from padfree.parallel.fused import symmetric_memory_problem

MODES = ("auto", "ulysses", "context")
LAYER_KINDS = ("attention", "gdn")
# What Ulysses' Gated DeltaNet layer exchanges to give each rank its heads over the whole row:
#   "projections" the projected q, k, v, b, a columns of its heads (all-to-all, C = 2*H*K + HV*V + 2*HV
#                 values per token);
#   "inputs"      the layer's input (all-gather, `hidden` values per token), which each rank then projects
#                 with its heads' weight rows: P * hidden / C of the bytes. Needs plain nn.Linear
#                 projections (Qwen3.5); other layers (Qwen3-Next's fused projection, LoRA) exchange
#                 projections;
#   "gather_scatter" all-gathers the input like "inputs", and also projects z, runs the gated norm and
#                 out_proj on the rank's heads over the whole row: out_proj's partial sums [T, hidden]
#                 are reduce-scattered back to the tokens' ranks. No all-to-all and no transposing copy
#                 of its result either way; the output moves P * hidden / (HV * V) of the all-to-all's
#                 bytes. Needs plain nn.Linear z and out projections too (else as "auto").
#   "auto"        "gather_scatter" where its output moves no more bytes (P * hidden <= HV * V) or with
#                 collectives="symmetric_memory" (its transfers run beside its matmuls there,
#                 padfree.parallel.fused), else "inputs" where it moves fewer bytes (P * hidden < C), else
#                 "projections".
GDN_EXCHANGES = ("auto", "inputs", "projections", "gather_scatter")
# What Ulysses' attention layers exchange:
#   "projections"    the projected q, k, v of the rank's heads (all-to-all), and the attention output back
#                    (all-to-all, then a transposing copy into the tokens' layout);
#   "gather_scatter" the layer's input (all-gather, with the rotary tables), which each rank projects with
#                    its heads' weight rows; gate and o_proj run on its heads over the whole row, and
#                    o_proj's partial sums are reduce-scattered back (as GDN's "gather_scatter"). Needs
#                    plain nn.Linear q, k, v and o projections (else "projections");
#   "auto"           "gather_scatter" where its output moves no more bytes (P * hidden <= heads * head_dim) or
#                    with collectives="symmetric_memory" (as GDN's), else "projections".
ATTENTION_EXCHANGES = ("auto", "projections", "gather_scatter")


def init_mesh(dp: int, sp: int, device_type: str = "cuda") -> DeviceMesh:
    """A ("dp", "sp") DeviceMesh over all ranks; torch.distributed must already be initialised.

    Sequence-parallel ranks are adjacent (rank = dp_index * sp + sp_index), so with sp <= GPUs per
    machine the all-to-alls and all-gathers stay inside one machine.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "init_mesh needs torch.distributed initialised: launch with torchrun and call "
            "torch.distributed.init_process_group() first."
        )
    world = dist.get_world_size()
    if dp < 1 or sp < 1 or dp * sp != world:
        raise ValueError(f"dp x sp must equal the world size {world}, got dp={dp}, sp={sp}; pick sp dividing {world}.")
    return init_device_mesh(device_type, (dp, sp), mesh_dim_names=("dp", "sp"))


def _head_counts(config) -> dict[str, int]:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {
        "attention heads": text.num_attention_heads,
        "attention KV heads": text.num_key_value_heads,
        "GDN value heads": text.linear_num_value_heads,
        "GDN key heads": text.linear_num_key_heads,
    }


def _divides_or_multiple(degree: int, heads: int) -> bool:
    return heads % degree == 0 or degree % heads == 0


def ulysses_problems(config, degree: int) -> dict[str, str]:
    """Per layer kind, why Ulysses cannot run at `degree` ({} when it can)."""
    h = _head_counts(config)
    problems = {}
    if h["attention heads"] % degree:
        problems["attention"] = f"{h['attention heads']} attention heads are not divisible by {degree}"
    elif not _divides_or_multiple(degree, h["attention KV heads"]):
        problems["attention"] = f"{h['attention KV heads']} KV heads neither divide nor are a multiple of {degree}"
    if h["GDN value heads"] % degree:
        problems["gdn"] = f"{h['GDN value heads']} GDN value heads are not divisible by {degree}"
    elif not _divides_or_multiple(degree, h["GDN key heads"]):
        problems["gdn"] = f"{h['GDN key heads']} GDN key heads neither divide nor are a multiple of {degree}"
    return problems


def ulysses_degrees(config) -> list[int]:
    """Every degree at which Ulysses runs for both layer kinds."""
    return [d for d in range(1, _head_counts(config)["attention heads"] + 1) if not ulysses_problems(config, d)]


def resolve_modes(config, degree: int, mode: str) -> dict[str, str]:
    """{"attention": ..., "gdn": ...} for `mode` at `degree`; raises with the degrees that work."""
    if mode not in MODES:
        raise ValueError(f"sequence-parallel mode {mode!r} is not one of {MODES}.")
    problems = ulysses_problems(config, degree)
    if mode == "ulysses" and problems:
        raise ValueError(
            f"Ulysses sequence parallelism cannot run at degree {degree}: {'; '.join(problems.values())}. "
            f"Degrees that work with Ulysses for this model: {ulysses_degrees(config)}. Use mode='context' (any "
            "degree) or mode='auto' (Ulysses where the heads allow it, context elsewhere)."
        )
    if mode == "context":
        return {kind: "context" for kind in LAYER_KINDS}
    return {kind: "context" if kind in problems else "ulysses" for kind in LAYER_KINDS}


@dataclass
class SequenceParallel:
    """The sequence-parallel group a packed row is split over, and how.

    group: the "sp" dimension of a DeviceMesh (`mesh["sp"]`) or a ProcessGroup.
    mode:  "auto", "ulysses" or "context" (module docstring). `padfree.patch(model,
           sequence_parallel=...)` checks it against the model's heads and fixes `layer_modes`.
    collectives: "c10d" (default), "functional" or "symmetric_memory": how the collectives are called
           (padfree.parallel.comm says why the default; "symmetric_memory" fuses the gather_scatter exchange's
           all-gathers and reduce-scatters with their matmuls over NVLink, padfree.parallel.fused).
    gdn_exchange: "auto" (default), "inputs", "projections" or "gather_scatter": what Ulysses' Gated
           DeltaNet layers exchange (GDN_EXCHANGES above).
    attention_exchange: "auto" (default), "projections" or "gather_scatter": what Ulysses' attention
           layers exchange (ATTENTION_EXCHANGES above).
    """

    group: DeviceMesh | dist.ProcessGroup
    mode: str = "auto"
    layer_modes: dict[str, str] = field(default_factory=dict)
    collectives: str = "c10d"
    gdn_exchange: str = "auto"
    attention_exchange: str = "auto"

    def __post_init__(self):
        if isinstance(self.group, DeviceMesh):
            if self.group.ndim != 1:
                raise ValueError(f"pass one mesh dimension, e.g. mesh['sp'], not a {self.group.ndim}-D mesh.")
            self.group = self.group.get_group()
        if self.mode not in MODES:
            raise ValueError(f"sequence-parallel mode {self.mode!r} is not one of {MODES}.")
        check_collectives(self.collectives)
        if self.collectives == "symmetric_memory" and (problem := symmetric_memory_problem(self.group)):
            raise ValueError(f"collectives='symmetric_memory' cannot run here: {problem}. Use collectives='c10d'.")
        if self.gdn_exchange not in GDN_EXCHANGES:
            raise ValueError(f"gdn_exchange={self.gdn_exchange!r} is not one of {GDN_EXCHANGES}; pass one of those.")
        if self.attention_exchange not in ATTENTION_EXCHANGES:
            raise ValueError(
                f"attention_exchange={self.attention_exchange!r} is not one of {ATTENTION_EXCHANGES}; pass one of those."
            )

    @classmethod
    def from_spec(cls, group, spec: str) -> "SequenceParallel":
        """From "mode[:collectives[:gdn_exchange[:attention_exchange]]]" (e.g. "ulysses:functional",
        "ulysses::projections", "ulysses:::gather_scatter"), as benchmarks and tests name setups; an empty
        field keeps its default."""
        mode, collectives, gdn_exchange, attention_exchange, *extra = spec.split(":") + ["", "", ""]
        if any(extra):
            raise ValueError(
                f"sequence-parallel spec {spec!r} has more than 4 fields; write "
                "mode[:collectives[:gdn_exchange[:attention_exchange]]]."
            )
        return cls(
            group, mode=mode, collectives=collectives or "c10d", gdn_exchange=gdn_exchange or "auto",
            attention_exchange=attention_exchange or "auto",
        )  # fmt: skip

    @property
    def size(self) -> int:
        return dist.get_world_size(self.group)

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    def resolved_for(self, config) -> "SequenceParallel":
        """A copy with `layer_modes` fixed for `config` (raises if the mode cannot run)."""
        return dataclasses.replace(self, layer_modes=resolve_modes(config, self.size, self.mode))


def reduce_gradients(model: torch.nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Sum every parameter's .grad over `group` (default: all ranks), for training without FSDP.

    Each rank's loss is its tokens' share of the global sum (see padfree.loss), so the full
    gradient is the sum over ranks, not the mean.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if grads:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=group)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
