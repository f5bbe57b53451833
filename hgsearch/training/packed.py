"""Packed training: K configurations of any shape trained as one batched computation (one GPU, many trials).

A pack shares one seed, so every member sees the batches (and denoising noise) that `loop.train` with
that seed draws: a step is one gather and, per layer, one batched matmul over the K members instead of
K small launches, which is what fills a GPU with small MLPs. (The search trains every trial with the
run's one seed, so grouping by seed costs nothing; members of different seeds go to different packs.)
Results equal K separate `loop.train()` runs within float rounding (tests check it on the CPU):

- Same initial weights: member k is built exactly as train() builds it (torch.manual_seed(seed), then
  families.build) and copied into the top-left corner of the packed tensors; the rest is zero.
- Widths and bottlenecks are padded with zeros, exactly: a zero row of W_in makes a stream feature
  that is 0 for every input; BatchNorm (affine=False) of that constant column is (0 - 0) * rsqrt(0 + eps)
  = 0 in training and, its running mean staying 0, in evaluation too; a zero row of W_down gives a
  pre-activation of 0, where ReLU's gradient is 0. So every padded weight gets a gradient of exactly 0
  (each is multiplied by a 0 feature or a 0 ReLU gradient), AdamW's moments stay 0 and its update,
  0 / (0 + eps) plus decay of 0, keeps it at 0. Real features are normalised per column, untouched.
- Depths are padded by masks: the pack has max(depth) blocks and block l of member k is multiplied by
  a 0/1 mask. A masked block is the identity exactly (z + 0 * branch) and gets zero gradients.
- Learning rates may differ: each member's weights get PyTorch's fused AdamW kernel (torch._fused_adamw_,
  what torch.optim.AdamW(fused=True) in train() runs) with that member's learning rate as a device
  tensor, linear decay to zero per member. A member's slices are its whole padded (out, in) slabs, so
  the padding above keeps them exact. A member with a fixed W_in leaves its W_in out of its update
  (as train() leaves it out of its optimizer), so it neither moves nor decays.
- BatchNorm normalises each member over the batch separately; running statistics are kept per member
  and used in evaluation, as nn.BatchNorm1d does.
- The loss is the sum of the K per-member MSEs: member k's gradient is exactly its own MSE's gradient,
  and no operation mixes members, so a member that diverges cannot disturb the others.

The step keeps all its state in tensors (step count, learning rates, which members are still
training) and never reads a value back, so on CUDA it is captured once in a CUDA graph and replayed;
the CPU runs the same step function eagerly. Evaluation is always float32.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from hgsearch.data.tasks import Split, TaskData, add_noise, as_float
from hgsearch.errors import TrialFailed, UsageError
from hgsearch.model.families import ArchSpec, ResidualMLP, build
from hgsearch.training.loop import EVAL_BATCHES, TrainResult, _db, make_optimizer
from hgsearch.training.packing import K0, padded_params

BN_EPS = 1e-5  # nn.BatchNorm1d's defaults
BN_MOMENTUM = 0.1
BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
CAPTURE_TRIES = 3  # a failed capture is tried again (see PackStep._capture), then the step runs eagerly
GRAPH_WARMUP = 3  # eager steps on a side stream before capture, as torch.cuda.graph's docs prescribe
# What a repack costs with CUDA graphs, in steps of the pack: the warm-up steps, the capture itself
# (about one step) and the copies (see repack_pays).
REBUILD_STEPS = GRAPH_WARMUP + 2

# Called after each finished epoch with (member, epoch, {"loss": epoch mean}); False retires the member
# (its weights and statistics freeze; its result is evaluated at the end like the others').
MemberEpoch = Callable[[int, int, dict], bool]

# Called after each finished epoch with (member, state): state is what loop.train's on_epoch_end
# gives (model, optimizer and generator state, epoch, step, loss, seconds) for that member alone, so
# loop.train(resume=state) or a pack (train_packed(resume=...)) continues it. Answers as loop.train's
# on_epoch_end (loop.EpochEnd): False retires the member, True or None trains it on.
MemberEpochEnd = Callable[[int, dict[str, Any]], bool | None]

# Called after every step as on_step(epoch, step, steps_per_epoch): a host-side hook (stop checks,
# progress) that reads nothing from the device.
StepHook = Callable[[int, int, int], None]

# Called after each finished epoch (after the member hooks) as on_pack_epoch(model, epochs_done): a
# host-side hook that may evaluate the pack (evaluate_packed reads the weights and changes nothing).
PackEpoch = Callable[["PackedMLP", int], None]


def train_block(z: torch.Tensor, down: torch.Tensor, up: torch.Tensor, mask: torch.Tensor,
                running_mean: torch.Tensor, running_var: torch.Tensor, momentum: torch.Tensor,
                unbias: float) -> torch.Tensor:
    """One residual block in training mode on feature-major z (K, width, B): BatchNorm over the batch
    (running statistics, (K, 1, width) views, updated in place), ReLU bottleneck, depth mask, residual."""
    # BatchNorm in float32 even under bf16 autocast, as autocast runs nn.BatchNorm1d.
    zf = z.float()
    mean = zf.mean(2, keepdim=True)
    var = zf.var(2, unbiased=False, keepdim=True)
    with torch.no_grad():  # nn.BatchNorm1d keeps the unbiased variance (unbias = n / (n - 1))
        running_mean.lerp_(mean.transpose(1, 2), momentum)
        running_var.lerp_(var.transpose(1, 2) * unbias, momentum)
    zn = (zf - mean) * torch.rsqrt(var + BN_EPS)
    return z + mask * torch.bmm(up, torch.relu(torch.bmm(down, zn)))


_compiled_block: Callable[..., torch.Tensor] | None = None


def compiled_block() -> Callable[..., torch.Tensor]:
    """train_block through torch.compile with dynamic shapes: one compilation (fused BatchNorm, ReLU,
    mask and residual, forward and backward) serves every pack's K, width, bottleneck and batch."""
    global _compiled_block
    if _compiled_block is None:
        _compiled_block = torch.compile(train_block, dynamic=True)
    return _compiled_block


