"""detaux-ray: discover an auxiliary task from a disentangled latent space and learn it jointly (Detaux), on Ray.

The core (config, data, models, losses, disentangle, pairs, clustering, discovery, mtl, artifacts, report) imports
no Ray; `detaux_ray.distributed` is the Ray layer on top.
"""

__version__ = "0.1.0"
