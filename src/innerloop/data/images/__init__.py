"""Image datasets read from their standard on-disk layouts (see :mod:`innerloop.data.images.base`).

Importing the package registers the loaders: ``omniglot``, ``mini_imagenet``, ``tiered_imagenet``,
``cifar_fs``, ``fc100``, ``cub``, ``aircraft``, ``dogs`` (``innerloop data check`` lists what lies
under a data root).
"""

from innerloop.data.images import (  # noqa: F401  (importing a loader module registers it)
    aircraft,
    cifar,
    cub,
    dogs,
    glyphs,
    mini_imagenet,
    omniglot,
    tiered_imagenet,
)
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
