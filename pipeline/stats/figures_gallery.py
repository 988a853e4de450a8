"""First-layer filter mosaics: one image per model, a pair's robust and normal model side by side, tiles
large enough to read in report.html."""

from __future__ import annotations

import numpy as np

from pipeline.stats.figures import FIG_WIDTH, plt, save_figure
from pipeline.stats.galleries import Gallery

TILE_COLUMNS = 8


def gallery_tiles(gallery: Gallery, limit: int = 64) -> tuple[np.ndarray, bool]:
    """Tiles of a first layer: (n, 3, 3, 3) RGB in [0, 1] when it has 3 input channels, else (n, 3, 3) filters."""
    w = gallery.weights
    if gallery.in_channels == 3 and w.shape[1] == 3:
        kernels = np.transpose(w[:limit], (0, 2, 3, 1)).astype(np.float64)  # c_out, 3, 3, RGB
        scale = np.abs(kernels).reshape(len(kernels), -1).max(axis=1)
        scale[scale == 0] = 1
        return kernels / (2 * scale[:, None, None, None]) + 0.5, True
    return w.reshape(-1, 3, 3)[:limit].astype(np.float64), False


def mosaic(tiles: np.ndarray, rgb: bool, cols: int = TILE_COLUMNS) -> np.ndarray:
    """One RGB image of 3x3 tiles with a 1-pixel white gap (grey tiles through a diverging colormap)."""
    if not rgb:
        limit = np.abs(tiles).max() or 1.0
        tiles = plt.get_cmap("coolwarm")((tiles / limit + 1) / 2)[..., :3]
    rows = int(np.ceil(len(tiles) / cols))
    image = np.ones((rows * 4 + 1, min(cols, len(tiles)) * 4 + 1, 3))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        image[1 + 4 * r:4 + 4 * r, 1 + 4 * c:4 + 4 * c] = tile
    return image


def _short(model_id: str) -> str:
    """The last two parts of a model id (the rest is in the caption's tables)."""
    parts = model_id.split("/")
    return "/".join(parts[-2:]) if len(parts) > 2 else model_id


def gallery_figure(rows: list[list[Gallery]], out_dir: str) -> str | None:
    """First-layer filters, one mosaic per model, a row per pair (robust left, normal right)."""
    if not rows:
        return None
    cols = max(len(row) for row in rows)
    images = [[mosaic(*gallery_tiles(g)) for g in row] for row in rows]
    panel = FIG_WIDTH / cols  # inches per mosaic: 8 tiles of about 0.55 in for a pair
    heights = [max(panel * i.shape[0] / i.shape[1] for i in row) + 0.7 for row in images]
    fig, axes = plt.subplots(len(rows), cols, figsize=(FIG_WIDTH, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for r, (row, row_images) in enumerate(zip(rows, images, strict=True)):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_axis_off()
            if c >= len(row):
                continue
            g = row[c]
            ax.imshow(row_images[c], interpolation="nearest")
            rgb = g.in_channels == 3 and g.weights.shape[1] == 3
            ax.set_title(f"{'robust' if g.robust else 'normal'}: {_short(g.model_id)}\n{g.layer_name}, "
                         f"{g.weights.shape[0]}x{g.weights.shape[1]} ({'RGB' if rgb else 'per filter'})",
                         fontsize=10, loc="left")
    fig.tight_layout()
    return save_figure(fig, out_dir, "first_layer_gallery")