def check_packable(specs: Sequence[ArchSpec]) -> None:
    """Packable specs share the input and output sizes; widths, bottlenecks, depths and families may differ."""
    if not specs:
        raise UsageError("a pack needs at least one configuration")
    sizes = {(s.d_in, s.d_out) for s in specs}
    if len(sizes) > 1:
        raise UsageError(f"packed configurations must share d_in and d_out (one task); got {sorted(sizes)}")


class PackedMLP(nn.Module):
    """K residual MLPs as zero-padded stacked weights: (K, out, in) per layer, depth padded by masks."""

    def __init__(self, specs: Sequence[ArchSpec], seed: int | None, device: torch.device | str | None = None) -> None:
        """seed: each member's initial weights as train() builds them; None: all zero, to be loaded (see select)."""
        super().__init__()
        check_packable(specs)
        self.specs = list(specs)
        k, depth = len(specs), max(s.depth for s in specs)
        width, bott = max(s.width for s in specs), max(s.bottleneck for s in specs)
        d_in, d_out = specs[0].d_in, specs[0].d_out
        w_in, w_out = torch.zeros(k, width, d_in, device=device), torch.zeros(k, d_out, width, device=device)
        down = torch.zeros(depth, k, bott, width, device=device)
        up = torch.zeros(depth, k, width, bott, device=device)
        for i, spec in enumerate(specs if seed is not None else ()):
            torch.manual_seed(seed)  # what train() does before build(): the same initial weights
            m = build(spec)
            w, h = spec.width, spec.bottleneck
            w_in[i, :w] = m.w_in.weight.detach()
            w_out[i, :, :w] = m.w_out.weight.detach()
            for layer, block in enumerate(m.blocks):
                down[layer, i, :h, :w] = block.down.weight.detach()
                up[layer, i, :w, :h] = block.up.weight.detach()
        self.w_in = nn.Parameter(w_in, requires_grad=not all(s.fixed_win for s in specs))
        self.w_out = nn.Parameter(w_out)
        self.down = nn.ParameterList(nn.Parameter(d.clone()) for d in down)
        self.up = nn.ParameterList(nn.Parameter(u.clone()) for u in up)
        mask = torch.tensor([[1.0 if layer < s.depth else 0.0 for layer in range(depth)] for s in specs], device=device)
        self.register_buffer("mask", mask.T.reshape(depth, k, 1, 1).contiguous())
        self.register_buffer("running_mean", torch.zeros(depth, k, 1, width, device=device))
        self.register_buffer("running_var", torch.ones(depth, k, 1, width, device=device))
        # Per-member BatchNorm momentum: 0 freezes a retired member's running statistics.
        self.register_buffer("momentum", torch.full((k, 1, 1), BN_MOMENTUM, device=device))
        self.compile_blocks = False  # training blocks through compiled_block (set by PackStep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, d_in), shared by all members -> (K, B, d_out)."""
        # Activations are feature-major, (K, features, B): each weight's gradient is then the product
        # grad @ input^T, which comes out contiguous in the weight's own (K, out, in) layout, as the
        # fused AdamW kernel needs (see PackStep); batch-major activations would give transposed ones.
        z = torch.matmul(self.w_in, x.T)  # (K, width, B)
        n = z.shape[2]
        block = compiled_block() if self.compile_blocks else train_block
        for layer in range(len(self.down)):
            if self.training:
                down, up = self.down[layer], self.up[layer]
                if self.compile_blocks:  # torch.compile makes a Parameter's shape static (one compilation
                    down, up = down.view(down.shape), up.view(up.shape)  # per pack); a plain view stays dynamic
                z = block(z, down, up, self.mask[layer], self.running_mean[layer], self.running_var[layer],
                          self.momentum, n / max(n - 1, 1))
                continue
            mean = self.running_mean[layer].transpose(1, 2)
            var = self.running_var[layer].transpose(1, 2)
            zn = (z.float() - mean) * torch.rsqrt(var + BN_EPS)
            z = z + self.mask[layer] * torch.bmm(self.up[layer], torch.relu(torch.bmm(self.down[layer], zn)))
        return torch.sigmoid(torch.bmm(self.w_out, z)).transpose(1, 2)

    def member_slices(self, k: int) -> dict[str, tuple[nn.Parameter, tuple[int | slice, ...]]]:
        """Member k's weights by ResidualMLP's parameter names: (packed tensor, index of its corner)."""
        spec = self.specs[k]
        w, h = slice(0, spec.width), slice(0, spec.bottleneck)
        slices: dict[str, tuple[nn.Parameter, tuple[int | slice, ...]]] = {"w_in.weight": (self.w_in, (k, w))}
        for layer in range(spec.depth):
            slices[f"blocks.{layer}.down.weight"] = (self.down[layer], (k, h, w))
            slices[f"blocks.{layer}.up.weight"] = (self.up[layer], (k, w, h))
        slices["w_out.weight"] = (self.w_out, (k, slice(None), w))
        return slices

    def unpack(self, k: int) -> ResidualMLP:
        """Member k as the plain module train() would have returned (weights and running statistics)."""
        spec = self.specs[k]
        model = build(spec).to(self.w_out.device)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, (packed, idx) in self.member_slices(k).items():
                params[name].copy_(packed[idx])
            for layer, block in enumerate(model.blocks):
                block.norm.running_mean.copy_(self.running_mean[layer, k, 0, :spec.width])
                block.norm.running_var.copy_(self.running_var[layer, k, 0, :spec.width])
        return model

    @torch.no_grad()
    def load_member(self, k: int, state_dict: dict[str, torch.Tensor]) -> None:
        """Put a ResidualMLP state_dict of member k's shape (a checkpoint's "model") into its corner."""
        spec = self.specs[k]
        for name, (packed, idx) in self.member_slices(k).items():
            packed[idx].copy_(state_dict[name])
        for layer in range(spec.depth):
            self.running_mean[layer, k, 0, :spec.width].copy_(state_dict[f"blocks.{layer}.norm.running_mean"])
            self.running_var[layer, k, 0, :spec.width].copy_(state_dict[f"blocks.{layer}.norm.running_var"])

    @torch.no_grad()
    def select(self, slots: Sequence[int]) -> PackedMLP:
        """A pack of only these members, in this order, padded to their own largest shape: each
        member's weights and running statistics copied exactly (the repack; no initialisation runs)."""
        new = PackedMLP([self.specs[s] for s in slots], None, device=self.w_out.device)
        for j, s in enumerate(slots):
            ours = self.member_slices(s)
            for name, (packed, idx) in new.member_slices(j).items():
                src, src_idx = ours[name]
                packed[idx].copy_(src[src_idx])
            spec = self.specs[s]
            # A member's blocks past its depth are masked out, so only its real blocks' statistics matter.
            new.running_mean[:spec.depth, j, 0, :spec.width].copy_(self.running_mean[:spec.depth, s, 0, :spec.width])
            new.running_var[:spec.depth, j, 0, :spec.width].copy_(self.running_var[:spec.depth, s, 0, :spec.width])
        return new


