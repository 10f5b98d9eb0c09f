"""Neural-network modules built on retnet.ops (retention layers, norms, FFN)."""
