"""From shards to batches: the training and evaluation streams, augmentation, the batch contract."""
