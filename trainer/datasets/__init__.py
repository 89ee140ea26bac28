"""Dataset formats (one per public layout, plus the generic class-per-folder one) and decoding.

Importing this package registers every built-in format::

    from scarce.trainer.datasets import scan_dataset
    records = scan_dataset("magnetic-tile", open_store("/data/magnetic-tile"))
"""

from scarce.trainer.datasets import (  # noqa: F401  (importing registers the formats)
    imagefolder,
    magnetic_tile,
    marble,
    mvtec_ad,
    plantvillage,
    riawelc,
)
from scarce.trainer.datasets.base import (
    DatasetError,
    DatasetFormat,
    ImageRecord,
    get_format,
    list_formats,
    register_format,
    scan_dataset,
)
from scarce.trainer.datasets.demo import DemoSummary, generate_demo
from scarce.trainer.datasets.images import MAX_PIXELS, decode_image, decode_mask, encode_png

__all__ = [
    "MAX_PIXELS",
    "DatasetError",
    "DatasetFormat",
    "DemoSummary",
    "ImageRecord",
    "decode_image",
    "decode_mask",
    "encode_png",
    "generate_demo",
    "get_format",
    "list_formats",
    "register_format",
    "scan_dataset",
]
