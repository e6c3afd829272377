"""Where a run's output goes when it runs as a Ray job, and what a killed run leaves behind.

`ray job submit --working-dir .` runs the driver inside a temporary, hashed package folder on
the head node: a relative `output` would land there and vanish with it, so it is refused.
"""
from __future__ import annotations

import os

from factory.io import files

# Set by Ray's job supervisor in the environment of every `ray job submit` entrypoint.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
STAGING_PREFIX = ".dataset-staging-"


def in_ray_job() -> bool:
    return RAY_JOB_ENV in os.environ


def resolve_output(output: str) -> str:
    """A URI or absolute path as given; a relative path made absolute against the launch folder.

    Under `ray job submit` the launch folder is Ray's temporary package folder, so a relative
    path is an error there: the data would be deleted with the package.
    """
    if files.has_scheme(output) or output.startswith("file://") or os.path.isabs(os.path.expanduser(output)):
        return output
    if in_ray_job():
        raise ValueError(
            f"output={output} is a relative path, but this run is a Ray job whose working directory is a temporary "
            "package folder: pass an absolute path on shared storage or a URI (s3://..., gs://...)"
        )
    return os.path.abspath(os.path.expanduser(output))


def remove_stale_staging(output: str) -> int:
    """Delete dataset staging folders a killed run left in `output`; returns how many."""
    import pyarrow.fs as pafs

    fs, p = files.resolve(output)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return 0
    stale = [i.path for i in fs.get_file_info(pafs.FileSelector(p)) if i.base_name.startswith(STAGING_PREFIX)]
    for path in stale:
        fs.delete_dir(path)
    return len(stale)
