"""Where the hub is and which key to send: arguments, environment, then profile file.

Compatible with the radiant-mlhub client: the same variables (``MLHUB_ROOT_URL``,
``MLHUB_API_KEY``, ``MLHUB_PROFILE``, ``MLHUB_HOME``), the same INI profile file
(``~/.mlhub/profiles``) and the same precedence. One deliberate difference: when nothing
configures a key at all, mlsync goes on anonymously (the local hub needs no key) and only a
401 from the hub turns that into an error, which then says where a key can be put.

TLS is always verified; only the CA bundle is configurable (a corporate proxy, a private hub
with its own CA): argument, then ``MLHUB_CA_BUNDLE``, then what requests itself reads
(``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``), then certifi's bundle.
"""

from __future__ import annotations

import configparser
import io
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlsync.errors import APIKeyNotFound, ConfigurationError
from mlsync.tree.local import write_atomically

DEFAULT_ROOT_URL = "https://api.radiant.earth/mlhub/v1/"
ANONYMOUS_PROFILE = "__anonymous__"
DEFAULT_PROFILE = "default"

ENV_ROOT_URL = "MLHUB_ROOT_URL"
ENV_API_KEY = "MLHUB_API_KEY"
ENV_PROFILE = "MLHUB_PROFILE"
ENV_HOME = "MLHUB_HOME"
ENV_CA_BUNDLE = "MLHUB_CA_BUNDLE"

KEY_HINT = (
    "pass api_key=..., set MLHUB_API_KEY, or run `mlsync configure` to store one in a profile"
)


@dataclass(frozen=True)
class HubSettings:
    """The resolved connection settings. ``api_key_source`` says where the key came from;
    ``ca_bundle`` (checked, absolute) is None when requests' own defaults apply."""

    root_url: str
    api_key: str | None
    api_key_source: str
    ca_bundle: Path | None = None

    def __repr__(self) -> str:  # never show the key, even in a debugger or a log line
        shown = "<redacted>" if self.api_key else None
        return (
            f"HubSettings(root_url={self.root_url!r}, api_key={shown}, "
            f"api_key_source={self.api_key_source!r}, ca_bundle={self.ca_bundle!r})"
        )


def mlhub_home(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    home = env.get(ENV_HOME)
    return Path(home).expanduser() if home else Path.home() / ".mlhub"


def profiles_path(environ: Mapping[str, str] | None = None) -> Path:
    return mlhub_home(environ) / "profiles"


def normalize_root_url(url: str) -> str:
    """Root URLs must end with ``/``: relative API paths are joined onto them."""
    url = url.strip()
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(
            f"hub root URL {url!r} must start with http:// or https:// "
            f"(set it with --root-url, {ENV_ROOT_URL} or the manifest's hub.root_url)"
        )
    return url if url.endswith("/") else url + "/"


def check_ca_bundle(path: str | os.PathLike[str], origin: str) -> Path:
    """The bundle as an absolute path, or a ConfigurationError now: a bad bundle would
    otherwise surface later as a certificate error that looks like the server's fault."""
    bundle = Path(path).expanduser().absolute()
    advice = "give the path of a PEM file of CA certificates"
    if not bundle.is_file():
        what = "is not a file" if bundle.exists() else "does not exist"
        raise ConfigurationError(f"CA bundle {bundle} (from {origin}) {what}; {advice}")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(bundle))
    except ssl.SSLError as exc:
        raise ConfigurationError(
            f"CA bundle {bundle} (from {origin}) holds no usable PEM certificate "
            f"({exc.reason or exc}); {advice}"
        ) from None
    except OSError as exc:
        raise ConfigurationError(
            f"CA bundle {bundle} (from {origin}) cannot be read: {exc.strerror or exc}"
        ) from None
    return bundle


