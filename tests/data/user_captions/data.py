#!/usr/bin/env python3
"""Fabricate a user's rasters and caption GeoPackage (run from this folder)."""

import os

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.transform import from_origin

# UTM 33N, 1 m pixels, 64 x 64: two tiles side by side
CRS = "EPSG:32633"
ORIGINS = {"tile_a.tif": (500000.0, 4650064.0), "tile_b.tif": (500064.0, 4650064.0)}
# (tile, column, row, colour, short caption, long caption, split)
SQUARES = [
    (
        "tile_a.tif",
        16,
        16,
        (255, 0, 0),
        "a red roof",
        "a red roof in the north west of tile a",
        "train",
    ),
    (
        "tile_a.tif",
        48,
        48,
        (0, 0, 255),
        "a blue pool",
        "a blue pool in the south east of tile a",
        "train",
    ),
    (
        "tile_b.tif",
        16,
        48,
        (255, 255, 0),
        "a yellow field",
        "a yellow field in the south west of tile b",
        "val",
    ),
    (
        "tile_b.tif",
        48,
        16,
        (255, 255, 255),
        "a white tank",
        "a white tank in the north east of tile b",
        "test",
    ),
]


def main() -> None:
    for name, (west, north) in ORIGINS.items():
        data = np.full((3, 64, 64), 40, dtype=np.uint8)
        for tile, col, row, colour, *_ in SQUARES:
            if tile == name:
                for band, value in enumerate(colour):
                    data[band, row - 4 : row + 4, col - 4 : col + 4] = value
        profile = {
            "driver": "GTiff",
            "width": 64,
            "height": 64,
            "count": 3,
            "dtype": "uint8",
            "crs": CRS,
            "transform": from_origin(west, north, 1.0, 1.0),
        }
        with rasterio.open(name, "w", **profile) as dst:
            dst.write(data)

    rows = []
    for tile, col, row, _, short, long, split in SQUARES:
        west, north = ORIGINS[tile]
        x, y = west + col, north - row
        rows.append(
            {
                "caption": short,
                "description": long,
                "split": split,
                "geometry": shapely.box(x - 4, y - 4, x + 4, y + 4),
            }
        )
    # Stored in WGS 84, as a user drawing in a geographic project would: the dataset reprojects
    features = gpd.GeoDataFrame(rows, crs=CRS).to_crs("EPSG:4326")
    if os.path.exists("captions.gpkg"):
        os.remove("captions.gpkg")
    features.to_file("captions.gpkg", layer="captions", driver="GPKG")


if __name__ == "__main__":
    main()
