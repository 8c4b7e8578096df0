"""One worker's view of training and evaluation. Knows nothing about Ray: the same code runs in a
unit test, under `maple-zoo train`, and as a Ray Train worker."""
