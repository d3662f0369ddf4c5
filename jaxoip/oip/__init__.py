"""The optimal-input-pattern search: its config, objectives (targets), image parameterizations, transforms,
noise recipes, the precursor scan, the batched search, facets, and the whole-layer scan."""