class PackStep:
    """One packed training step (forward, backward, AdamW) whose whole state lives in device tensors.

    `step(x, y)` trains every live member on one batch. With graphs=True (CUDA only) the step for
    full batches is captured in a CUDA graph on first use and replayed from static input buffers;
    a batch of another size (an epoch's last) runs the same function eagerly.
    """

    def __init__(self, model: PackedMLP, lrs: Sequence[float], *, total_steps: int, weight_decay: float,
                 graphs: bool = False, bf16: bool = False, compile_blocks: bool = False,
                 stream: torch.cuda.Stream | None = None) -> None:
        """stream: the CUDA stream the graph is captured on (the caller replays it there: training.rounds
        gives each pack its own, since graphs captured on one stream share a cuBLAS workspace,
        pytorch/pytorch#193402); None: a new stream for the capture, replayed on the current stream."""
        device = model.w_out.device
        if graphs and device.type != "cuda":
            raise UsageError("CUDA graphs need a CUDA device: train the pack with graphs=False")
        self.model, self.wd, self.total = model, weight_decay, float(total_steps)
        self.graphs, self.bf16 = graphs, bf16 and device.type == "cuda"
        self.stream = stream
        model.compile_blocks = compile_blocks
        self._compile_tried = not compile_blocks
        self.compile_errors: list[str] = []  # why compiled_block failed, if it did (see step)
        k = len(model.specs)
        # Retiring a member sets its rate to 0 in place (no update, no decay; a graph sees the change).
        self.base_lr = torch.tensor(list(lrs), dtype=torch.float32, device=device)
        self.t = torch.zeros((), device=device)  # steps taken, as a tensor so a graph can advance it
        self.loss_sum = torch.zeros(k, device=device)  # sum over this epoch of batch MSE * batch size
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        # Member k's slabs: index i of self.params (every packed weight is (K, out, in), so [k] is one
        # contiguous slab; the CPU kernel mishandles non-contiguous views, so corners are never passed).
        # Its padded blocks past its depth are left out: their weights and gradients are exactly 0.
        index = {id(p): i for i, p in enumerate(self.params)}
        self._member_params = [
            [index[id(p)] for p in (model.w_in, model.w_out, *model.down[:s.depth], *model.up[:s.depth])
             if id(p) in index and not (p is model.w_in and s.fixed_win)]
            for s in model.specs]
        self._m_slabs = [m.unbind(0) for m in self.m]
        self._v_slabs = [v.unbind(0) for v in self.v]
        self._p_slabs = [p.detach().unbind(0) for p in self.params]
        self._graph: torch.cuda.CUDAGraph | None = None
        self.capture_errors: list[str] = []  # first lines of failed captures (see _capture)
        self._graph_rows = 0
        self._static_x = self._static_y = None

    def _autocast(self) -> contextlib.AbstractContextManager:
        # cache_enabled=False: autocast's weight cast cache must not outlive a graph capture.
        if self.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The step itself: tensor ops only (no .item(), no Python branch on values), so it is capturable."""
        lr = self.base_lr * (1.0 - self.t / self.total)  # train()'s lr[s] = lr (1 - s / total)
        with self._autocast():
            out = self.model(x)
        per_member = (out.float() - y).pow(2).mean((1, 2))  # (K,): each member's MSE
        grads = torch.autograd.grad(per_member.sum(), self.params)
        with torch.no_grad():
            self.t.add_(1.0)  # the kernel's bias corrections read the step count from the device
            # The forward's layout makes every gradient contiguous (no copy); contiguous() keeps the
            # kernel exact should a change to the forward ever break that.
            g_slabs = [g.contiguous().unbind(0) for g in grads]
            # One fused launch per member: the kernel takes one learning rate per call, and a member's
            # rate must stay a tensor entry that retire() zeroes in place (one call per distinct rate
            # would regroup members, which a captured graph cannot).
            for k, (lr_k, idx) in enumerate(zip(lr.unbind(0), self._member_params, strict=True)):
                torch._fused_adamw_([self._p_slabs[i][k] for i in idx], [g_slabs[i][k] for i in idx],
                                    [self._m_slabs[i][k] for i in idx], [self._v_slabs[i][k] for i in idx],
                                    [], [self.t] * len(idx), lr=lr_k, beta1=BETAS[0], beta2=BETAS[1],
                                    weight_decay=self.wd, eps=ADAM_EPS, amsgrad=False, maximize=False)
            self.loss_sum.add_(per_member.detach() * x.shape[0])

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Train on one batch (x (B, d_in), y (B, d_out), float32)."""
        if not self._compile_tried:  # the first step compiles the block, forward and backward
            self._compile_tried = True
            saved = [s.detach().clone() for s in self._state()]
            try:
                self._step(x, y)
                return
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # no compiler, an unsupported op: the eager block is the same maths
                self.compile_errors.append(f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}")
                self._restore(saved)
                self.model.compile_blocks = False
        if not self.graphs:
            self._step(x, y)
            return
        if self._graph is None:
            self._capture(x, y)
            if not self.graphs:  # capture failed for good: eager from now on
                self._step(x, y)
                return
        if x.shape[0] != self._graph_rows:
            self._step(x, y)
            return
        self._static_x.copy_(x)
        self._static_y.copy_(y)
        self._graph.replay()

    def _state(self) -> list[torch.Tensor]:
        model = self.model
        return [*self.params, *self.m, *self.v, self.t, self.loss_sum, model.running_mean, model.running_var]

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Capture the full-batch step; the warm-up steps capture needs are undone, so results do not change.

        On an H200 (PyTorch 2.11) captures failed with "operation failed due to a previous error during
        capture" while `saved` held plain clones of the parameters: a clone keeps the parameter's
        AccumulateGrad node, made on the default stream, alive into the capture (PyTorch #180090). With
        detached copies the first capture worked (bench/RESULTS.md). Should a capture still fail, it
        records but runs nothing, so it is tried again; after CAPTURE_TRIES failures the step runs
        eagerly (same results, slower) and the reasons stay in `capture_errors`.
        """
        self._static_x, self._static_y = x.clone(), y.clone()
        self._graph_rows = x.shape[0]
        # detach: a clone of a parameter would keep its AccumulateGrad node (made on the default stream) alive
        # through the capture, and autograd then waits on that stream, which invalidates the capture.
        saved = [s.detach().clone() for s in self._state()]
        side = self.stream or torch.cuda.Stream()
        for _ in range(CAPTURE_TRIES):
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP):
                    self._step(self._static_x, self._static_y)
            torch.cuda.current_stream().wait_stream(side)
            self._restore(saved)
            graph = torch.cuda.CUDAGraph()
            try:
                # Captured on the warm-up stream, so per-stream library state (cuBLAS workspaces) exists.
                with torch.cuda.graph(graph, stream=side):
                    self._step(self._static_x, self._static_y)
            except RuntimeError as e:  # torch.AcceleratorError
                self.capture_errors.append(str(e).splitlines()[0])
                torch.cuda.synchronize()
                continue
            self._graph = graph
            return
        self.graphs = False

    @torch.no_grad()
    def _restore(self, saved: list[torch.Tensor]) -> None:
        for live, copy in zip(self._state(), saved, strict=True):
            live.copy_(copy)

    @torch.no_grad()
    def retire(self, k: int, *, failed: bool) -> None:
        """Stop training member k; a failed one is also zeroed so no inf/NaN stays in the pack."""
        self.base_lr[k] = 0.0
        self.model.momentum[k] = 0.0
        if failed:
            for tensors in (self.params, self.m, self.v):
                for p in tensors:
                    p[k] = 0.0  # every packed weight is (K, out, in)
            self.model.running_mean[:, k] = 0.0
            self.model.running_var[:, k] = 1.0

    def take_epoch_losses(self, rows: int) -> list[float]:
        """Each member's mean training MSE over the epoch's `rows` examples (one device read); resets."""
        losses = (self.loss_sum / rows).tolist()
        self.loss_sum.zero_()
        return losses

    def _member_moments(self, k: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """(name, first moment view, second moment view) of member k's trainable weights, in the
        order of its ResidualMLP's trainable parameters (the order train()'s optimizer holds them)."""
        index = {id(p): i for i, p in enumerate(self.params)}
        out = []
        for name, (packed, idx) in self.model.member_slices(k).items():
            if name == "w_in.weight" and self.model.specs[k].fixed_win:
                continue  # not in the member's optimizer (its packed moments never move its weights)
            i = index[id(packed)]
            out.append((name, self.m[i][idx], self.v[i][idx]))
        return out

    def member_optimizer_state(self, k: int, member: ResidualMLP, lr: float) -> dict:
        """Member k's AdamW state as train()'s optimizer.state_dict() for `member` (= model.unpack(k))."""
        params = dict(member.named_parameters())
        moments = self._member_moments(k)
        opt = make_optimizer([params[name] for name, _, _ in moments], lr, self.wd, self.t.device)
        for name, m, v in moments:
            opt.state[params[name]] = {"step": self.t.detach().clone(), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
        return opt.state_dict()

    @torch.no_grad()
    def load_member_optimizer(self, k: int, state: dict) -> None:
        """Load member k's moments from a train()-style optimizer state_dict (the step count is the pack's t)."""
        for i, (_, m, v) in enumerate(self._member_moments(k)):
            m.copy_(state["state"][i]["exp_avg"])
            v.copy_(state["state"][i]["exp_avg_sq"])

    @torch.no_grad()
    def select(self, model: PackedMLP, slots: Sequence[int], *, graphs: bool) -> PackStep:
        """The step for model = self.model.select(slots): those members' learning rates and moments,
        the step count and schedule, copied exactly, so each continues as if its pack had not changed.
        (A fixed W_in's moments are left at 0: its learning rate is 0, so they never move it.)"""
        new = PackStep(model, self.base_lr[list(slots)].tolist(), total_steps=int(self.total),
                       weight_decay=self.wd, graphs=graphs, bf16=self.bf16,
                       compile_blocks=self.model.compile_blocks, stream=self.stream)
        new.t.copy_(self.t)
        for j, s in enumerate(slots):
            for (_, m, v), (_, m_old, v_old) in zip(new._member_moments(j), self._member_moments(s), strict=True):
                m.copy_(m_old)
                v.copy_(v_old)
        return new


@torch.no_grad()
def evaluate_packed(model: PackedMLP, split: Split, batch_size: int = 128) -> list[float]:
    """Each member's PSNR exactly as loop.evaluate defines it (per batch of 128, size-weighted), in float32."""
    model.eval()
    k = len(model.specs)
    # Rows per forward shrink with the pack so the (K, rows, width) activations stay bounded.
    rows = batch_size * max(1, EVAL_BATCHES * 8 // k)
    total = torch.zeros(k, dtype=torch.float64, device=split.inputs.device)
    for x, y in zip(split.inputs.split(rows), split.targets.split(rows), strict=True):
        row_mse = (model(as_float(x)) - as_float(y)).pow_(2).mean(2)  # (K, rows)
        full = row_mse.shape[1] // batch_size * batch_size
        if full:
            total += batch_size * _db(row_mse[:, :full].reshape(k, -1, batch_size).mean(2)).sum(1)
        if full < row_mse.shape[1]:
            total += (row_mse.shape[1] - full) * _db(row_mse[:, full:].mean(1))
    model.train()
    return (total / len(split.inputs)).tolist()


class PackRun:
    """One pack's training as a steppable object: `step()` trains one batch (and, after an epoch's last
    batch, closes the epoch: member hooks, retirements, repack), `done` says when training is over and
    `results()` evaluates. train_packed is a loop over one; training.rounds steps a round's packs
    interleaved. Each PackRun owns its generator (its data order), so how runs interleave cannot
    change a member's result. stream: the CUDA stream every op of the pack runs on (its graph
    captured and replayed there), None: the current stream.

    specs[k] trains at lrs[k]; result k equals train(specs[k], lr=lrs[k], ...) within rounding.
    graphs (default: on CUDA) replays the step as a CUDA graph; bf16 autocasts the training step on
    CUDA; compile_blocks trains each block through compiled_block (torch.compile, dynamic shapes; off by
    default: about 25 s of compilation per process on 2 CPU cores, not yet measured on a GPU).
    A member whose epoch loss turns non-finite is retired with a TrialFailed in its slot and
    does not disturb the others; `seconds` is the pack's wall time for each member (plus the seconds
    of its resumed state). resume[k] is member k's loop.train checkpoint state (None: from the start);
    a pack shares one data order, so every member must resume from the same epoch. epoch_eval adds
    "psnr_val_epoch" (member k's PSNR on that split after the epoch) to on_epoch_end's states, as
    loop.train does. Running out of memory raises TrialFailed for the whole pack.

    repack: at an epoch's end, when members have retired (stopped or failed) and repack_pays says
    so, the pack is rebuilt from its live members only (PackedMLP.select, PackStep.select: exact
    copies of weights, statistics, moments and step count; the data generator goes on), so a retired
    member stops costing its padded FLOPs. The hooks still get each member's index in specs, but the
    model on_pack_epoch gets, and the one returned, then hold the live members only (their specs in
    model.specs); a member stopped early is evaluated at the end from a copy of its frozen weights.
    """

    def __init__(
        self,
        specs: Sequence[ArchSpec],
        data: TaskData,
        *,
        lrs: Sequence[float],
        epochs: int,
        batch_size: int = 128,
        weight_decay: float = 0.01,
        seed: int = 0,
        device: torch.device | str | None = None,
        graphs: bool | None = None,
        bf16: bool = False,
        compile_blocks: bool = False,
        on_epoch: MemberEpoch | None = None,
        resume: Sequence[dict[str, Any] | None] | None = None,
        on_epoch_end: MemberEpochEnd | None = None,
        on_step: StepHook | None = None,
        on_pack_epoch: PackEpoch | None = None,
        epoch_eval: Split | None = None,
        repack: bool = False,
        stream: torch.cuda.Stream | None = None,
    ) -> None:
        if len(lrs) != len(specs):
            raise UsageError(f"{len(specs)} configurations but {len(lrs)} learning rates")
        resume = list(resume) if resume is not None else [None] * len(specs)
        start = {int(r["epoch"]) if r is not None else 0 for r in resume}
        if len(resume) != len(specs) or len(start) != 1:
            raise UsageError("a pack's members must all resume from the same epoch: "
                             "group them by their checkpoints' epoch")
        check_packable(specs)
        if (specs[0].d_in, specs[0].d_out) != (data.d_in, data.d_out):
            raise UsageError(f"model is {specs[0].d_in}->{specs[0].d_out} but the task is {data.d_in}->{data.d_out}")
        self.specs, self.data, self.lrs, self.epochs = list(specs), data, list(lrs), epochs
        self.batch_size, self.repack = batch_size, repack
        self.on_epoch, self.on_epoch_end = on_epoch, on_epoch_end
        self.on_step, self.on_pack_epoch = on_step, on_pack_epoch
        self.epoch_eval = epoch_eval
        self.device = torch.device(device) if device is not None else data.train.inputs.device
        self.stream = stream if self.device.type == "cuda" else None
        graphs = self.device.type == "cuda" if graphs is None else graphs
        self.t0 = time.perf_counter()
        k = self.k = len(specs)
        self.failed: dict[int, str] = {}
        self.n = len(data.train)
        self.steps_per_epoch = math.ceil(self.n / batch_size)
        if self.stream is not None:  # the task's tensors were made on the current stream
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with self._on_device():
            self.gen = torch.Generator(device=self.device).manual_seed(seed)  # the data order (and noise) of train()
            self.model = PackedMLP(specs, seed).to(self.device)
            self.stepper = PackStep(self.model, lrs, total_steps=epochs * self.steps_per_epoch,
                                    weight_decay=weight_decay, graphs=graphs, bf16=bf16,
                                    compile_blocks=compile_blocks, stream=self.stream)
            self.losses = [float("nan")] * k
            self.offsets = [0.0] * k  # seconds each member trained before its resumed state
            self.epoch = start.pop()  # the epoch being trained
            if self.epoch:
                for i, state in enumerate(resume):
                    self.model.load_member(i, state["model"])
                    self.stepper.load_member_optimizer(i, state["optimizer"])
                    self.losses[i], self.offsets[i] = float(state["loss"]), float(state["seconds"])
                self.stepper.t.fill_(float(resume[0]["step"]))
                self.gen.set_state(resume[0]["generator"])  # the same for every member: one seed, same epochs
        self.epochs_done = [epochs] * k
        self.retired: set[int] = set()
        self.ids = list(range(k))  # the member in each slot of the pack being trained (fewer after a repack)
        self.left: list[tuple[PackedMLP, list[int]]] = []  # members stopped early that left it, and their ids
        self._batches: tuple[torch.Tensor, ...] | None = None  # this epoch's batches of indices
        self._next = 0  # the next batch of this epoch
        self.done = self.epoch >= epochs

    @contextlib.contextmanager
    def _on_device(self) -> Any:
        """Everything the pack does runs on its stream, and running out of memory is the pack's failure."""
        try:
            with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
                yield
        except torch.OutOfMemoryError:
            raise TrialFailed(f"out of memory on {self.device} for a pack of {self.k} models") from None

    def step(self) -> None:
        """Train every live member on the epoch's next batch; after its last batch, end the epoch."""
        if self.done:
            raise UsageError("this pack has finished training: read its results()")
        with self._on_device():
            if self._batches is None:  # drawn at the epoch's first step, as train() draws it
                self._batches = torch.randperm(self.n, generator=self.gen, device=self.device).split(self.batch_size)
            x, y = self.data.train.batch(self._batches[self._next])
            if self.data.train_noise:
                x = add_noise(x, self.data.train_noise, self.gen)
            self.stepper.step(x, y)
            self._next += 1
            if self.on_step is not None:
                self.on_step(self.epoch, self._next, self.steps_per_epoch)
            if self._next == len(self._batches):
                self._end_epoch()

    def _end_epoch(self) -> None:
        epoch, model, stepper = self.epoch, self.model, self.stepper
        epoch_losses = stepper.take_epoch_losses(self.n)
        # One packed evaluation for all members (a retired member's frozen weights are scored too, unused).
        epoch_psnr = (evaluate_packed(model, self.epoch_eval, self.batch_size)
                      if self.epoch_eval is not None and self.on_epoch_end is not None else None)
        for slot, i in enumerate(self.ids):
            if i in self.retired:
                continue
            self.losses[i] = epoch_losses[slot]
            if not math.isfinite(self.losses[i]):
                self.failed[i] = f"non-finite training loss in epoch {epoch + 1} at lr={self.lrs[i]:.3g}"
                stepper.retire(slot, failed=True)
                self.retired.add(i)
                continue
            stop = self.on_epoch is not None and not self.on_epoch(i, epoch, {"loss": self.losses[i]})
            if not stop and self.on_epoch_end is not None:
                stop = self.on_epoch_end(i, _member_state(
                    model, stepper, self.gen, slot, self.lrs[i], epoch + 1, (epoch + 1) * self.steps_per_epoch,
                    self.losses[i], time.perf_counter() - self.t0 + self.offsets[i],
                    None if epoch_psnr is None else epoch_psnr[slot])) is False
            if stop:
                stepper.retire(slot, failed=False)
                self.retired.add(i)
                self.epochs_done[i] = epoch + 1
        live = [slot for slot, i in enumerate(self.ids) if i not in self.retired]
        if self.repack and repack_pays(model.specs, live, (self.epochs - epoch - 1) * self.steps_per_epoch,
                                       stepper.graphs):
            stopped = [slot for slot, i in enumerate(self.ids) if i in self.retired and i not in self.failed]
            if stopped:  # their frozen weights, for the evaluation at the end
                self.left.append((model.select(stopped), [self.ids[slot] for slot in stopped]))
            self.model = model.select(live)
            self.stepper = stepper.select(self.model, live, graphs=stepper.graphs)  # False once capture gave up
            self.ids = [self.ids[slot] for slot in live]
        if self.on_pack_epoch is not None:
            self.on_pack_epoch(self.model, epoch + 1)
        self.epoch += 1
        self._batches, self._next = None, 0
        self.done = self.epoch >= self.epochs or len(self.retired) == self.k

    def results(self) -> tuple[PackedMLP, list[TrainResult | TrialFailed]]:
        """Evaluate every member (train_packed's return value); call once `done`."""
        if not self.done:
            raise UsageError("this pack is still training: step() it until done")
        k, bs = self.k, self.batch_size
        psnr_val, psnr_test = [math.nan] * k, [math.nan] * k
        with self._on_device():
            for pack, members in [(self.model, self.ids), *self.left]:
                for i, val, test in zip(members, evaluate_packed(pack, self.data.val, bs),
                                        evaluate_packed(pack, self.data.test, bs), strict=True):
                    psnr_val[i], psnr_test[i] = val, test
        if self.stream is not None:  # the returned model is used on the current stream
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
        seconds = time.perf_counter() - self.t0
        results: list[TrainResult | TrialFailed] = []
        for i in range(k):
            if i in self.failed:
                results.append(TrialFailed(self.failed[i]))
            elif not (math.isfinite(psnr_val[i]) and math.isfinite(psnr_test[i])):
                results.append(TrialFailed(f"non-finite evaluation PSNR (val {psnr_val[i]}, test {psnr_test[i]})"))
            else:
                results.append(TrainResult(psnr_val[i], psnr_test[i], self.losses[i], seconds + self.offsets[i],
                                           self.epochs_done[i], self.epochs_done[i] * self.steps_per_epoch))
        return self.model, results


def train_packed(specs: Sequence[ArchSpec], data: TaskData, **options: Any,
                 ) -> tuple[PackedMLP, list[TrainResult | TrialFailed]]:
    """Train specs[k] at lrs[k] together to the end: a PackRun (its docstring has every option) stepped
    until done; result k equals train(specs[k], lr=lrs[k], ...) within rounding."""
    run = PackRun(specs, data, **options)
    while not run.done:
        run.step()
    return run.results()


def repack_pays(specs: Sequence[ArchSpec], live: Sequence[int], steps_left: int, graphs: bool) -> bool:
    """Whether a pack of these specs, of which members `live` still train, is worth rebuilding
    from them alone for the steps left.

    Eager (the CPU): a rebuild is a few copies, measured at 0.06-0.13 of one step (bench/repack.py,
    bench/RESULTS.md), while dropping one member of K saves 1/K of every step left, so any retired
    member is dropped while a step remains. With CUDA graphs it costs about
    REBUILD_STEPS steps of warm-up and capture: it pays when buckets' cost model (a step's time is
    proportional to padded params x (K + K0)) saves more than that over the steps left. With one
    469-step epoch left, a pack of 128 same-shape members that lost 1 waits (it would save 469/138 =
    3.4 steps); one that lost 2 (6.8 steps), or whose padded shape shrinks, repacks.
    """
    if not live or len(live) == len(specs) or steps_left <= 0:
        return False
    if not graphs:
        return True
    before = padded_params(specs) * (len(specs) + K0)
    after = padded_params([specs[i] for i in live]) * (len(live) + K0)
    return steps_left * (1.0 - after / before) > REBUILD_STEPS


def _member_state(model: PackedMLP, stepper: PackStep, gen: torch.Generator, k: int, lr: float, epoch: int,
                  step: int, loss: float, seconds: float, psnr_val_epoch: float | None = None) -> dict[str, Any]:
    """Member k's state after `epoch` finished epochs, in loop.train's on_epoch_end format (copies)."""
    member = model.unpack(k)
    state = {"model": member.state_dict(), "optimizer": stepper.member_optimizer_state(k, member, lr),
             "generator": gen.get_state(), "epoch": epoch, "step": step, "loss": loss, "seconds": seconds}
    if psnr_val_epoch is not None:
        state["psnr_val_epoch"] = psnr_val_epoch
    return state
