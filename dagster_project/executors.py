"""Which Dagster executor runs a run's steps (QML_EXECUTOR): scaling out is configuration, not a rewrite.

- `default`: Dagster's multi_or_in_process executor (each step in its own process on the run's machine).
- `in_process` / `multiprocess`: the two halves of the default, forced.
- `k8s`, `docker`, `celery`, `celery_k8s`: each step in its own Kubernetes job, Docker container or Celery task
  (install dagster-k8s, dagster-docker, dagster-celery or dagster-celery-k8s in the image). The warehouse must then
  be reachable from every worker: the catalog on PostgreSQL and the data on object storage (docs/scale.md).

Steps in the `warehouse_writer` pool take turns across all runs and executors: the pool limit in the instance's
dagster.yaml is the single-writer rule (raise it only with the catalog on PostgreSQL).
"""

from importlib import import_module

import dagster as dg

from qml_pipeline.config import EXECUTORS

_PLUGINS = {"k8s": ("dagster_k8s", "k8s_job_executor"), "docker": ("dagster_docker", "docker_executor"),
            "celery": ("dagster_celery", "celery_executor"),
            "celery_k8s": ("dagster_celery_k8s", "celery_k8s_job_executor")}


def configured_executor(name: str) -> dg.ExecutorDefinition | None:
    """The executor named by QML_EXECUTOR (None: Dagster's default)."""
    if name not in EXECUTORS:
        raise ValueError(f"QML_EXECUTOR={name!r}: expected one of {list(EXECUTORS)}")
    if name == "default":
        return None
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        return dg.multiprocess_executor
    module, attribute = _PLUGINS[name]
    try:
        return getattr(import_module(module), attribute)
    except ImportError as exc:
        raise ImportError(f"QML_EXECUTOR={name} needs the {module.replace('_', '-')} package in this image "
                          f"(pip install {module.replace('_', '-')}); it is not installed: {exc}") from None
