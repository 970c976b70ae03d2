"""Speed and memory benchmarks (``python -m innerloop.bench``)."""
