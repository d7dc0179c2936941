"""The paper's SAE written the way a user of each peer would write it, for benchmarks/train_step.py.

(Also :func:`dense_floor`, the same conv/linear work without any LIF, which is no peer but the
floor train_step.py reads saec's step time against.)

Every peer trains the same network (conv 1->16 k5, conv 16->32 k5, linear
12800->100, linear 100->12800, deconv 32->16 k5, deconv 16->1 k5, a LIF after
each; no biases), from the same initial weights, on the same Poisson spike
trains, with the same objective as saec's ``sae_dense`` spec (L_rec of the
max-over-time cumulative-potential readout + 0.01 P2 on U(T)/T of every layer
+ 0.01 A1 on the latent layer), and Adam. The cumulative potential
U(t) = decay * (U(t-1) + I(t)) depends only on the synaptic current, so each
peer computes it from its currents with plain torch ops.

Semantics, as far as each framework allows:

- ``torch_loop``: each time step runs the whole network; the LIF is
  :func:`saec.runtime.lif.lif_step` (plain torch ops, autograd through
  straight-through rules): exactly saec's semantics, the reference a user
  could write by hand.
- ``snntorch``: ``snn.Leaky(beta=decay, threshold, reset_mechanism="zero")``
  stepped in a loop, straight-through surrogate. No floor rule (snnTorch has
  none); the reset is applied at the next step from the previous membrane.
- ``spikingjelly``: ``neuron.LIFNode(tau=1/(1-decay), decay_input=False,
  v_reset=0, detach_reset=True)`` in multi-step mode (``step_mode="m"``, one
  call per layer over all T), with a built-in surrogate (ATan) so that its own
  fused CPU / CUDA implementation runs; spike when v >= threshold; no floor rule.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saec.compiler import ops
from saec.compiler.graph import IRGraph
from saec.training import losses as L
from saec.runtime.encoding import poisson_encode
from saec.runtime.lif import lif_step
from saec.runtime.readout import max_cumulative_readout

#: the exact command that installs each optional peer (never a runtime dependency of saec)
INSTALL = {
    "snntorch": "pip install 'snntorch==1.0.0'   (or: pip install -e '.[bench]')",
    "spikingjelly": "pip install --no-deps 'spikingjelly==2.0.0' loguru packaging tqdm   "
                    "(--no-deps: its metadata would pull another torch)",
}

SYNAPSES = ("conv1", "conv2", "latent", "fc_dec", "deconv1", "output")


def available(frameworks: list[str]) -> list[str]:
    """The frameworks that can run here; each missing peer is named on stderr with its install command."""
    import sys

    names = []
    for name in frameworks:
        reason = missing_peer(name)
        if reason:
            print(f"skipping {reason}", file=sys.stderr)
        else:
            names.append(name)
    return names


def missing_peer(name: str) -> str | None:
    """None when peer ``name`` imports, else the reason and the install command."""
    module = {"snntorch": "snntorch", "spikingjelly": "spikingjelly.activation_based.neuron"}.get(name)
    if module is None:
        return None
    try:
        __import__(module)
    except Exception as exc:  # noqa: BLE001 - any import failure: report and skip
        return f"{name} unavailable ({type(exc).__name__}: {exc}); install with: {INSTALL[name]}"
    return None


class NetParams(nn.Module):
    """The six synapses' weights as plain tensors (no biases, like saec's SAE)."""

    def __init__(self, graph: IRGraph, weights: dict[str, Tensor]) -> None:
        super().__init__()
        self.graph = graph
        self.w = nn.ParameterDict({n: nn.Parameter(weights[f"{n}.weight"].clone()) for n in SYNAPSES})

    def synapse(self, name: str, x: Tensor) -> Tensor:
        """The synapse ``name`` on x [N, ...] (flattening / unflattening as the graph does)."""
        op = self.graph.op(name)
        w = self.w[name]
        if isinstance(op, ops.Conv2d):
            return F.conv2d(x, w, stride=op.stride, padding=op.padding)
        if isinstance(op, ops.ConvTranspose2d):
            if x.dim() == 2:
                x = x.reshape(x.shape[0], *self.graph.op("unflat").shape)
            return F.conv_transpose2d(x, w, stride=op.stride, padding=op.padding, output_padding=op.output_padding)
        return F.linear(x.reshape(x.shape[0], -1), w)


def objective(graph: IRGraph, U_last: list[Tensor], U_out: Tensor, latent_counts: Tensor, x: Tensor) -> Tensor:
    """saec's sae_dense objective from the pieces every peer computes."""
    cfg = graph.attrs["losses"]
    T = U_out.shape[0]
    x_hat = max_cumulative_readout(U_out, graph.op("_readout"))
    per_step = T if cfg.get("potential_per_timestep") else None
    return (L.reconstruction_loss(x_hat, x)
            + cfg["p2"]["weight"] * L.potential_penalty_l2(U_last, per_step)
            + cfg["a1"]["weight"] * L.activity_penalty([latent_counts], T))


