"""The signing key of a worker that keeps no home of its own: given by its environment.

A Prefect worker (or a Kubernetes pod) starts with an empty `TAPEOUT_HOME`; copying a home
with its `keys/` onto every machine spreads the private key over disks nobody watches. So a
build's `key` signer may come from where workers get their secrets (docs/scale-out.md):

- `TAPEOUT_SIGNING_KEY`: the path of a PEM EC private key (a mounted secret file), or the PEM
  text itself (a secret passed as an environment variable);
- `TAPEOUT_SIGNING_KEY_SECRET`: the name of a Prefect Secret block holding the PEM, read
  from the Prefect server the worker talks to.

PEM text has to become a file for model-signing, which reads the key from a path. It is
written only as `<home>/keys/from-environment/key-<fingerprint>.pem`, mode 0600 in a folder of
mode 0700, written whole or not at all (tapeout.artifacts.keys.write_atomically); a key file
others can read is refused (tapeout.artifacts.keys.public_key_for). Keyless signing needs no
key at all: `signing.method: sigstore` in pipeline.yaml (docs/trust.md).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from tapeout.artifacts.keys import public_key_for, write_atomically
from tapeout.compilers.errors import InvalidInput

KEY_VARIABLE = "TAPEOUT_SIGNING_KEY"
SECRET_VARIABLE = "TAPEOUT_SIGNING_KEY_SECRET"
FOLDER = "from-environment"
_PEM_START = "-----BEGIN"


def key_from_environment(keys_dir: Path, environment: Mapping[str, str] = os.environ) -> Path | None:
    """The private key file the environment names or holds, checked (EC, unencrypted, private
    to its owner); None when neither variable is set.

    Raises:
        InvalidInput: both variables are set; the path is missing or the key unusable; the
            Secret block is missing, unreadable or holds no PEM key (each names the variable).
    """
    given, secret = environment.get(KEY_VARIABLE, "").strip(), environment.get(SECRET_VARIABLE, "").strip()
    if given and secret:
        raise InvalidInput(f"${KEY_VARIABLE} and ${SECRET_VARIABLE} are both set: expected one signing key, found two")
    if secret:
        return _written(keys_dir, _secret_block(secret), f"Prefect Secret block {secret!r} (${SECRET_VARIABLE})")
    if not given:
        return None
    if given.startswith(_PEM_START):
        return _written(keys_dir, given, f"${KEY_VARIABLE}")
    path = Path(given).expanduser()
    if not path.is_file():
        # Not echoed: a key pasted without its PEM header is still a secret.
        raise InvalidInput(
            f"${KEY_VARIABLE}: expected a PEM private key (-----BEGIN ...) or the path of a key file, "
            f"found neither: no file at that path (the value, {len(given)} characters, is not shown)"
        )
    public_key_for(path)  # fail fast: unusable, or others can read it
    return path


def _secret_block(name: str) -> str:
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name).get()
    except ValueError as error:  # Prefect: no block document by that name
        raise InvalidInput(f"${SECRET_VARIABLE}={name}: no Prefect Secret block by that name ({error})") from error
    except Exception as error:  # noqa: BLE001 — the server is unreachable or refused
        raise InvalidInput(
            f"${SECRET_VARIABLE}={name}: cannot read the Prefect Secret block ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(value, str) or not value.strip().startswith(_PEM_START):
        raise InvalidInput(f"${SECRET_VARIABLE}={name}: expected a PEM private key in the Secret block, found none")
    return value.strip()


def _written(keys_dir: Path, pem: str, origin: str) -> Path:
    """The PEM text as a private file, named by its digest so that two keys never share one."""
    data = pem.strip().encode() + b"\n"
    folder = keys_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask, and the folder may be older
    path = folder / f"key-{hashlib.sha256(data).hexdigest()[:16]}.pem"
    write_atomically(path, data, 0o600, replace=True)
    try:
        public_key_for(path)
    except InvalidInput as error:
        path.unlink(missing_ok=True)
        raise InvalidInput(f"{origin}: {str(error).removeprefix(f'{path}: ')}") from None
    return path
