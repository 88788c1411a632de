"""QATFineTune: a few epochs of the distillation loss with the fake quantizers in place.

Starts from the calibrated PTQ state. The teacher (FP32, or quantized when the scope includes it) gives
the targets; only the student trains. Activation ranges stay fixed; per-channel weight ranges follow
the weights after every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

from anomopt.distill_loop import finetune_adam
from anomopt.errors import DataError
from anomopt.graph import ModelGraph, QATRecord
from anomopt.passes.base import Pass, PassContext
from anomopt.passes.fake_quant import recalibrate_weights
from anomopt.passes.options import option
from anomopt.passes.registry import register_pass


@register_pass
class QATFineTune(Pass):
    """A few epochs of the distillation loss with the fake quantizers in place (the student trains)."""

    name = "qat_finetune"
    requires = frozenset({"calibrated"})
    provides = frozenset({"qat"})

    @dataclass
    class Options:
        epochs: int = option(2, "fine-tuning epochs over the training images")
        lr: float = option(1e-4, "Adam learning rate (constant)")
        batch_size: int = option(8, "images per step")

    def run(self, graph: ModelGraph, ctx: PassContext) -> ModelGraph:
        images = ctx.train_images
        if images is None or len(images) == 0:
            raise DataError("qat_finetune: no training images in the context (pass calib/train data)")
        epochs = self.options.epochs
        lr = self.options.lr
        batch = self.options.batch_size
        model = graph.model
        params = [p for p in model.student.parameters() if p.requires_grad]
        steps = (len(images) + batch - 1) // batch
        ctx.log(f"qat_finetune: {epochs} epoch(s) x {steps} steps of {batch} images, lr {lr:g}")
        bar = ctx.bar(epochs * steps, "qat", unit="step")

        def epoch_done(epoch: int, loss: float) -> None:
            recalibrate_weights(graph)  # per-channel weight ranges follow the weights
            ctx.log(f"qat_finetune: epoch {epoch + 1}/{epochs}, mean loss {loss:.4g}")

        losses = finetune_adam(model.distillation_loss, images, params, epochs, lr, batch, ctx.seed,
                               begin_epoch=lambda _epoch: model.train(), end_epoch=epoch_done, bar=bar)
        bar.close()
        model.eval()
        refit = model.refit_statistics(images, batch)
        graph.state.qat = QATRecord(epochs=epochs, lr=lr, losses=losses)
        ctx.note(losses=losses, **({"refit": refit} if refit else {}))
        return graph