def _leaky_sum(current: Tensor, decay: float) -> Tensor:
    """U(T) of U(t) = decay * (U(t-1) + I(t)) over current [T, B, ...], as one weighted sum."""
    T = current.shape[0]
    w = torch.tensor([decay ** (T - t) for t in range(T)], dtype=current.dtype, device=current.device)
    return torch.tensordot(w, current, dims=1)


def _leaky_all(current: Tensor, decay: float) -> Tensor:
    """U(1..T) of the same recurrence, [T, B, ...]."""
    U, out = torch.zeros_like(current[0]), []
    for t in range(current.shape[0]):
        U = (U + current[t]) * decay
        out.append(U)
    return torch.stack(out)


StepFn = Callable[[Tensor, torch.Generator], float]


def _trainer(params: nn.Module, forward: Callable[[Tensor, torch.Generator], Tensor], lr: float) -> StepFn:
    opt = torch.optim.Adam(params.parameters(), lr=lr)

    def step(x: Tensor, gen: torch.Generator) -> float:
        loss = forward(x, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def torch_loop(graph: IRGraph, weights: dict[str, Tensor], lr: float, device: torch.device) -> StepFn:
    """Each time step runs the whole network; LIF = saec's lif_step (plain torch ops)."""
    net = NetParams(graph, weights).to(device)
    lif = graph.op("conv1.lif")
    enc = graph.op("_encode")

    def forward(x: Tensor, gen: torch.Generator) -> Tensor:
        spikes_in = poisson_encode(x, enc, generator=gen)
        state: list = [None] * len(SYNAPSES)
        latent_counts, U_out = 0, []
        for t in range(spikes_in.shape[0]):
            h = spikes_in[t]
            for i, name in enumerate(SYNAPSES):
                h, state[i] = lif_step(net.synapse(name, h), state[i], lif)
                if name == "latent":
                    latent_counts = latent_counts + h
            U_out.append(state[-1][1])
        U_last = [s[1] for s in state]
        return objective(graph, U_last, torch.stack(U_out), latent_counts, x)

    return _trainer(net, forward, lr)


def snntorch_network(graph: IRGraph, weights: dict[str, Tensor], device: torch.device
                     ) -> tuple[NetParams, Callable[[Tensor, torch.Generator], tuple[list[Tensor], Tensor, Tensor]]]:
    """The snnTorch network and its forward pass, for a trainer of one's own (time_to_quality.py).

    Args:
        graph: the compiled sae_dense IR (layer shapes, LIF and encoding parameters).
        weights: initial weights, ``{"<synapse>.weight": tensor}`` (saec's ``ir_state_dict``).
        device: where the network lives.

    Returns:
        (params, run): the weights as a module (for the optimizer), and ``run(x, gen)`` on images
        x [B, 1, 28, 28] -> (U(T) of every layer, U(1..T) of the output layer [T, B, ...], the
        latent layer's spike counts [B, 100]): the pieces :func:`objective` and the readout take.
    """
    import snntorch as snn
    from snntorch import surrogate

    net = NetParams(graph, weights).to(device)
    lif = graph.op("conv1.lif")
    enc = graph.op("_encode")
    neurons = [snn.Leaky(beta=lif.decay, threshold=lif.threshold, reset_mechanism="zero",
                         spike_grad=surrogate.straight_through_estimator()).to(device) for _ in SYNAPSES]

    def run(x: Tensor, gen: torch.Generator) -> tuple[list[Tensor], Tensor, Tensor]:
        spikes_in = poisson_encode(x, enc, generator=gen)
        mem = [n.reset_mem() for n in neurons]
        U: list = [0.0] * len(SYNAPSES)
        latent_counts, U_out = 0, []
        for t in range(spikes_in.shape[0]):
            h = spikes_in[t]
            for i, name in enumerate(SYNAPSES):
                cur = net.synapse(name, h)
                h, mem[i] = neurons[i](cur, mem[i])
                U[i] = (U[i] + cur) * lif.decay
                if name == "latent":
                    latent_counts = latent_counts + h
            U_out.append(U[-1])
        return U, torch.stack(U_out), latent_counts

    return net, run


def snntorch_loop(graph: IRGraph, weights: dict[str, Tensor], lr: float, device: torch.device) -> StepFn:
    net, run = snntorch_network(graph, weights, device)

    def forward(x: Tensor, gen: torch.Generator) -> Tensor:
        return objective(graph, *run(x, gen), x)

    return _trainer(net, forward, lr)


def spikingjelly_multistep(graph: IRGraph, weights: dict[str, Tensor], lr: float, device: torch.device) -> StepFn:
    from spikingjelly.activation_based import functional, neuron, surrogate

    net = NetParams(graph, weights).to(device)
    lif = graph.op("conv1.lif")
    enc = graph.op("_encode")
    # decay_input=False: H = V - V / tau + X = (1 - 1/tau) V + X, so decay = 1 - 1/tau
    tau = 1.0 / (1.0 - lif.decay)
    nodes = nn.ModuleList(neuron.LIFNode(tau=tau, decay_input=False, v_threshold=lif.threshold, v_reset=0.0,
                                         surrogate_function=surrogate.ATan(), detach_reset=True, step_mode="m")
                          for _ in SYNAPSES).to(device)

    def forward(x: Tensor, gen: torch.Generator) -> Tensor:
        functional.reset_net(nodes)
        h = poisson_encode(x, enc, generator=gen)
        T, B = h.shape[:2]
        U_last = []
        for i, name in enumerate(SYNAPSES):
            flat = net.synapse(name, h.flatten(0, 1))
            cur = flat.reshape(T, B, *flat.shape[1:])
            h = nodes[i](cur)
            U_last.append(_leaky_sum(cur, lif.decay))
            if name == "latent":
                latent_counts = h.sum(0)
            if name == SYNAPSES[-1]:
                U_out = _leaky_all(cur, lif.decay)
        return objective(graph, U_last, U_out, latent_counts, x)

    return _trainer(net, forward, lr)


def dense_floor(graph: IRGraph, weights: dict[str, Tensor], lr: float, device: torch.device) -> StepFn:
    """The dense floor: saec's conv/linear work alone, with ReLU where the LIF layers are.

    The same six synapses with the same shapes and weights, run the way saec runs them: each on
    the whole spike train with the T time steps folded into the batch dimension ([T·B, ...]),
    forward, backward (input and weight gradients) and Adam, in plain torch (default layouts,
    fresh tensors). In place of each LIF scan, one elementwise ReLU; in place of the readout and
    the objective, the squared error of the mean over T of the output against the image. It
    learns nothing useful: it is the time the dense kernels of this machine need for the work
    every framework here must do, so a step of saec (or of any peer) can be read against it.
    """
    net = NetParams(graph, weights).to(device)
    enc = graph.op("_encode")

    def forward(x: Tensor, gen: torch.Generator) -> Tensor:
        h = poisson_encode(x, enc, generator=gen)
        T, B = h.shape[:2]
        h = h.flatten(0, 1)
        for name in SYNAPSES:
            h = torch.relu(net.synapse(name, h))
        x_hat = h.reshape(T, B, *h.shape[1:]).mean(0)
        return (x_hat - x).square().flatten(1).sum(1).mean()

    return _trainer(net, forward, lr)


PEERS: dict[str, Callable[..., StepFn]] = {
    "torch_loop": torch_loop,
    "snntorch": snntorch_loop,
    "spikingjelly": spikingjelly_multistep,
    "dense_floor": dense_floor,  # not a peer: the reference of train_step.py's saec_vs_dense_floor
}


def nominal_flops(graph: IRGraph, timesteps: int, batch: int) -> float:
    """FLOPs of one training step's conv/linear work: 3 x forward MACs x 2.

    Forward, input gradient and weight gradient each cost the forward's MACs
    (the first layer needs no input gradient; it is counted anyway: the count
    is nominal and the same for every framework).
    """
    macs = sum(graph.meta(n).get("macs", 0) for n in graph.order())
    return 3.0 * 2.0 * macs * timesteps * batch
