"""Stage 1, disentangle: the product-manifold autoencoder (models), the oracle and every loss term (losses), the
full objective and its beta schedule (objective), the image pairs (pairs), and which subspace holds which factor
(scorecard)."""
