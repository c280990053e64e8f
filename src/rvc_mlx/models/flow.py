"""RVC's normalising flow `flow`: mean-only residual coupling layers on WaveNet stacks, run in reverse.

Matches `rvc.lib.infer_pack.models.ResidualCouplingBlock` / `modules.ResidualCouplingLayer` / `modules.WN`
(weight norm already folded into the conv weights). Channels-last throughout; submodule names equal the
upstream state-dict names (`flows.0.enc.in_layers.0`, `flows.0.enc.cond_layer`, ...).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from rvc_mlx.models.activations import sigmoid, tanh_arith
from rvc_mlx.models.conv import Conv1d, Steps, cpu_streams, run_lockstep, run_steps, use_cpu_path

FLOW_KERNEL_SIZE = 5  # WaveNet kernel of RVC's flow (fixed in the synthesizer constructors)
FLOW_DILATION_RATE = 1  # WaveNet dilation growth of RVC's flow
FLOW_LAYERS = 3  # WaveNet layers per coupling layer
N_FLOWS = 4  # coupling layers (each followed by a channel flip)
MIN_CHUNK_FRAMES = 128  # CPU path: shortest time chunk of the flow, frames (fewer: one piece)


@mx.compile  # not shapeless: the arithmetic exp's bit view has no shapeless form
def _gate_cpu(x_tanh: mx.array, x_sigmoid: mx.array) -> mx.array:
    return tanh_arith(x_tanh) * sigmoid(x_sigmoid)  # traced on the CPU: sigmoid's arithmetic exp


def _gate(x_tanh: mx.array, x_sigmoid: mx.array) -> mx.array:
    """WaveNet's gated unit tanh(a)·sigmoid(b): (B, T, H) each -> (B, T, H); on the CPU one fused pass with
    the arithmetic tanh and exp."""
    if mx.default_device() == mx.cpu and x_tanh.dtype == mx.float32:
        return _gate_cpu(x_tanh, x_sigmoid)
    return mx.tanh(x_tanh) * mx.sigmoid(x_sigmoid)


class WN(nn.Module):
    """WaveNet stack with gated tanh·sigmoid units and global conditioning. (B, T, H) -> (B, T, H)."""

    def __init__(
        self, hidden_channels: int, kernel_size: int, dilation_rate: int, n_layers: int, gin_channels: int
    ):
        super().__init__()
        self.hidden_channels = hidden_channels  # H, residual width
        self.n_layers = n_layers  # gated layers
        if gin_channels:
            self.cond_layer = Conv1d(gin_channels, 2 * hidden_channels * n_layers, 1)
        self.in_layers = []
        self.res_skip_layers = []
        for i in range(n_layers):
            dilation = dilation_rate**i
            padding = (kernel_size * dilation - dilation) // 2
            self.in_layers.append(
                Conv1d(hidden_channels, 2 * hidden_channels, kernel_size, dilation=dilation, padding=padding)
            )
            res_skip = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(Conv1d(hidden_channels, res_skip, 1))

    def __call__(self, x: mx.array, mask: mx.array, g: mx.array | None) -> mx.array:
        """x: (B, T, H), mask: (B, T, 1), g: (B, 1, gin) or None -> (B, T, H)."""
        h = self.hidden_channels
        if g is not None:
            g = self.cond_layer(g)  # (B, 1, 2·H·n_layers)
        output = None
        for i, (in_layer, res_skip_layer) in enumerate(
            zip(self.in_layers, self.res_skip_layers, strict=True)
        ):
            x_in = in_layer(x)  # (B, T, 2H)
            if g is not None:
                x_in = x_in + g[..., 2 * h * i : 2 * h * (i + 1)]
            acts = _gate(x_in[..., :h], x_in[..., h:])
            res_skip = res_skip_layer(acts)
            if i < self.n_layers - 1:
                x = (x + res_skip[..., :h]) * mask
                skip = res_skip[..., h:]
            else:
                skip = res_skip
            output = skip if output is None else output + skip
        return output * mask


class ResidualCouplingLayer(nn.Module):
    """Mean-only affine coupling: the second half of the channels is shifted by a function of the first."""

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int,
    ):
        super().__init__()
        if channels % 2:
            raise ValueError(f"coupling needs an even channel count, got {channels}")
        self.half_channels = channels // 2  # channels passed through unchanged
        self.pre = Conv1d(self.half_channels, hidden_channels, 1)
        self.enc = WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels)
        self.post = Conv1d(hidden_channels, self.half_channels, 1)

    def reverse(self, x: mx.array, mask: mx.array, g: mx.array | None) -> mx.array:
        """x: (B, T, C) -> (B, T, C): x1 <- (x1 − m(x0)) · mask."""
        x0, x1 = x[..., : self.half_channels], x[..., self.half_channels :]
        h = self.pre(x0) * mask
        h = self.enc(h, mask, g)
        m = self.post(h) * mask
        x1 = (x1 - m) * mask
        return mx.concatenate([x0, x1], axis=-1)


class Flip(nn.Module):
    """Reverses the channel order (its own inverse); holds no parameters."""

    def reverse(self, x: mx.array, mask: mx.array, g: mx.array | None) -> mx.array:
        return x[..., ::-1]


class ResidualCouplingBlock(nn.Module):
    """`flow`: [coupling, flip] × n_flows; inference runs it in reverse, prior sample z_p -> latent z."""

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        gin_channels: int,
        kernel_size: int = FLOW_KERNEL_SIZE,
        dilation_rate: int = FLOW_DILATION_RATE,
        n_layers: int = FLOW_LAYERS,
        n_flows: int = N_FLOWS,
    ):
        super().__init__()
        self.flows = []
        for _ in range(n_flows):
            self.flows.append(
                ResidualCouplingLayer(
                    channels, hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels
                )
            )
            self.flows.append(Flip())

    @property
    def reach(self) -> int:
        """Frames on each side that one output frame depends on (the WaveNets' conv paddings)."""
        return sum(layer.padding for flow in self.flows[::2] for layer in flow.enc.in_layers)

    def reverse(self, z_p: mx.array, mask: mx.array, g: mx.array | None) -> mx.array:
        """z_p: (B, T, C), mask: (B, T, 1), g: (B, 1, gin) or None -> z (B, T, C).

        On the CPU path, long inputs go in one time chunk per CPU stream, each with `reach` frames of context
        on either side (the same convolutions see the same inputs there), the chunks in lockstep.
        """
        t = z_p.shape[1]
        streams = cpu_streams() if use_cpu_path() else []
        n = min(len(streams), t // MIN_CHUNK_FRAMES)
        if n < 2:
            return run_steps(self._steps(z_p, mask, g))
        bounds = [k * t // n for k in range(n + 1)]
        spans = [(max(0, bounds[k] - self.reach), min(t, bounds[k + 1] + self.reach)) for k in range(n)]
        lanes = [self._steps(z_p[:, lo:hi], mask[:, lo:hi], g) for lo, hi in spans]
        outs = run_lockstep(lanes, streams[:n])
        pieces = [out[:, bounds[k] - spans[k][0] : bounds[k + 1] - spans[k][0]] for k, out in enumerate(outs)]
        return mx.concatenate(pieces, axis=1)

    def _steps(self, x: mx.array, mask: mx.array, g: mx.array | None) -> Steps:
        """`reverse` in one piece as a step generator (see `conv.run_lockstep`): a step per coupling."""
        for flow in reversed(self.flows):
            x = flow.reverse(x, mask, g)
            if isinstance(flow, ResidualCouplingLayer):
                x = yield x
        return x
