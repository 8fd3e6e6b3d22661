"""The sealed boundary: every value that reaches a generated shell or sbatch file passes here.

One rule, in one place (stdlib only):

- control characters (newline, CR, NUL, any other C0 or DEL) are refused with a message that
  names the field: a newline ends a ``#SBATCH`` comment line or a ``submit.sh`` line, and the
  rest of the value would run as a command;
- secrets are refused, by value (tokens, credentials in URLs, connection strings) and by name
  (``export HF_TOKEN=...``, ``--export=ALL,HF_TOKEN=...``): generated scripts and the manifest
  are copied around; the message tells the user to pass the secret through the environment;
- everything else is quoted for the place it goes to (:func:`quote` for a shell word,
  :func:`sbatch_value` for a ``#SBATCH --key=value`` line, which submitit quotes with
  ``shlex.quote``; sbatch's own comment-line parser does not undo shell quoting, so quote
  characters and backslashes are refused there).

Lines that are shell by design (a cluster profile's ``setup`` lines, its ``python`` command)
pass through :func:`shell_line`: checked, never quoted.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from launch.schema import ConfigError


class UnsafeValue(ConfigError):
    """A value that must not be written into a generated script or the manifest."""


ENV_HINT = ("pass secrets through the environment of the shell that launches (SLURM copies "
            "it into the job), never in a config, an override or a setup line")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SBATCH_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")
_SBATCH_FORBIDDEN = set("'\"\\`")
SECRET_WORDS = {"TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIALS", "APIKEY"}

# (what it looks like, pattern) -- tokens and credentials recognised by their value
_SECRET_VALUES = (
    # real tokens are 30+ random letters of both cases and digits; a directory called
    # hf_checkpoints_llama is not one
    ("a Hugging Face token", re.compile(r"\bhf_(?=[a-z0-9]*[A-Z])(?=[A-Z0-9]*[a-z])[A-Za-z0-9]{30,}")),
    ("a GitHub token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})")),
    ("an AWS access key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("a password in a URL (user:password@)",
     re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@")),
    ("a connection string credential",
     re.compile(r"(?i)\b(?:AccountKey|SharedAccessSignature|SharedAccessKey|Password|Pwd)=")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("a JSON web token",
     re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
)
# NAME=value inside a line (export lines, srun --export=ALL,NAME=value, env assignments)
_ASSIGN = re.compile(r"(?:^|[\s,;])(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(\S*)")


def secret_name(name: str) -> bool:
    """Whether an environment variable name says it holds a secret (HF_TOKEN, DB_PASSWORD...)."""
    upper = name.upper()
    parts = set(upper.split("_"))
    return bool(parts & SECRET_WORDS) or upper.endswith("_KEY") or "PASSWORD" in upper


def find_secret(text: str) -> str | None:
    """What secret ``text`` seems to carry, or None."""
    for what, pattern in _SECRET_VALUES:
        if pattern.search(text):
            return what
    for m in _ASSIGN.finditer(text):
        name, value = m.group(1), m.group(2)
        # a reference to the launching environment ($HF_TOKEN, ${HF_TOKEN}) is the right way
        if secret_name(name) and value and not value.startswith("$"):
            return f"a secret assigned to {name}"
    return None


def check(field: str, value: Any) -> str:
    """``str(value)`` when it may be written into a script; else :class:`UnsafeValue`."""
    text = str(value)
    m = _CONTROL.search(text)
    if m:
        raise UnsafeValue(
            f"{field}: contains a control character ({m.group()!r} at position {m.start()}); "
            f"a newline or NUL would break out of the generated script line. Remove it")
    what = find_secret(text)
    if what:
        raise UnsafeValue(f"{field}: looks like {what}; generated scripts and manifest.json are "
                          f"copied and shared, so it is refused: {ENV_HINT}")
    return text


def quote(field: str, value: Any) -> str:
    """A checked value as one shell word."""
    return shlex.quote(check(field, value))


def shell_line(field: str, value: Any) -> str:
    """A line that is shell by design (setup, python command): checked, not quoted."""
    return check(field, value)


def sbatch_key(field: str, key: Any) -> str:
    """The name of a ``#SBATCH --key``: letters, digits, '-' and '_' only."""
    text = check(field, key)
    if not _SBATCH_KEY.match(text):
        raise UnsafeValue(f"{field}: {text!r} is not an sbatch option name (letters, digits, "
                          f"'-' and '_', e.g. 'constraint' or 'mail-type')")
    return text


