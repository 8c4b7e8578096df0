"""maple-zoo: multi-modal prompt learning on open_clip, swept with Ray, tracked in MLflow, served from a zoo."""

__version__ = "0.1.0"
