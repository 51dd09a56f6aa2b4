"""KServe v2, the Open Inference Protocol: its contract, tensor mapping and per-model view."""
