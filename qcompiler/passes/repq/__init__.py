"""RepQ: calibrate activations per channel, then reparameterize to per-tensor integer kernels."""
