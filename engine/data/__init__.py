"""Data layer: image I/O, manifests and dataset adapters, resolution cache, phantom generator, transforms."""
