"""The two walks over the IR (layer-wise and step by step): their op tables, the execution plan
they read, and that the step-by-step reference computes what the layer-wise forward computes."""

from __future__ import annotations

import ast

import pytest
import torch

from saec.compiler import ops
from saec.compiler.dispatch import UnsupportedOp
from saec.compiler.graph import IRGraph
from saec.compiler.passes.exec_plan import META_KEY, plan_execution, plan_is_current
from saec.runtime.execution import Execution
from saec.runtime.layerwise import LAYERWISE
from saec.runtime.model import SpikingAutoencoder
from saec.runtime.stepwise import STEPWISE, run_stepwise
from tests.conftest import REPO
from tests.runtime.test_model import SPIKING_LAYERS, tiny_graph

#: The longest function saec/runtime may hold (lines, decorators excluded).
MAX_FUNCTION_LINES = 60
#: The Triton forward kernel is one JIT body (70 lines); splitting it into jitted helpers changes GPU code,
#: which wants a device check of its own.
LONG_FUNCTIONS_ALLOWED = {("kernels/lif_triton.py", "lif_forward")}


def test_both_walks_handle_every_op_type_or_refuse_it():
    assert LAYERWISE.missing() == [] and STEPWISE.missing() == []
    assert all(LAYERWISE.handles(cls) for cls in ops.OP_TYPES.values())  # the layer-wise forward runs them all
    assert set(STEPWISE.refused) == {ops.Reparameterize}


def test_the_model_plans_a_copy_of_a_graph_without_a_current_plan(tmp_path):
    _, graph = tiny_graph(tmp_path)
    assert plan_is_current(graph)  # the compile flow plans: ir.json carries what the runtime runs
    assert SpikingAutoencoder(graph).graph is graph  # a current plan is used as it is
    graph.replace_op("latent.lif", ops.LIF(threshold=2.0))  # another structure: the plan is stale
    before = graph.to_dict()
    model = SpikingAutoencoder(graph)
    assert model.graph is not graph and plan_is_current(model.graph) and not plan_is_current(graph)
    assert graph.to_dict() == before  # the caller's graph is left as it was
    assert model.graph.order() == graph.order()
    assert plan_execution(graph) is graph and SpikingAutoencoder(graph).graph is graph


def test_a_rewired_graph_is_planned_in_topological_order():
    """A lowering that rewires nodes leaves insertion order non-topological; the planned copy still runs."""
    graph = IRGraph()
    graph.add("in", ops.Input(shape=(4,)), shape=(4,))
    graph.add("lif", ops.LIF(), ("in",), shape=(4,), layer="lif")
    graph.add("out", ops.Output(), ("lif",), shape=(4,))
    graph.add("fc", ops.Linear(in_features=4, out_features=4), ("in",), shape=(4,), layer="fc")
    graph.rewire("lif", ("fc",))  # fc now runs before lif, though inserted after it
    model = SpikingAutoencoder(graph)
    assert model.order == graph.order() == ["in", "fc", "lif", "out"]
    train = (torch.rand((3, 2, 4), generator=torch.Generator().manual_seed(0)) < 0.5).float()
    with torch.no_grad():
        out = model(train.mean(0), encoded=train, record={"lif"})
    assert out.trains["lif"].shape == (3, 2, 4)


@pytest.mark.parametrize("variant", ["as planned", "no deferred reshapes", "layouts flipped", "no early unflatten"])
def test_fast_path_gives_the_reference_spikes_under_every_plan(variant):
    """Whatever the plan says about reshapes and layouts, the spikes, the loss and x_hat stay
    bit-identical to the reference path's (the plan may only move work, never change it)."""
    from saec.compiler.pipeline import compile_spec
    from saec.training.objective import objective
    from tests.conftest import SPECS

    _, graph = compile_spec(str(SPECS / "sae_dense.yaml"), ["encoding.timesteps=4"])
    model = SpikingAutoencoder(graph)
    model.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)  # every layer spikes
    layers = {"conv1", "conv2", "latent", "fc_dec", "deconv1", "output"}
    gen = torch.Generator().manual_seed(3)
    x = torch.nn.functional.avg_pool2d((torch.rand(2, 1, 28, 28, generator=gen) < 0.15).float(), 3, 1, 1) * 1.5

    def run(execution):
        model.execution = execution
        out = model(x.clamp(0, 1), generator=torch.Generator().manual_seed(1), record=layers)
        return out, objective(model, out, x.clamp(0, 1))[0].detach()

    ref, ref_loss = run(Execution(path="reference"))
    changed = 0
    for name in model.order:
        plan = model.graph.meta(name)[META_KEY]
        if variant == "no deferred reshapes" and plan.get("defer_reshape"):
            plan["defer_reshape"], changed = False, changed + 1
        elif variant == "layouts flipped" and "contiguous_out" in plan:
            plan["contiguous_out"], changed = not plan["contiguous_out"], changed + 1
        elif variant == "no early unflatten" and plan.get("out_sample"):
            plan["out_sample"], changed = None, changed + 1
    assert (changed > 0) == (variant != "as planned")
    fast, fast_loss = run(Execution())
    for layer in layers:
        assert fast.trains[layer].any(), layer
        assert torch.equal(fast.trains[layer], ref.trains[layer]), (variant, layer)
    assert torch.equal(fast.x_hat, ref.x_hat) and torch.equal(fast_loss, ref_loss)


