"""Stage 2a, classical ML on feature sets: `specs` (each classifier's pipeline and grids, the presets),
`backends` (where it runs: scikit-learn on numpy, the Array API on torch tensors, cuML; chosen once from
--device), `search` (grid search, refit, test: one record per feature set and classifier), and `solvers`
(this project's own fast paths, measured against scikit-learn's)."""
