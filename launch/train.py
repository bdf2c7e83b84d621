"""Train and evaluate any method: `python launch/train.py --config=configs/mirflickr.py`.

`config.method` picks the method (fjsph | jspsh | jdsh, e.g. `--config=configs/jspsh.py`).

With no flags it runs the embedded demo (configs/default.py) into runs/<config>-<timestamp>;
`--config=configs/tiny.py` is the same demo shrunk to seconds (a smoke test).
Override any config value with `--config.a.b=value`, e.g. `--config.bits=64`.

Several processes (hosts), docs/multihost.md:

* TPU pod slices, Slurm, Open MPI: run the same command on every host; JAX detects the
  cluster from the launcher's environment.
* anything else: `--coordinator_address=HOST:PORT --num_processes=P --process_id=I` on
  each process (detection off; CPU collectives over gloo). Every process computes the same
  workdir (the default's timestamp is process 0's).

Exit status: 0 when done, and also after a preemption (SIGTERM: every process saves a
checkpoint at the same step and prints the command that resumes); 2 for a user mistake
(a bad config file, key or value, missing data, an unusable workdir, a resume with another
config), reported in one line (`--traceback` shows the traceback; docs/errors.md); 3 when the loss or the gradient stopped being finite (the last finite
checkpoint stays the latest). Re-running the same command in the same workdir resumes.
"""

import datetime
import os
import shlex
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # works from a checkout without `pip install -e .`
    sys.path.insert(0, REPO_ROOT)

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from fjsph_jax import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    os.path.join(REPO_ROOT, "configs", "default.py"),
    "Experiment config file (a get_config() module).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Output directory; default runs/<config>-<timestamp> under the repo (process 0's "
    "timestamp on every process). Re-using a workdir resumes its latest checkpoint.",
)
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address",
    None,
    "HOST:PORT of process 0's JAX coordinator, for a multi-process run without a cluster "
    "launcher JAX detects (give --num_processes and --process_id too).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes of a multi-process run."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index in [0, --num_processes)."
)

EXIT_BAD_INPUT = cli.EXIT_BAD_INPUT
EXIT_NON_FINITE = 3


def _run_stamp() -> str:
    """A timestamp for the default workdir, process 0's on every process."""
    import jax
    import numpy as np

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        code = np.frombuffer(stamp.encode("ascii"), np.uint8)
        stamp = bytes(np.asarray(multihost_utils.broadcast_one_to_all(code))).decode("ascii")
    return stamp


def _default_workdir() -> str:
    name = os.path.splitext(
        os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"]))
    )[0]
    return os.path.join(REPO_ROOT, "runs", f"{name}-{_run_stamp()}")


def resume_command(workdir: str, argv=None) -> str:
    """The command line of this process, with ``--workdir`` pinned: it resumes the run."""
    argv = list(sys.argv if argv is None else argv)
    if not flags.FLAGS["workdir"].present:
        argv.append(f"--workdir={workdir}")
    return shlex.join(["python", *argv])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO; keep the console readable
        logging.set_verbosity(logging.WARNING)
    from fjsph_jax import parallel

    try:
        parallel.maybe_initialize_distributed(
            _COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value
        )
    except ValueError as e:
        cli.fail(e)
    import jax

    from fjsph_jax.training.guards import NonFiniteError, Preempted
    from fjsph_jax.training.loop import train_and_evaluate

    config = _CONFIG.value
    workdir = _WORKDIR.value or _default_workdir()
    logging.info("workdir: %s", workdir)
    if jax.process_index() == 0:
        print(f"workdir: {workdir}", flush=True)
    try:
        train_and_evaluate(config, workdir)
    except Preempted as e:
        print(
            f"preempted: process {jax.process_index()} saved step {e.step} in {workdir}; "
            f"resume with:\n  {resume_command(workdir)}",
            flush=True,
        )
    except NonFiniteError as e:  # names the step, the loss terms and the checkpoint kept
        cli.fail(e, EXIT_NON_FINITE)


if __name__ == "__main__":
    cli.run(main)  # user mistakes (ConfigError, missing data, ...): one line, exit 2
