"""API key and root URL resolution, in the reference client's order."""

from __future__ import annotations

import os
import stat

import pytest

from mlsync.errors import APIKeyNotFound, ConfigurationError
from mlsync.hub.config import (
    DEFAULT_ROOT_URL,
    existing_key,
    profiles_path,
    resolve_settings,
    write_profile,
)


@pytest.fixture
def home(tmp_path):
    return {"MLHUB_HOME": str(tmp_path / "mlhub")}


def _profiles(env, text):
    path = profiles_path(env)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_argument_beats_environment_and_profile(home):
    _profiles(home, "[default]\napi_key = from_profile\n")
    env = {**home, "MLHUB_API_KEY": "from_env"}
    settings = resolve_settings(api_key="from_arg", environ=env)
    assert settings.api_key == "from_arg"
    assert settings.api_key_source == "argument"


def test_environment_beats_profile(home):
    _profiles(home, "[default]\napi_key = from_profile\n")
    settings = resolve_settings(environ={**home, "MLHUB_API_KEY": "from_env"})
    assert settings.api_key == "from_env"


def test_empty_environment_variable_is_an_error_as_in_the_reference(home):
    with pytest.raises(APIKeyNotFound, match="set but empty"):
        resolve_settings(environ={**home, "MLHUB_API_KEY": ""})


def test_profile_argument_then_env_profile_then_default(home):
    _profiles(home, "[default]\napi_key = k_default\n[p1]\napi_key = k_p1\n[p2]\napi_key = k_p2\n")
    assert resolve_settings(profile="p1", environ=home).api_key == "k_p1"
    assert resolve_settings(environ={**home, "MLHUB_PROFILE": "p2"}).api_key == "k_p2"
    assert resolve_settings(profile="p1", environ={**home, "MLHUB_PROFILE": "p2"}).api_key == "k_p1"
    assert resolve_settings(environ=home).api_key == "k_default"


def test_anonymous_profile_sends_no_key(home):
    _profiles(home, "[default]\napi_key = k_default\n")
    settings = resolve_settings(profile="__anonymous__", environ=home)
    assert settings.api_key is None


def test_missing_explicit_profile_says_what_to_do(home):
    with pytest.raises(APIKeyNotFound, match="mlsync configure --profile nope"):
        resolve_settings(profile="nope", environ=home)
    _profiles(home, "[default]\napi_key = x1234\n")
    with pytest.raises(APIKeyNotFound, match=r"no \[nope\] section"):
        resolve_settings(profile="nope", environ=home)


def test_nothing_configured_is_anonymous_not_an_error(home):
    settings = resolve_settings(environ=home)
    assert settings.api_key is None
    assert settings.root_url == DEFAULT_ROOT_URL


def test_manifest_key_env_must_exist(home):
    with pytest.raises(APIKeyNotFound, match="MY_KEY"):
        resolve_settings(api_key_env="MY_KEY", environ=home)
    assert resolve_settings(api_key_env="MY_KEY", environ={**home, "MY_KEY": "s3cret"}).api_key == (
        "s3cret"
    )


def test_root_url_order_and_trailing_slash(home):
    _profiles(home, "[default]\napi_key = k\nroot_url = http://profile.example/api\n")
    assert resolve_settings(environ=home).root_url == "http://profile.example/api/"
    env = {**home, "MLHUB_ROOT_URL": "http://env.example/v1"}
    assert resolve_settings(environ=env).root_url == "http://env.example/v1/"
    assert resolve_settings(root_url="http://arg.example/", environ=env).root_url == (
        "http://arg.example/"
    )
    with pytest.raises(ConfigurationError, match="http:// or https://"):
        resolve_settings(root_url="ftp://x", environ=home)


def test_repr_never_shows_the_key(home):
    settings = resolve_settings(api_key="topsecretkey", environ=home)
    assert "topsecretkey" not in repr(settings)


def test_write_profile_is_private_and_round_trips(home, tmp_path):
    old_umask = os.umask(0o022)
    try:
        path = write_profile("abc123key", profile="p1", environ=home)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert existing_key("p1", environ=home) == "abc123key"
    write_profile("other", profile="default", environ=home)
    assert resolve_settings(environ=home).api_key == "other"
    assert resolve_settings(profile="p1", environ=home).api_key == "abc123key"
