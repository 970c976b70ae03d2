"""Image datasets read from their standard on-disk layouts (see :mod:`innerloop.data.images.base`)."""

from innerloop.data.images.base import (
    DATASETS,
    DatasetError,
    FileSplit,
    SplitData,
    TensorSplit,
    load_split,
    register_dataset,
)

__all__ = ["DATASETS", "DatasetError", "FileSplit", "SplitData", "TensorSplit", "load_split", "register_dataset"]