def sbatch_value(field: str, value: Any) -> Any:
    """A value of a ``#SBATCH --key=value`` line. Returned unquoted: submitit quotes it.

    ``True`` renders as a bare flag and is kept as is."""
    if value is True:
        return value
    text = check(field, value)
    bad = sorted(set(text) & _SBATCH_FORBIDDEN)
    if bad:
        raise UnsafeValue(f"{field}: {text!r} contains {' '.join(bad)}, which a '#SBATCH' line "
                          f"cannot carry safely; remove the quotes (values are quoted for you)")
    return value


# ---------------------------------------------------------------- pyxis container flags
# srun --container-image=IMAGE --container-mounts=SRC:DST[:FLAGS][,SRC:DST[:FLAGS]...]: pyxis
# (args.c) splits the mounts at ',', each mount at ':' (FLAGS joined by '+'), and writes each as
# one enroot fstab line "SRC DST OPTIONS", whose fields are separated by whitespace. A value
# that carries one of those separators is read as more (or other) mounts, paths or flags.
_WHITESPACE = re.compile(r"\s")
_MOUNT_FLAG = r"[A-Za-z0-9_.=-]+"
_MOUNT_FLAGS = re.compile(rf"{_MOUNT_FLAG}(?:\+{_MOUNT_FLAG})*\Z")


def container_image_problem(image: Any) -> str | None:
    """Why ``image`` cannot be the value of ``--container-image``, or None."""
    text = str(image)
    if not text.strip():
        return "is empty: give an image (e.g. nvcr.io#nvidia/nemo:26.02) or remove the key"
    if _WHITESPACE.search(text):
        return ("contains whitespace: an image reference has none, and what follows it would "
                "not be an srun flag but part of the image name (srun flags go in "
                "cluster.srun_args); give the image alone, e.g. nvcr.io#nvidia/nemo:26.02")
    return None


def container_mount_problem(mount: Any) -> str | None:
    """Why ``mount`` cannot be one entry of ``--container-mounts``, or None."""
    text = str(mount)
    form = ("SRC:DST[:FLAGS], e.g. /lustre/data:/data or /lustre/data:/data:ro (SRC and DST "
            "absolute or ./relative paths without ':', FLAGS joined by '+', e.g. ro+rprivate)")
    if "," in text:
        return ("contains ',', which separates --container-mounts entries (it would add a mount "
                "of its own): give each mount as its own list item, " + form)
    if _WHITESPACE.search(text):
        return ("contains whitespace, which pyxis/enroot mount entries cannot carry: use paths "
                "without spaces (e.g. a symlink to the directory)")
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        return "is not " + form
    src, dst = parts[0], parts[1]
    if not (src.startswith(("/", ".")) or src in ("tmpfs", "umount")):
        return f"source {src!r} is not an absolute or ./relative path (pyxis takes no other): " \
               f"write {form}"
    if not dst.startswith(("/", ".")):
        return f"target {dst!r} is not an absolute or ./relative path (pyxis takes no other): " \
               f"write {form}"
    if len(parts) == 3 and not _MOUNT_FLAGS.match(parts[2]):
        return f"has mount flags {parts[2]!r}: join them with '+', e.g. ro or ro+rprivate"
    return None


def container_mount_path(field: str, path: Any, why: str, fix: str) -> str:
    """A path mounted as ``PATH:PATH`` (the run directory): checked, then refused when it
    carries a separator of ``--container-mounts`` (``why``: why it is mounted; ``fix``: what
    to choose instead)."""
    text = check(field, path)
    bad = [repr(c) for c in (",", ":") if c in text]
    bad += ["whitespace"] if _WHITESPACE.search(text) else []
    if bad:
        raise UnsafeValue(
            f"{field} {text}: contains {' and '.join(bad)}; {why}, and pyxis splits "
            f"--container-mounts at ',' (between mounts) and ':' (SRC:DST[:FLAGS]), enroot at "
            f"whitespace, so other paths than this one would be mounted: {fix}")
    return text


def refuse_secrets(tree: Any, root: str) -> None:
    """Walk a JSON-like tree (manifest, resolved config): refuse any string that holds a secret.

    Keys are checked by name (``env.HF_TOKEN``) and values by content."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            path = f"{root}.{k}" if root else str(k)
            if isinstance(v, str) and v and secret_name(str(k)) and not v.startswith("$"):
                raise UnsafeValue(f"{path}: its name says it holds a secret; {ENV_HINT}")
            refuse_secrets(v, path)
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            refuse_secrets(v, f"{root}[{i}]")
    elif isinstance(tree, str):
        what = find_secret(tree)
        if what:
            raise UnsafeValue(f"{root}: looks like {what}; {ENV_HINT}")


def has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None
