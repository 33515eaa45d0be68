"""The `shoal dev` command group: arguments and the failures that need no cluster."""

import argparse
import json
from pathlib import Path

import pytest

from shoal.devcluster import commands


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="shoal")
    commands.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_up_defaults_to_the_default_cluster_with_operator_and_examples():
    args = _parse("dev", "up")
    assert (args.name, args.state_dir, args.nodes) == ("shoal", None, None)
    assert (args.detach, args.no_operator, args.no_examples, args.no_fleet) == (False, False, False, False)
    assert args.func is commands.cmd_up


def test_up_takes_a_node_file_and_switches():
    args = _parse("dev", "up", "--name", "x", "--nodes", "n.yaml", "--detach", "--no-operator",
                  "--no-examples", "--no-fleet")
    assert (args.name, args.nodes, args.detach, args.no_operator, args.no_examples, args.no_fleet) == (
        "x", Path("n.yaml"), True, True, True, True)


@pytest.mark.parametrize(("sub", "func"), [("status", commands.cmd_status), ("down", commands.cmd_down)])
def test_status_and_down_are_registered(sub, func):
    assert _parse("dev", sub).func is func


def test_dev_needs_a_subcommand():
    with pytest.raises(SystemExit):
        _parse("dev")


def test_up_with_a_missing_node_file_fails_before_starting_anything(tmp_path, capsys):
    args = _parse("dev", "up", "--state-dir", str(tmp_path / "s"), "--nodes", str(tmp_path / "nope.yaml"))
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("shoal: cannot use the node file") and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_status_of_a_cluster_that_never_ran_is_stopped_with_exit_3(tmp_path, capsys):
    args = _parse("dev", "status", "--state-dir", str(tmp_path / "s"))
    assert args.func(args) == 3
    out = capsys.readouterr().out
    assert out.count(" stopped ") == 7  # five components, the operator and the fleet


def test_down_of_a_cluster_that_never_ran_says_so(tmp_path, capsys):
    args = _parse("dev", "down", "--state-dir", str(tmp_path / "s"))
    assert args.func(args) == 0
    assert "nothing was running" in capsys.readouterr().out


def test_up_with_a_malformed_engines_section_fails_with_one_line_naming_the_field(tmp_path, capsys):
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text("engines:\n- {name: a, kind: tpu}\nnodes: []\n")
    args = _parse("dev", "up", "--state-dir", str(tmp_path / "s"), "--nodes", str(nodes))
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert "engines[0].kind must be one of smollm2, fake" in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_status_rows_list_the_fleets_urls_and_the_processes_of_each_pod(tmp_path):
    (tmp_path / "fleet.json").write_text(json.dumps({
        "services": [{"namespace": "default", "name": "support-route", "kind": "RoutePolicy", "owner": "support",
                      "url": "http://127.0.0.1:4100/v1", "backends": 2}],
        "pods": [{"namespace": "default", "name": "small-1", "kind": "serving", "ip": "127.9.0.1",
                  "engine": "smollm2", "pids": {"engine": 11, "router": None}}]}))
    assert commands.fleet_rows(tmp_path) == [["ENDPOINT", "KIND", "URL", "READY"],
                                             ["default/support", "RoutePolicy", "http://127.0.0.1:4100/v1", "2"]]
    assert commands.fleet_pod_rows(tmp_path)[1] == ["default/small-1", "127.9.0.1", "smollm2", "engine 11, router exited"]
