"""Stage 2, discover: the nuisance subspace or component outside alpha, clustered into auxiliary labels with their
diagnostics (auxiliary); the clusterers, HDBSCAN (cuML on a GPU) and KMeans / KMeans++ / MeanShift (clustering)."""
