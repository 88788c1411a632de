"""anomopt: make unified knowledge-distillation anomaly detectors small and fast for CPUs and Jetson."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: ``import anomopt`` stays light (the runtime must import without torch).
    if name in ("optimize", "OptimizedModel"):
        from anomopt import api

        return getattr(api, name)
    raise AttributeError(f"module 'anomopt' has no attribute {name!r}")
