"""Datasets in the CoOp layout, few-shot sampling, the base/novel rule, transforms and the procedural world."""
