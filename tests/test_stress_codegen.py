"""Generated code: deterministic from the seed, valid PHP, and broken on purpose when asked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opcache_guard.errors import StressError
from opcache_guard.stress.codegen import generate_file
from opcache_guard.stress.deploy import Deployer, DeployPlan

CHECK_SCRIPT = """
$info = include $argv[1];
$object = new $info['class']();
echo json_encode($object->{$info['method']}());
"""


def run_check(path: Path) -> dict[str, object]:
    """Include a generated file with the PHP CLI and return what its check method found."""
    output = subprocess.run(["php8.2", "-r", CHECK_SCRIPT, str(path)], capture_output=True,
                            text=True, check=True, timeout=30)
    result: dict[str, object] = json.loads(output.stdout)
    return result


def tree(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes()
            for path in sorted(root.rglob("*")) if path.is_file()}


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**31))
def test_same_seed_same_tree(seed: int) -> None:
    plan = DeployPlan(files=12, data_size=(10, 400))
    trees = []
    for _ in range(2):
        # Deploy directories must be enterable by everyone, which pytest's tmp_path is not.
        parent = Path(tempfile.mkdtemp(prefix="opcache-guard-tree-"))
        os.chmod(parent, 0o755)
        root = parent / "stress"
        deployer = Deployer(root, seed, plan, fault="wrong-hash", mtime_base=1_000_000)
        deployer.setup()
        for _ in range(12):
            deployer.deploy()
        trees.append(tree(root))
        shutil.rmtree(parent)
    assert trees[0] == trees[1]
    assert any(name.startswith("live/") for name in trees[0])


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**63), round_no=st.integers(0, 10**6))
def test_generate_file_deterministic(seed: int, round_no: int) -> None:
    first = generate_file(seed, round_no, "f000001.php")
    second = generate_file(seed, round_no, "f000001.php")
    assert first == second
    assert generate_file(seed + 1, round_no, "f000001.php").source != first.source


def test_generated_file_passes_check(tmp_path: Path) -> None:
    generated = generate_file(11, 3, "f000042.php")
    path = tmp_path / generated.name
    path.write_bytes(generated.source)
    found = run_check(path)
    assert found["hash_ok"] is True
    assert found["table_ok"] is True
    assert found["class"] == generated.class_name == found["expected_class"]
    assert found["method"] == generated.method_name == found["expected_method"]
    assert found["version"] == 3


def test_wrong_hash_fault_fails_check(tmp_path: Path) -> None:
    path = tmp_path / "bad.php"
    path.write_bytes(generate_file(11, 3, "bad.php", fault="wrong-hash").source)
    found = run_check(path)
    assert found["hash_ok"] is False
    assert found["class"] == found["expected_class"]


def test_wrong_class_fault_fails_check(tmp_path: Path) -> None:
    path = tmp_path / "bad.php"
    path.write_bytes(generate_file(11, 3, "bad.php", fault="wrong-class").source)
    found = run_check(path)
    assert found["hash_ok"] is True
    assert found["class"] != found["expected_class"]


def test_unknown_fault_rejected() -> None:
    with pytest.raises(StressError, match="unknown fault"):
        generate_file(1, 1, "f.php", fault="nonsense")


def test_removed_files_outlive_their_manifests(fpm_dir: Path) -> None:
    plan = DeployPlan(files=20, rewrite=0.2, add=0.2, remove=0.2, keep_rounds=3)
    deployer = Deployer(fpm_dir / "stress", 5, plan, mtime_base=1_000_000)
    deployer.setup()
    deployer.deploy()
    removed_in = {}
    for _ in range(10):
        info = deployer.deploy()
        for name in info.removed:
            removed_in[name] = info.round
        for name in info.deleted:
            assert info.round - removed_in[name] >= plan.keep_rounds
        kept = range(max(0, info.round - plan.keep_rounds + 1), info.round + 1)
        for round_no in kept:
            listed = deployer.manifest_path(round_no).read_text()
            for name in info.deleted:
                assert name not in listed
    assert not deployer.manifest_path(0).exists()


def test_rewrite_sets_new_mtime(fpm_dir: Path) -> None:
    plan = DeployPlan(files=4, rewrite=1.0, add=0.0, remove=0.0)
    deployer = Deployer(fpm_dir / "stress", 5, plan, mtime_base=1_000_000)
    deployer.setup()
    deployer.deploy()
    path = deployer.live_dir / "f000001.php"
    assert path.stat().st_mtime == 1_000_000
    deployer.deploy()
    assert path.stat().st_mtime == 1_000_001
    assert path.stat().st_mode & 0o777 == 0o644
