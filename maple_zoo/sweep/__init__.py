"""Sweeps: a validated spec -> Ray Tune (Optuna TPE + ASHA) over Ray Train runs -> MLflow, resumable.

spec.py (YAML -> typed plan), trainable.py (Tune driver -> TorchTrainer -> engine), tracking.py (MLflow
runs), runner.py (stages, resume, selection, final seeds), display.py (live table), commands.py (CLI).
"""
