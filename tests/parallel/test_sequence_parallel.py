"""Sequence parallelism on CPU with gloo, world sizes 2, 4 and 8: loss and every gradient equal the
unsharded run (relative error <= 1e-4), for Ulysses, context parallelism, and degrees above the
model's head counts. One spawn per world size runs every scenario (sp_worker.py); each test
checks one named scenario."""

from __future__ import annotations

import json

import pytest
import torch
import torch.multiprocessing as mp

from padfree.parallel import SequenceParallel, resolve_modes, ulysses_degrees
from padfree.parallel.comm import check_collectives
from padfree.tiny import FAMILIES, tiny_config
from tests.parallel import sp_worker

BOUND = 1e-4
WHY = "fp32 on CPU: the sharded run sums the same terms in another order (all-to-all, state chaining, chunked loss)."


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = {}
    for world in sp_worker.SCENARIOS:
        folder = tmp_path_factory.mktemp(f"sp{world}")
        out_file = folder / "results.json"
        mp.start_processes(
            sp_worker.run, args=(world, str(folder / "init"), str(out_file)), nprocs=world, start_method="spawn"
        )
        out[world] = json.loads(out_file.read_text())
    return out


CASES = [
    (world, f"{family}/{mode}/{scenario}")
    for world, scenarios in sp_worker.SCENARIOS.items()
    for family in FAMILIES
    for mode in sp_worker.MODES[world]
    for scenario in scenarios
] + [(4, "qwen3_5/auto_above_head_counts/document_spans_three_ranks")]
CHECKPOINTED = [(2, f"qwen3_5/{mode}/activation_checkpointing") for mode in sp_worker.MODES[2]]


@pytest.mark.parametrize("world, name", CASES, ids=[f"sp{w}-{n}" for w, n in CASES])
def test_sharded_equals_unsharded(results, world, name):
    result = results[world][name]
    assert result["loss"] <= BOUND, f"{name}: loss rel error {result['loss']:.2e}. {WHY}"
    assert result["grad"] <= BOUND, f"{name}: grad of {result['param']} rel error {result['grad']:.2e}. {WHY}"


@pytest.mark.parametrize("world, name", CHECKPOINTED, ids=[f"sp{w}-{n}" for w, n in CHECKPOINTED])
def test_checkpointing_sharded_equals_unsharded(results, world, name):
    """Both runs re-run each layer in the backward pass (padfree.checkpointing), collectives included;
    tests/test_checkpointing.py shows the unsharded one equals the run without checkpointing."""
    result = results[world][name]
    assert result["checkpointed"], "the model must really run under activation checkpointing"
    assert result["loss"] <= BOUND and result["grad"] <= BOUND, f"{name}: {result}. {WHY}"


def _ranks_whose_last_document_goes_on(lengths: list[int], world: int) -> list[bool]:
    """From the document lengths alone: shard_batch pads the row to a multiple of `world` (the padding
    is a document of its own) and rank r holds [r * shard, (r + 1) * shard)."""
    total = sum(lengths) + (-sum(lengths) % world)
    boundaries = set(torch.tensor([*lengths, total - sum(lengths)]).cumsum(0).tolist())
    shard = total // world
    return [(r + 1) * shard not in boundaries for r in range(world)]


CONTEXT_CASES = [(world, f"{family}/context/{scenario}", lengths)
                 for world, scenarios in sp_worker.SCENARIOS.items() for scenario, lengths in scenarios.items()
                 for family in FAMILIES]  # fmt: skip


def test_context_parallelism_runs_the_state_summary_pass_only_where_a_next_rank_reads_it(results):
    """The extra gated-delta pass over a rank's last piece (its state summary) feeds only the next
    rank's first document. Ranks whose shard ends at a document boundary, and the last rank, skip it
    (their equivalence is checked above); the others run it once per Gated DeltaNet layer."""
    skipped_on_some_middle_rank = False
    for world, name, lengths in CONTEXT_CASES:
        result = results[world][name]
        goes_on = _ranks_whose_last_document_goes_on(lengths, world)
        assert result["summary_passes"] == [result["gdn_layers"] * g for g in goes_on], (name, goes_on)
        skipped_on_some_middle_rank |= not all(goes_on[:-1])
    # Not vacuous: the scenarios include ranks that run the pass and middle ranks that skip it.
    assert any(any(results[w][n]["summary_passes"]) for w, n, _ in CONTEXT_CASES) and skipped_on_some_middle_rank


