"""From files to batches: samples and splits, image and text readers, transforms, samplers and loaders."""
