"""AccuracyGate: evaluates on given labelled data and fails the pipeline when AUROC drops too far."""

from __future__ import annotations

from typing import Any

from anomopt.errors import ConfigError, DriftError
from anomopt.graph import ModelGraph
from anomopt.inference import predict_dataset
from anomopt.metrics import evaluate_predictions
from anomopt.passes.base import Pass, PassContext
from anomopt.passes.registry import register_pass


def evaluate_graph(
    graph: ModelGraph,
    dataset,
    pixel: bool = True,
    batch_size: int = 8,
    normalization: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Per-category and mean metrics of what the graph deploys as, on a labelled data set (with the
    decision metrics at ``normalization``'s thresholds when given)."""
    preds = predict_dataset(graph.predict, dataset, batch_size=batch_size, progress=progress, desc="evaluate")
    return evaluate_predictions(
        preds.categories,
        preds.labels,
        preds.scores,
        preds.masks if pixel else None,
        preds.maps if pixel else None,
        pixel_metrics=pixel,
        normalization=normalization,
        has_mask=preds.has_mask,
    )


@register_pass
class AccuracyGate(Pass):
    """Fail the pipeline when AUROC on labelled data falls too far; its limits are the tolerance keys
    ``max_image_auroc_drop`` / ``max_pixel_auroc_drop`` (AUROC points), per pass or from the pipeline."""

    name = "accuracy_gate"
    changes_outputs = False
    no_drift_reason = "evaluation only: measures AUROC, leaves the model as it is"

    def run(self, graph: ModelGraph, ctx: PassContext) -> ModelGraph:
        if ctx.eval_set is None:
            raise ConfigError("accuracy_gate: no evaluation data; pass eval=... to optimize()")
        tol = ctx.tolerance.merged(self.tolerance_override)
        before = ctx.reference_metrics
        if before is None:
            raise ConfigError("accuracy_gate: the input model's metrics were not measured")
        ctx.log(f"accuracy_gate: evaluating the optimized model on {len(ctx.eval_set)} labelled images")
        after = evaluate_graph(graph, ctx.eval_set, progress=ctx.progress)
        drop_img = 100.0 * (before["mean"]["image_auroc"] - after["mean"]["image_auroc"])
        drop_pix = 100.0 * (before["mean"]["pixel_auroc"] - after["mean"]["pixel_auroc"])
        graph.state.metrics_after = after
        ctx.note(image_auroc_drop=drop_img, pixel_auroc_drop=drop_pix)
        if drop_img > tol.max_image_auroc_drop:
            raise DriftError(
                f"accuracy_gate: image AUROC fell {drop_img:.2f} points "
                f"({100 * before['mean']['image_auroc']:.2f} -> {100 * after['mean']['image_auroc']:.2f}), "
                f"over the tolerance of {tol.max_image_auroc_drop:.2f}"
            )
        if drop_pix > tol.max_pixel_auroc_drop:
            raise DriftError(
                f"accuracy_gate: pixel AUROC fell {drop_pix:.2f} points "
                f"({100 * before['mean']['pixel_auroc']:.2f} -> {100 * after['mean']['pixel_auroc']:.2f}), "
                f"over the tolerance of {tol.max_pixel_auroc_drop:.2f}"
            )
        return graph
