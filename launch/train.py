"""Train and evaluate any method: `python launch/train.py --config=configs/mirflickr.py`.

`config.method` picks the method (fjsph | jspsh | jdsh, e.g. `--config=configs/jspsh.py`).

With no flags it runs the embedded demo (configs/default.py) into runs/<timestamp>.
Override any config value with `--config.a.b=value`, e.g. `--config.bits=64`.
On a multi-host cluster the JAX runtime is initialised from the launcher's environment.
"""

import datetime
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # works from a checkout without `pip install -e .`
    sys.path.insert(0, REPO_ROOT)

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    os.path.join(REPO_ROOT, "configs", "default.py"),
    "Experiment config file (a get_config() module).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Output directory; default runs/<config>-<timestamp> under the repo. "
    "Re-using a workdir resumes its latest checkpoint.",
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO; keep the console readable
        logging.set_verbosity(logging.WARNING)
    from fjsph_jax import parallel

    parallel.maybe_initialize_distributed()
    from fjsph_jax.data.sources import DatasetNotFoundError
    from fjsph_jax.training.loop import train_and_evaluate

    config = _CONFIG.value
    workdir = _WORKDIR.value
    if not workdir:
        name = os.path.splitext(
            os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"]))
        )[0]
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        workdir = os.path.join(REPO_ROOT, "runs", f"{name}-{stamp}")
    logging.info("workdir: %s", workdir)
    print(f"workdir: {workdir}", flush=True)
    try:
        train_and_evaluate(config, workdir)
    except (DatasetNotFoundError, ValueError) as e:
        # ConfigError, CheckpointError and the data layer's bad-input errors (row counts,
        # labels) are ValueErrors whose message names the key or file and the fix.
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
