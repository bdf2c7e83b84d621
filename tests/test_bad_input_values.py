"""Every value a user sets is checked before any work: a wrong type, range or choice is a
ConfigError naming the key (``validate_config``, the library call behind launch/train.py),
and prepare_data.py names its own flags."""
import os
import subprocess
import sys

import pytest

from fjsph_jax.configuration import ConfigError, validate_config
from tiny import tiny_config, write_tiny_mirflickr

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("key, value, expected", [
    ("seed", -3, "config.seed=-3 must be an integer >= 0"),
    ("seed", 1.5, "config.seed=1.5 must be an integer >= 0"),
    ("data.image_size", 0, "config.data.image_size=0 must be a positive integer"),
    ("data.split_seed", -1, "config.data.split_seed=-1"),
    ("data.min_tag_count", 0, "config.data.min_tag_count=0"),
    ("data.manual_dir", 3, "config.data.manual_dir=3 must be a string"),
    ("data.image_mean", (0.5,), "config.data.image_mean=(0.5,) must be 3 numbers"),
    ("data.image_std", (0.5, 0.0, 0.5), "config.data.image_std=(0.5, 0.0, 0.5) must be 3 numbers"),
    ("model.hash_hidden_dim", 0, "config.model.hash_hidden_dim=0"),
    ("model.interaction_layers", 0, "config.model.interaction_layers=0"),
    ("model.interaction_heads", 3, "config.model.interaction_heads=3 must divide"),
    ("model.attention", "fast", "config.model.attention='fast'"),
    ("init.from_scratch", "yes", "config.init.from_scratch='yes' must be True or False"),
    ("init.checkpoint", 7, "config.init.checkpoint=7 must be a string"),
    ("train.warmup_steps", -5, "config.train.warmup_steps=-5 must be an integer >= 0"),
    ("train.weight_decay", -1.0, "config.train.weight_decay=-1.0 must be a number >= 0"),
    ("train.grad_clip_norm", 0.0, "config.train.grad_clip_norm=0.0 must be a number > 0"),
    ("train.encoder_learning_rate", -1e-3, "config.train.encoder_learning_rate=-0.001"),
    ("loss.likelihood_scale", 0.0, "config.loss.likelihood_scale=0.0"),
    ("loss.kmeans_iters", 0, "config.loss.kmeans_iters=0"),
    ("loss.cluster_ks", (4, 800), "config.loss.cluster_ks[1]=800"),
    ("codes.update_every_steps", 0, "config.codes.update_every_steps=0 must be -1"),
])
def test_every_value_is_checked(key, value, expected):
    import ml_collections

    # As a config file may write it: any type (overrides on the command line keep the type).
    config = ml_collections.ConfigDict(tiny_config().to_dict(), type_safe=False)
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
        node = node[parent]
    node[leaf] = value
    with pytest.raises(ConfigError) as error:
        validate_config(config, 1)
    assert expected in str(error.value)


def test_a_section_of_another_method_is_an_error():
    import ml_collections

    config = tiny_config()
    config.jdsh = ml_collections.ConfigDict({"scale": 1.4})
    with pytest.raises(ConfigError, match="config.jdsh has no effect: it is read by jdsh"):
        validate_config(config, 1)


