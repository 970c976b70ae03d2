"""Task families."""

from innerloop.data.synthetic import LinearBinary, Sine, TaskFamily

__all__ = ["LinearBinary", "Sine", "TaskFamily"]
