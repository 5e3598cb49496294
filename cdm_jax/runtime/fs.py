"""Workdir and corpus paths: local folders, or any bucket that etils `epath` reads (gs://, s3://).

`pathlib` would turn `gs://bucket/run` into the local folder `gs:/bucket/run`, so everything that
names a workdir file goes through `path`. Object stores have no append and no rename-over, so
`append_line` and `write_atomic` choose what each kind of path can do.
"""

import os

from etils import epath

_URI_PREFIXES = ("gs://", "s3://", "az://")


def is_remote(path) -> bool:
  return str(path).startswith(_URI_PREFIXES)


def path(p) -> epath.Path:
  """`p` as an epath.Path: a bucket URI stays one; a local path gets `~` expanded and made
  absolute (Orbax needs absolute paths)."""
  if is_remote(p):
    return epath.Path(str(p))
  return epath.Path(os.path.abspath(os.path.expanduser(str(p))))


def write_atomic(target: epath.Path, data: str | bytes):
  """Writes `target` so that readers see the old content or the new one, never half of it:
  through a temporary file and a rename locally; one object upload (atomic itself) on a bucket."""
  write = "write_bytes" if isinstance(data, bytes) else "write_text"
  if is_remote(target):
    getattr(target, write)(data)
    return
  temporary = target.parent / (target.name + ".tmp")
  getattr(temporary, write)(data)
  temporary.replace(target)


def append_line(target: epath.Path, line: str):
  """Appends one line (a newline is added): an append locally; a bucket object is rewritten whole
  (fine for the workdir's small logs)."""
  if not is_remote(target):
    with target.open("a", encoding="utf-8") as f:
      f.write(line + "\n")
    return
  old = target.read_text(encoding="utf-8") if target.exists() else ""
  target.write_text(old + line + "\n", encoding="utf-8")