def test_auto_picks_context_when_heads_are_fewer_than_ranks(results):
    modes = results[4]["qwen3_5/auto_above_head_counts/document_spans_three_ranks"]["modes"]
    assert modes == {"attention": "context", "gdn": "context"}


EXCHANGED = [  # (world, family, mode, what its Ulysses GDN layers must have exchanged)
    (2, "qwen3_5", "ulysses", "inputs"),  # tiny Qwen3.5: 2 * hidden < C, plain projections
    (2, "qwen3_5", "ulysses:functional", "inputs"),
    (2, "qwen3_5", "ulysses::projections", "projections"),
    (4, "qwen3_5", "ulysses", "projections"),  # 4 * hidden > C
    (4, "qwen3_5", "ulysses::inputs", "inputs"),
    (2, "qwen3_5", "ulysses::gather_scatter:gather_scatter", "gather_scatter"),
    (2, "qwen3_5", "ulysses:functional:gather_scatter:gather_scatter", "gather_scatter"),
    (4, "qwen3_5", "ulysses::gather_scatter:gather_scatter", "gather_scatter"),
    (2, "qwen3_next", "ulysses", "projections"),  # its fused head-interleaved projection: no weight rows to take
    (4, "qwen3_next", "ulysses::inputs", "projections"),
    (2, "qwen3_next", "ulysses::gather_scatter:gather_scatter", "projections"),
]


@pytest.mark.parametrize("world, family, mode, kind", EXCHANGED, ids=[f"sp{w}-{f}-{m}" for w, f, m, _ in EXCHANGED])
def test_ulysses_gdn_layers_exchange_what_the_setting_and_shapes_say(results, world, family, mode, kind):
    """SequenceParallel.gdn_exchange: every GDN layer of the run took the named exchange and none the other
    (the equivalence tests above then cover both exchanges at both degrees); the inputs exchange hands the
    conv a contiguous input (a strided one costs the conv a copy)."""
    for scenario in sp_worker.SCENARIOS[world]:
        calls = results[world][f"{family}/{mode}/{scenario}"]["gdn_exchanges"]
        expected = {
            "inputs": ("inputs",), "projections": ("projections",), "gather_scatter": ("inputs", "gather_scatter"),
        }  # fmt: skip
        for name in ("inputs", "projections", "gather_scatter"):  # a gather_scatter call also gathers ("inputs")
            took = calls[name] > 0
            assert took == (name in expected[kind]), f"{family}/{mode}/{scenario}: {calls}"
        if kind == "gather_scatter":  # every layer that gathered also scattered
            assert calls["inputs"] == calls["gather_scatter"], f"{family}/{mode}/{scenario}: {calls}"
        assert calls["strided_conv_input"] == 0, f"{family}/{mode}/{scenario}: {calls}"
        # the attention layers' exchange: gather_scatter exactly where the spec's fourth field asks for it
        attention = results[world][f"{family}/{mode}/{scenario}"]["attention_gather_scatter"]
        assert (attention > 0) == mode.endswith(":gather_scatter:gather_scatter"), f"{family}/{mode}: {attention}"


def test_sequence_parallel_spec_and_bad_gdn_exchange():
    sp = SequenceParallel.from_spec(None, "ulysses::projections")
    assert (sp.mode, sp.collectives, sp.gdn_exchange) == ("ulysses", "c10d", "projections")
    sp = SequenceParallel.from_spec(None, "context:functional")
    assert (sp.mode, sp.collectives, sp.gdn_exchange) == ("context", "functional", "auto")
    with pytest.raises(ValueError, match=r"gdn_exchange='all' is not one of \('auto', 'inputs', 'projections', 'gather_scatter'\)"):
        SequenceParallel(None, gdn_exchange="all")
    sp = SequenceParallel.from_spec(None, "ulysses:::gather_scatter")
    assert (sp.gdn_exchange, sp.attention_exchange) == ("auto", "gather_scatter")
    with pytest.raises(ValueError, match=r"attention_exchange='inputs' is not one of"):
        SequenceParallel.from_spec(None, "ulysses:c10d:inputs:inputs")
    with pytest.raises(ValueError, match="more than 4 fields"):
        SequenceParallel.from_spec(None, "ulysses:c10d:inputs:projections:x")