def resolve_ca_bundle(
    ca_bundle: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Path | None:
    """The argument (a ``--ca-bundle`` flag or the manifest's ``hub.ca_bundle``), else
    ``MLHUB_CA_BUNDLE``; None leaves ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``/certifi."""
    env = os.environ if environ is None else environ
    if ca_bundle:
        return check_ca_bundle(ca_bundle, "the ca_bundle setting: --ca-bundle or hub.ca_bundle")
    if env.get(ENV_CA_BUNDLE):
        return check_ca_bundle(env[ENV_CA_BUNDLE], f"environment variable {ENV_CA_BUNDLE}")
    return None


def _read_profiles(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as exc:
        raise ConfigurationError(f"profile file {path} is not valid INI: {exc}") from None
    return parser


def resolve_settings(
    *,
    api_key: str | None = None,
    profile: str | None = None,
    root_url: str | None = None,
    api_key_env: str | None = None,
    ca_bundle: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> HubSettings:
    """Resolve root URL and key in the reference client's order, and the CA bundle.

    Key: ``api_key`` argument; the variable named by ``api_key_env`` (a manifest setting);
    ``MLHUB_API_KEY`` if present (present but empty is an error, as in the reference);
    the ``profile`` argument, ``MLHUB_PROFILE``, then the ``default`` profile. A profile
    named explicitly must exist, except ``default``, which may be absent (anonymous).
    Root URL: argument, ``MLHUB_ROOT_URL``, the profile's ``root_url``, the public default.
    CA bundle: see :func:`resolve_ca_bundle`; checked first, before any request is made.
    """
    env = os.environ if environ is None else environ
    bundle = resolve_ca_bundle(ca_bundle, env)
    path = profiles_path(env)
    parser = _read_profiles(path) if path.is_file() else None
    profile_name = profile or env.get(ENV_PROFILE)
    # Naming ``default`` (the README's manifest does) asks for nothing more than the implicit
    # default: absent, it means no key, so a hub that needs none still works on a fresh
    # machine. Another name that does not exist is a typo or a missing set-up: an error.
    explicit_profile = profile_name is not None and profile_name != DEFAULT_PROFILE
    profile_name = profile_name or DEFAULT_PROFILE

    section: Mapping[str, str] | None = None
    if (
        profile_name != ANONYMOUS_PROFILE
        and parser is not None
        and parser.has_section(profile_name)
    ):
        section = parser[profile_name]

    key: str | None
    if api_key:
        key, source = api_key, "argument"
    elif api_key_env:
        value = env.get(api_key_env)
        if not value:
            raise APIKeyNotFound(
                f"the manifest says the API key is in environment variable {api_key_env!r}, "
                "but it is not set or empty; export it before running mlsync"
            )
        key, source = value, f"environment variable {api_key_env}"
    elif ENV_API_KEY in env:
        if not env[ENV_API_KEY]:
            raise APIKeyNotFound(
                f'the "{ENV_API_KEY}" environment variable is set but empty; '
                "set it to your key or unset it to use a profile"
            )
        key, source = env[ENV_API_KEY], f"environment variable {ENV_API_KEY}"
    elif profile_name == ANONYMOUS_PROFILE:
        key, source = None, "anonymous profile"
    elif section is not None and section.get("api_key"):
        key, source = section["api_key"], f"profile {profile_name!r} in {path}"
    elif explicit_profile:
        if parser is None:
            why = f"the profile file {path} does not exist"
        elif section is None:
            why = f"{path} has no [{profile_name}] section"
        else:
            why = f"the [{profile_name}] section of {path} has no api_key"
        raise APIKeyNotFound(
            f"could not read an API key for profile {profile_name!r}: {why}; "
            f"run `mlsync configure --profile {profile_name}`"
        )
    else:
        key, source = None, "none found (anonymous)"

    if root_url:
        root = root_url
    elif env.get(ENV_ROOT_URL):
        root = env[ENV_ROOT_URL]
    elif section is not None and section.get("root_url"):
        root = section["root_url"]
    else:
        root = DEFAULT_ROOT_URL
    return HubSettings(
        root_url=normalize_root_url(root), api_key=key, api_key_source=source, ca_bundle=bundle
    )


def profile_settings(
    profile: str | None = None, *, environ: Mapping[str, str] | None = None
) -> HubSettings:
    """The key of one profile (``default`` when None), whatever else is configured.

    The reference's ``Session.from_config``: a missing profile file, section or ``api_key``
    is an :class:`APIKeyNotFound` naming which. The root URL and CA bundle are resolved as
    everywhere else (``MLHUB_ROOT_URL``, then the profile's ``root_url``, then the default).
    """
    env = os.environ if environ is None else environ
    name = profile or DEFAULT_PROFILE
    path = profiles_path(env)
    if not path.is_file():
        raise APIKeyNotFound(
            f"No file found at {path}; run `mlsync configure --profile {name}` to create it"
        )
    parser = _read_profiles(path)
    if not parser.has_section(name):
        raise APIKeyNotFound(
            f'Could not find "{name}" section in {path}; run `mlsync configure --profile {name}`'
        )
    section = parser[name]
    if not section.get("api_key"):
        raise APIKeyNotFound(f'Could not find "api_key" value in "{name}" section of {path}')
    root = env.get(ENV_ROOT_URL) or section.get("root_url") or DEFAULT_ROOT_URL
    return HubSettings(
        root_url=normalize_root_url(root),
        api_key=section["api_key"],
        api_key_source=f"profile {name!r} in {path}",
        ca_bundle=resolve_ca_bundle(None, env),
    )


def write_profile(
    api_key: str,
    *,
    profile: str = DEFAULT_PROFILE,
    root_url: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """Store a key in the profile file, readable by its owner only (0600, folder 0700)."""
    if not api_key.strip():
        raise ConfigurationError("refusing to store an empty API key")
    if profile == ANONYMOUS_PROFILE:
        raise ConfigurationError(f"{ANONYMOUS_PROFILE!r} is reserved for anonymous access")
    path = profiles_path(environ)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    parser = _read_profiles(path) if path.is_file() else configparser.ConfigParser()
    if not parser.has_section(profile):
        parser.add_section(profile)
    parser[profile]["api_key"] = api_key.strip()
    if root_url:
        parser[profile]["root_url"] = normalize_root_url(root_url)
    text = io.StringIO()
    parser.write(text)
    # the key is a secret: 0600 whatever the umask, set before the file has its name
    write_atomically(path, text.getvalue().encode("utf-8"), mode=0o600)
    return path


def existing_key(
    profile: str = DEFAULT_PROFILE, environ: Mapping[str, str] | None = None
) -> str | None:
    path = profiles_path(environ)
    if not path.is_file():
        return None
    parser = _read_profiles(path)
    if parser.has_section(profile):
        return parser[profile].get("api_key")
    return None