def test_prepare_data_names_its_own_flags_and_the_small_protocol(tmp_path):
    write_tiny_mirflickr(tmp_path)
    command = [sys.executable, os.path.join(REPO_ROOT, "launch", "prepare_data.py"),
               "--dataset=mirflickr", f"--manual_dir={tmp_path / 'src'}",
               f"--data_dir={tmp_path / 'tfds'}", "--num_query=30", "--num_train=30"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "--num_query=30" in line and "--num_train=30" in line
    assert "--split_protocol=small" in line and "config.data" not in line


def _load_config_file(path):
    """``get_config()`` of the config file at ``path`` (as --config=path loads it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "shipped_" + os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


SHIPPED = sorted(name for name in os.listdir(os.path.join(REPO_ROOT, "configs"))
                 if name.endswith(".py") and name != "common.py")
# What a user must add to a shipped config (unless it is set): the FJSPH dataset configs
# name no checkpoint, JSPSH and JDSH on a dataset need their feature file.
REQUIRED = {"fjsph": {"init.from_scratch": True}, "jdsh": {"data.features": "handcrafted"},
            "jspsh": {"data.features": "handcrafted"}}


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_validates(name):
    from fjsph_jax.configuration import apply_overrides, check_known_keys

    config = _load_config_file(os.path.join(REPO_ROOT, "configs", name))
    check_known_keys(config, config.method)  # every key is one its method reads
    needed = {key: value for key, value in REQUIRED.get(config.method, {}).items()
              if not config[key.split(".")[0]][key.split(".")[1]]}
    validate_config(apply_overrides(config, needed), 8)


def test_a_misspelt_key_in_a_config_file_is_refused_before_any_work(tmp_path):
    with open(os.path.join(REPO_ROOT, "configs", "tiny.py")) as f:
        text = f.read()
    text = text.replace("sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))",
                        f"sys.path.insert(0, {os.path.join(REPO_ROOT, 'configs')!r})")
    (tmp_path / "mine.py").write_text(text.replace(
        "    return config\n", "    config.train.warmpu_steps = 3\n    return config\n"))
    done = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "launch", "train.py"), "--config=mine.py",
         "--workdir=run"], capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
        env={k: v for k, v in dict(os.environ, JAX_PLATFORMS="cpu").items()
             if k != "FJSPH_TRACEBACK"})
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: ConfigError: config.train.warmpu_steps is not a key of "
                           "a fjsph config")
    assert "did you mean config.train.warmup_steps?" in line and "configs/default.py" in line
    assert not (tmp_path / "run").exists() and "Traceback" not in done.stderr


def _reference(name):
    """configs/<name> as a config file may change it: any value of any type."""
    import ml_collections

    config = _load_config_file(os.path.join(REPO_ROOT, "configs", name))
    return ml_collections.ConfigDict(config.to_dict(), type_safe=False)


def _audit_cases():
    """(config file, dotted key) for every key of the JSPSH and JDSH sections."""
    from fjsph_jax.configuration import flat_keys

    return [(name, key) for name, sections in (("jspsh.py", ("jspsh",)),
                                                ("jdsh_demo.py", ("jdsh", "train")))
            for key in flat_keys(_reference(name)) if key.split(".")[0] in sections]


@pytest.mark.parametrize("name, key", _audit_cases())
def test_every_jspsh_and_jdsh_key_is_checked(name, key):
    """A value of the wrong type (a string where a number or choice belongs) is refused
    by name, for every key of the method's section."""
    config = _reference(name)
    section, leaf = key.split(".")
    config[section][leaf] = "abc"
    with pytest.raises(ConfigError, match=rf"config\.{section}\.{leaf}\b"):
        validate_config(config, 1)


@pytest.mark.parametrize("name, key, value, expected", [
    ("jspsh.py", "jspsh.mu", float("nan"), "config.jspsh.mu=nan must be a finite number"),
    ("jspsh.py", "jspsh.lam", float("inf"), "config.jspsh.lam=inf must be a finite number"),
    ("jspsh.py", "jspsh.beta", -0.1, "config.jspsh.beta=-0.1 must be a number >= 0"),
    ("jspsh.py", "jspsh.iterations", 0, "config.jspsh.iterations=0 must be a positive"),
    ("jspsh.py", "jspsh.sparsity", 0.0, "config.jspsh.sparsity=0.0 must be > 0"),
    ("jspsh.py", "jspsh.sparsity", 0.3, "must be a whole number"),
    ("jspsh.py", "jspsh.cluster_ks", 5, "config.jspsh.cluster_ks=5 must be a non-empty tuple"),
    ("jspsh.py", "jspsh.dtype", "float16", "config.jspsh.dtype='float16' is not supported"),
    ("jdsh_demo.py", "train.learning_rate", float("nan"), "config.train.learning_rate=nan"),
    ("jdsh_demo.py", "train.weight_decay", float("inf"), "config.train.weight_decay=inf"),
    ("jdsh_demo.py", "jdsh.left_loc", float("-inf"), "config.jdsh.left_loc=-inf must be a "
                                                      "finite number"),
])
def test_jspsh_and_jdsh_ranges(name, key, value, expected):
    from fjsph_jax.configuration import apply_overrides

    config = apply_overrides(_reference(name), {key: value})
    with pytest.raises(ConfigError) as error:
        validate_config(config, 1)
    assert expected in str(error.value)


def test_a_missing_jspsh_key_is_named():
    config = _reference("jspsh.py")
    del config.jspsh["anchors"]
    with pytest.raises(ConfigError, match="config.jspsh.anchors is missing: start from "
                                          "configs/jspsh.py"):
        validate_config(config, 1)
