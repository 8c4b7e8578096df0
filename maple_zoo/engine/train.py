"""The train loop for one worker: SGD (momentum 0.9, weight decay 5e-4) over the prompt tensors only,
learning rate set once per epoch (engine/schedule.py), gradients averaged across ranks when distributed."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..config import OptimConfig
from ..methods.base import PromptMethod
from . import distributed
from .device import autocast
from .schedule import epoch_lr


@dataclass
class EpochResult:
    epoch: int  # finished epochs, 1-based
    lr: float
    loss: float
    train_acc: float
    seconds: float
    data_wait_fraction: float  # share of the epoch spent waiting for the loader
    steps: int


class Trainer:
    def __init__(self, method: PromptMethod, optim: OptimConfig, device: torch.device, precision: str = "fp32"):
        self.method, self.optim_cfg, self.device, self.precision = method, optim, device, precision
        self.params = list(method.trainable_parameters().values())
        self.names = list(method.trainable_parameters())
        self.optimizer = torch.optim.SGD(self.params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
        distributed.broadcast_parameters(self.params)

    def lr_for(self, epoch: int) -> float:
        o = self.optim_cfg
        return epoch_lr(epoch, o.lr, o.epochs, o.warmup_epochs, o.warmup_lr)

    def train_epoch(self, loader, epoch: int, on_step=None) -> EpochResult:
        """Run 0-based `epoch`; `on_step(step, steps, loss)` is called after each optimiser step."""
        lr = self.lr_for(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        stage_hook = getattr(self.method, "on_epoch_start", None)  # staged methods (APLe) switch branches here
        if stage_hook is not None:
            stage_hook(epoch, self.optim_cfg.epochs)
        self.method.train()
        self.method.clip.eval()  # the frozen CLIP never leaves eval mode (no dropout, fixed norms)
        total_loss = correct = seen = 0.0
        wait = 0.0
        start = tick = time.perf_counter()
        steps = len(loader)
        for step, (images, labels) in enumerate(loader):
            wait += time.perf_counter() - tick
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            with autocast(self.device, self.precision):
                loss, logits = self.method.training_loss(images, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.float().backward()
            distributed.average_gradients(self.params)
            self.optimizer.step()
            total_loss += loss.item() * len(labels)
            correct += (logits.argmax(-1) == labels).sum().item()
            seen += len(labels)
            if on_step:
                on_step(step + 1, steps, loss.item())
            tick = time.perf_counter()
        total_loss, correct, seen = distributed.all_sum([total_loss, correct, seen], self.device)
        seconds = time.perf_counter() - start
        return EpochResult(epoch + 1, lr, total_loss / max(seen, 1), 100.0 * correct / max(seen, 1), seconds,
                           wait / seconds if seconds else 0.0, steps)

    # -------------------------------------------------------------- resumable state
    def optimizer_state(self) -> dict[str, torch.Tensor]:
        state = {}
        for name, p in zip(self.names, self.params):
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                state[name] = buf.detach().cpu().contiguous()
        return state

    def load_optimizer_state(self, state: dict[str, torch.Tensor]) -> None:
        for name, p in zip(self.names, self.params):
            if name in state:
                self.optimizer.state[p]["momentum_buffer"] = state[name].to(p.device, p.dtype).clone()