@pytest.mark.parametrize("preset", ["saec", "paper", "reference"])
def test_stepwise_reconstruction_equals_the_layerwise_one(preset, tmp_path):
    """The readout, stepped (a running peak of U), gives the layer-wise x_hat bit for bit
    (the paper preset reads from t_min = 0, the others from 1). Both with the dense synapses: the
    spike-driven ones sum in another order (tests/runtime/test_spikedriven.py)."""
    _, graph = tiny_graph(tmp_path, [f"preset={preset}"])
    model = SpikingAutoencoder(graph)
    model.reset_parameters(torch.Generator().manual_seed(7))
    model.execution = Execution(spike_driven=False)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((5, 1, 8, 8), generator=gen)
    with torch.no_grad():
        out = model(x, generator=gen, record=frozenset({"_encode", *SPIKING_LAYERS}))
    stepped = run_stepwise(model, x, out.encoded)
    assert set(stepped.trains) == set(SPIKING_LAYERS)
    assert stepped.x_hat.abs().sum() > 0
    assert torch.equal(stepped.x_hat, out.x_hat)


def test_stepwise_runs_the_ae_baseline_and_refuses_vae_sampling(tmp_path):
    _, ae = tiny_graph(tmp_path, kind="ae", regularizers="{}")
    model = SpikingAutoencoder(ae)
    x = torch.rand((3, 1, 8, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(x).x_hat
    assert any(isinstance(model.graph.op(n), ops.ReLU) for n in model.order)
    assert torch.equal(run_stepwise(model, x, x.unsqueeze(0)).x_hat, want)
    _, vae = tiny_graph(tmp_path, kind="vae", regularizers="{}")
    with pytest.raises(UnsupportedOp, match=r"^node `latent.sample`: step-by-step forward does not support "
                                            r"`reparameterize`: VAE sampling belongs to the non-spiking VAE "
                                            r"baseline, which runs one step \(T = 1\); use the layer-wise forward$"):
        SpikingAutoencoder(vae).eval().forward_stepwise(x, x.unsqueeze(0))


def _leaky_graph() -> IRGraph:
    """input spikes (4) -> linear (3) -> leaky integrator -> output, as read from a NIR file."""
    graph = IRGraph({"timesteps": 5})
    graph.add("in", ops.Input(shape=(4,)), shape=(4,))
    graph.add("fc", ops.Linear(in_features=4, out_features=3), ("in",), shape=(3,), layer="fc")
    graph.add("li", ops.LeakyIntegrator(decay=0.8, gain=0.5), ("fc",), shape=(3,), layer="li")
    graph.add("out", ops.Output(), ("li",), shape=(3,))
    return graph


def test_leaky_integrator_runs_alike_layerwise_and_stepwise():
    model = SpikingAutoencoder(_leaky_graph())
    model.reset_parameters(torch.Generator().manual_seed(0))
    train = (torch.rand((5, 2, 4), generator=torch.Generator().manual_seed(1)) < 0.5).float()
    with torch.no_grad():
        out = model(train.mean(0), encoded=train, record={"li"})
    stepped = run_stepwise(model, train.mean(0), train)
    assert out.trains["li"].shape == (5, 2, 3) and out.trains["li"].abs().sum() > 0
    assert torch.equal(stepped.x_hat, out.trains["li"][-1])
    v, by_hand = torch.zeros(2, 3), []  # v(t) = 0.8 v(t-1) + 0.5 I(t)
    weight = model.synapse("fc").weight.detach().clone().requires_grad_()
    for t in range(5):
        v = v * 0.8 + torch.nn.functional.linear(train[t], weight) * 0.5
        by_hand.append(v)
        torch.testing.assert_close(out.trains["li"][t], v.detach())
    # it trains: the gradient reaches the synapse through the integrator (the fast path runs it)
    model(train.mean(0), encoded=train, record={"li"}).trains["li"].square().sum().backward()
    torch.stack(by_hand).square().sum().backward()
    assert model.synapse("fc").weight.grad.abs().sum() > 0
    torch.testing.assert_close(model.synapse("fc").weight.grad, weight.grad)


def test_no_function_in_the_runtime_is_longer_than_sixty_lines():
    root = REPO / "saec" / "runtime"
    long = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                where = (path.relative_to(root).as_posix(), node.name)
                if lines > MAX_FUNCTION_LINES and where not in LONG_FUNCTIONS_ALLOWED:
                    long.append(f"{where[0]}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
