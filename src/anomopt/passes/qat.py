"""QATFineTune: a few epochs of the distillation loss with the fake quantizers in place.

Starts from the calibrated PTQ state. The teacher (FP32, or quantized when the scope includes it) gives
the targets; only the student trains. Activation ranges stay fixed; per-channel weight ranges follow
the weights after every epoch.
"""

from __future__ import annotations

import torch

from anomopt.errors import DataError
from anomopt.graph import ModelGraph
from anomopt.passes.base import Pass, PassContext
from anomopt.quant.attach import recalibrate_weights


class QATFineTune(Pass):
    """Options: ``epochs`` (2), ``lr`` (1e-4), ``batch_size`` (8)."""

    name = "qat_finetune"
    requires = frozenset({"calibrated"})
    provides = frozenset({"qat"})

    def run(self, graph: ModelGraph, ctx: PassContext) -> ModelGraph:
        images = ctx.train_images
        if images is None or len(images) == 0:
            raise DataError("qat_finetune: no training images in the context (pass calib/train data)")
        epochs = int(self.options.get("epochs", 2))
        lr = float(self.options.get("lr", 1e-4))
        batch = int(self.options.get("batch_size", 8))
        model = graph.model
        params = [p for p in model.student.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=lr)
        gen = torch.Generator().manual_seed(ctx.seed)
        losses = []
        steps = (len(images) + batch - 1) // batch
        ctx.log(f"qat_finetune: {epochs} epoch(s) x {steps} steps of {batch} images, lr {lr:g}")
        bar = ctx.bar(epochs * steps, "qat", unit="step")
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(images), generator=gen)
            total = 0.0
            for s in range(steps):
                x = images[order[s * batch : (s + 1) * batch]]
                loss = model.distillation_loss(x)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                bar.update(1)
            losses.append(total / steps)
            recalibrate_weights(graph)
            ctx.log(f"qat_finetune: epoch {len(losses)}/{epochs}, mean loss {losses[-1]:.4g}")
        bar.close()
        model.eval()
        refit = model.refit_statistics(images, batch)
        graph.meta["qat"] = {"epochs": epochs, "lr": lr, "losses": losses}
        graph.meta["last_pass_notes"] = {"losses": losses, **({"refit": refit} if refit else {})}
        return graph