@pytest.mark.parametrize("world", [2, 4])
def test_gather_sequence_round_trip_and_backward(results, world):
    assert results[world]["gather_sequence"]["ok"]


def test_patched_model_refuses_an_unsharded_row(results):
    message = results[2]["unsharded_batch_refused"]["message"]
    assert "pass shift_labels" in message or "shard_batch" in message, message


def test_scenarios_really_cross_ranks():
    """The named scenarios do what their names say (guards against a vacuous pass)."""
    lengths = sp_worker.SCENARIOS[4]["document_spans_three_ranks"]
    shard = -(-sum(lengths) // 4)
    start, end = lengths[0], lengths[0] + lengths[1]
    assert len(range(start // shard, (end - 1) // shard + 1)) == 3
    assert sum(sp_worker.SCENARIOS[4]["rank_holding_only_padding"]) <= 3 * -(-9 // 4)
    assert -(-sum(sp_worker.SCENARIOS[4]["conv_halo_wider_than_shard"]) // 4) < tiny_config().linear_conv_kernel_dim - 1
    assert 1 in sp_worker.SCENARIOS[2]["one_token_documents"]


def test_bad_degree_fails_at_setup_with_the_degrees_that_work():
    config = tiny_config("qwen3_5")
    assert ulysses_degrees(config) == [1, 2, 4]
    with pytest.raises(ValueError, match=r"Ulysses sequence parallelism cannot run at degree 3: .*\[1, 2, 4\].*mode='context'"):
        resolve_modes(config, 3, "ulysses")
    assert resolve_modes(config, 3, "auto") == {"attention": "context", "gdn": "context"}
    assert resolve_modes(config, 8, "context") == {"attention": "context", "gdn": "context"}
    with pytest.raises(ValueError, match="mode 'ring' is not one of"):
        resolve_modes(config, 2, "ring")


def test_unknown_collectives_refused_before_any_compute():
    with pytest.raises(ValueError, match=r"collectives='nccl' is not one of \('c10d', 'functional', 'symmetric_memory'\)"):
        check_collectives("nccl")


def test_symmetric_memory_refused_without_cuda_or_nccl(one_rank_group):
    """Symmetric memory needs CUDA GPUs on an NCCL group: on this gloo group (and, on CI, a machine without CUDA) it
    is refused when the settings are made, with the reason and the fix."""
    with pytest.raises(ValueError, match=r"collectives='symmetric_memory' cannot run here: .*Use collectives='c10d'"):
        SequenceParallel(one_rank_group, mode="ulysses", collectives="symmetric_memory")


@pytest.mark.parametrize("P", [2, 4])
def test_ulysses_gdn_send_buffer_from_the_projection_weights(tmp_path, monkeypatch, P):
    """Qwen3.5's GDN projections are plain nn.Linear: Ulysses builds its send layout [P, T_local, C / P] from
    their reordered weights (P=2: one bmm; P=4, where P * hidden > C: a matmul and a transposing copy)
    instead of calling them. It equals the layers' own outputs, concatenated, reordered and transposed, and
    its gradients equal those of the path that calls the layers (taken when a layer has a hook)."""
    from padfree.parallel.ulysses import _gdn_channels, _gdn_send_buffer, _plain_projections
    from padfree.tiny import load_tiny_model

    model = load_tiny_model("qwen3_5", tmp_path)
    module = next(m for m in model.modules() if hasattr(m, "in_proj_qkv"))
    hidden = torch.randn(1, 8, model.config.hidden_size, requires_grad=True)
    order, _ = _gdn_channels(P, module.num_k_heads, module.num_v_heads, module.head_k_dim, module.head_v_dim,
                             hidden.device)  # fmt: skip
    assert (P * model.config.hidden_size <= order.numel()) == (P == 2), "each P must take its own branch"
    linear = torch.nn.functional.linear
    calls = []
    monkeypatch.setattr(torch.nn.functional, "linear", lambda *a, **k: calls.append(1) or linear(*a, **k))
    send, z = _gdn_send_buffer(module, hidden, order, P)
    monkeypatch.undo()
    assert len(calls) == 1, "only in_proj_z runs as a layer; qkv, b and a come from their weights"
    with torch.no_grad():
        local = torch.cat([module.in_proj_qkv(hidden), module.in_proj_b(hidden), module.in_proj_a(hidden)], -1)[0]
    assert send.shape == (P, 8, order.numel() // P)  # at P=4 the 2 key heads are replicated: order repeats columns
    assert send.is_contiguous(), "a contiguous buffer: what the all-to-all sends"
    torch.testing.assert_close(send, local[:, order].unflatten(1, (P, -1)).transpose(0, 1), rtol=1e-5, atol=1e-6)

    params = [hidden, module.in_proj_qkv.weight, module.in_proj_b.weight, module.in_proj_a.weight]
    weights = torch.randn_like(send)
    grads = torch.autograd.grad((send * weights).sum() + z.sum(), params)
    hook = module.in_proj_b.register_forward_hook(lambda *_: None)  # not a plain layer now: the calling path
    assert not _plain_projections(module)
    send_ref, z_ref = _gdn_send_buffer(module, hidden, order, P)
    hook.remove()
    grads_ref = torch.autograd.grad((send_ref * weights).sum() + z_ref.sum(), params)
    torch.testing.assert_close(send, send_ref, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["one_row", "two_rows_accumulated"])
def test_overlapped_grad_reduce_equals_unsharded(results, case):
    """padfree.parallel.grad_reduce (the captured step's gradient sum): the gradients, all-reduced bucket by bucket
    during the sharded backward, equal the unsharded model's, also over two accumulated rows."""
    result = results[2]["qwen3_5/ulysses/overlapped_grad_reduce"][case]
    assert all(d > 1 for d in result["documents"]), result  # packed rows, several documents each
    assert result["params"] == result["reference_params"] > 0, result
    assert result["grads_in_buffers"], "every .grad must be a view into the flat buffers"
    assert result["buckets"] > 3 and all(n > 0 for n in result["launched_during_backward"]), (
        f"buckets must launch during the backward, not all at finish(): {result}"
    )
    assert result["grad"] <= BOUND, f"{case}: grad of {result['param']} rel error {result['grad']:.2e}. {WHY}"


@pytest.mark.parametrize("collectives", ["c10d", "symmetric_memory"])
@pytest.mark.parametrize("P", [2, 4])
def test_auto_exchange_over_symmetric_memory_takes_gather_scatter(tmp_path, collectives, P):
    """"auto" takes gather_scatter where its output moves no more bytes than the all-to-all, and over symmetric
    memory whatever it moves (measured: its transfers run beside the matmuls there); the tiny Qwen3.5's hidden
    equals its heads' width, so the byte rule alone never takes it at P >= 2."""
    from types import SimpleNamespace

    from padfree.parallel.ulysses import _attention_exchange, _gdn_exchange
    from padfree.tiny import load_tiny_model

    model = load_tiny_model("qwen3_5", tmp_path)
    gdn = next(m for m in model.modules() if hasattr(m, "in_proj_qkv"))
    attention = next(m for m in model.modules() if hasattr(m, "o_proj"))
    hidden = model.config.hidden_size
    assert P * hidden > gdn.num_v_heads * gdn.head_v_dim and P * hidden > attention.o_proj.in_features
    sp = SimpleNamespace(collectives=collectives, size=P)
    expected = "gather_scatter" if collectives == "symmetric_memory" else None
    assert (_attention_exchange("auto", sp, attention, hidden) == "gather_scatter") == (expected is not None)
    assert (_gdn_exchange("auto", sp, gdn, hidden, 10**9) == "gather_scatter") == (expected is not None)
    assert _gdn_exchange("projections", sp, gdn, hidden, 10**9) == "projections"  # an explicit setting stays
