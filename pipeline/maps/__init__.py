"""Stage 2c, 2-D maps of feature sets: `methods` (PCA, t-SNE, UMAP; cuML's on a GPU) and `project` (maps
cached on disk, scored by 5-NN accuracy and trustworthiness, drawn side by side)."""
