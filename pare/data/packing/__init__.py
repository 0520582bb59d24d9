"""From raw dataset files to verified WebDataset shards: readers, sample building, shard writing,
the packers and verification."""
