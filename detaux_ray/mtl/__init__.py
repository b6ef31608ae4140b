"""Stage 3, multi-task learning on the discovered labels: STL, MTL-HPS, NDDR-CNN and MTI-Net with their losses and
optimisers (models); the peers that learn their own auxiliary labels, MAXL and AuxiLearn (auxlearn)."""
