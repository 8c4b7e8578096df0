"""The offline procedural world (being built): registers its datasets with the dataset registry."""
