"""The thin Ray layer: Ray Data streams, Ray Train stages, the pipeline. Everything algorithmic lives in the core."""
