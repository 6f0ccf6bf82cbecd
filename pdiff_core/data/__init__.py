"""Dataset access for training, evaluation and examples (format `pdiff-groups` v1).

See `docs/dataset-format.md`. numpy and Pillow only: no torch import here.
"""

from .format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    STANDARD_TASKS,
    DatasetFormatError,
    DatasetIndex,
    DatasetWriter,
    Group,
    GroupItem,
    Task,
    dataset_tasks,
    load_rgb,
    parse_task,
)
from .prompts import map_prompt

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "STANDARD_TASKS",
    "DatasetFormatError",
    "DatasetIndex",
    "DatasetWriter",
    "Group",
    "GroupItem",
    "Task",
    "dataset_tasks",
    "load_rgb",
    "map_prompt",
    "parse_task",
]
