"""Tasks: what a job's model does and how it is judged, each declared once (declarations.py, no torch).

Everything outside this package asks the task object (`task_named(profile.task)`, or `profile.spec`), never
compares task names."""

from kdcli.tasks import declarations  # noqa: F401 - registers the built-in tasks
from kdcli.tasks.base import TASKS, Task, task_named

__all__ = ["TASKS", "Task", "task_named"]
