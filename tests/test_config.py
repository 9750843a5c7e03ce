"""Settings: one table of variables, documented in env.example and README from that table, checked once at start."""
import re

import pytest

from config import VARIABLES, env_example, load_settings
from tests.conftest import ROOT


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_env_example_is_written_from_the_variables_table():
    assert (ROOT / "env.example").read_text() == env_example(), "run: .venv/bin/python config.py > env.example"


def test_readme_configuration_lists_exactly_the_variables():
    named = set(re.findall(r"`([A-Z][A-Z0-9_]{2,})`", readme_section("Configuration")))
    assert named == {variable.name for variable in VARIABLES}


def test_every_variable_has_a_one_line_help_and_a_default_that_parses():
    for variable in VARIABLES:
        assert variable.help and "\n" not in variable.help, variable.name
        variable.parse(variable.default)


@pytest.mark.parametrize("name,value,says", [
    ("PORT", "eighty", "PORT is not a whole number"),
    ("MAX_RUNNING_PER_OWNER", "-1", "must not be negative"),
    ("RECONCILE_SECONDS", "soon", "RECONCILE_SECONDS is not a number of seconds"),
    ("DEMO_WEBHOOKS", "maybe", "DEMO_WEBHOOKS must be on or off"),
    ("QUEUE_RATE", "lots", "QUEUE_RATE is not a rate"),
    ("DATABASE_URL", "mysql://root:hunter2@db/test", "DATABASE_URL must start with sqlite:/// or postgresql://"),
    ("DATABASE_URL", "sqlite://", "write sqlite:///data/tasks.db"),
])
def test_a_wrong_value_stops_the_app_saying_how_to_fix_it(tmp_path, name, value, says):
    with pytest.raises(SystemExit) as stopped:
        load_settings({name: value}, dotenv=str(tmp_path / "none"))
    assert says in str(stopped.value) and "fix it in your environment or .env" in str(stopped.value)
    assert "hunter2" not in str(stopped.value)


def test_on_vercel_a_session_secret_is_required():
    with pytest.raises(SystemExit, match="SESSION_SECRET is not set"):
        load_settings({"VERCEL": "1"}, dotenv="/nonexistent")


def test_dotenv_fills_what_the_environment_leaves_unset(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("# a comment\nPORT=9001\nOPENAI_MODEL='gpt-5'\nQUEUE_RATE=5/minute\n")
    settings = load_settings({"PORT": "9002"}, dotenv=str(dotenv))
    assert (settings.port, settings.model, settings.queue_rate) == (9002, "gpt-5", "5/minute")
