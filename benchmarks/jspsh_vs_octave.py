"""JSPSH here (fjsph_jax.methods.jspsh.solver) vs the authors' MATLAB code under GNU Octave.

    python benchmarks/jspsh_vs_octave.py [--synthetic | --features=PATH.mat|.npz]
        [--bits=16,32,64] [--shared_init] [--seeds=3] [--float64] [--json=OUT]
        [--n_train=4000 --n_query=500] [--authors_dir=DIR] [--keep_dir=DIR]
        [--repeats=1] [--openblas_threads=1] [--polar=auto|gram|qr] [--reuse_octave]
        [--rank_rule=row_space|authors] [--our_clusters]

Both sides read the same data (keys I_tr, T_tr, L_tr = training set = retrieval
database, I_te, T_te, L_te = queries; ``--synthetic`` generates a clustered multi-label
set shaped like MIRFlickr's hand-crafted features: 24 classes, 512-d image, 1386-d
non-negative text).  The authors' code (github.com/hutt94/JSPSH) is extracted from its
git mirror (``$JSPSH_MIRROR``, else ``/work/.mirror/hutt94+JSPSH/repo``) into a temporary
directory with ``git archive`` (or taken from ``--authors_dir``) and run by
``benchmarks/jspsh_octave_driver.m`` (needs ``octave-cli`` and octave-statistics for
``kmeans(..., 'Distance', 'cosine')``); nothing of theirs is kept in this repository.

Modes:

* default (independent): each side draws its own randomness (ours from
  ``jax.random.key(seed)``, Octave from ``rand/randn('state', seed)``: k-means, H0, the
  H-step padding, the anchors, W_Y0); differences are seed noise, so ``--seeds`` runs
  show the spread of each side.
* ``--our_clusters`` (independent mode): both sides use our k-means clusterings (seeded
  by ``seed``), everything else as in the default mode (Octave: their ``train_JSPSH.m``
  unchanged); separates the k-means implementations from the rest of the solver.
* ``--shared_init``: the label clusterings (our cosine k-means), H0, the padding noise,
  the anchors and W_Y0 are drawn here and given to both; Octave runs the driver's copy of
  their loop (see the header of the .m file for its four documented differences) and the
  codes should agree closely: the table adds the fraction of training-code ones (and of
  query-code ones) that agree.
* ``--rank_rule=authors``: our H step uses the authors' rank rule and arithmetic
  (``JSPSHParams.rank_rule``: ``svd(Z'*Z)``, eigenvalues above an absolute 1e-6,
  ``U = Z V Lmd^-1/2``); with ``--shared_init`` the driver's loop then runs their lines
  34-37 as they are (only the padding stays the shared ``polar(G V_drop) V_drop^T``).  In
  the independent modes Octave always runs their ``train_JSPSH.m``, so the flag changes
  our side only.

Small training sets (the 730-pair mini MIRFlickr):

* a bit length is run only when ``kdim = bits / sparsity < n``: the authors' code learns
  codes only ``if kdim < n`` (``orth(rand(n, kdim))`` has at most n columns) and
  otherwise fails at ``B(sel_idx, :)`` with B undefined; skipped lengths are listed in
  the output (``skipped_bits``) with that reason;
* anchors: their ``train_JSPSH.m`` hard-codes ``sel_num = 1000`` (5000 for NUS-WIDE), and
  ``randperm(n, 1000)`` fails for n < 1000.  When ``--anchors`` exceeds n, both sides use
  all n training rows as anchors: ours with ``anchors = n``, Octave through a
  ``randperm.m`` placed first on its path that caps k at n (``randperm(n, min(k, n))``;
  their files are not edited).

MAP is the authors' ``mAP.m`` (relevant = shares a label; MAP@R divides by the number of
relevant items within the top R), ranking by inner product descending with ties in
database order (MATLAB's sort is stable).  Ours is computed here in numpy and checked
against Octave's own MAP on Octave's codes.

Times: ours is timed warm (a first call compiles; its time is reported as
``ours_first_s``) and covers fit (+ k-means in the independent mode) + query encoding;
Octave's covers the same stages (k-means + train + rsign of the queries) measured with
tic/toc inside Octave (``octave_process_s`` is the whole process, start-up and loading
included).  ``speed_ratio`` = Octave / ours (wall), ``cpu_ratio`` the same in CPU
seconds (all threads; less sensitive to other load on a shared machine).  With
``--repeats=R`` both sides time R training runs and report the fastest.  Every row records
the 1-minute load average when it was timed.  ``--reuse_octave`` (with ``--keep_dir``)
reads Octave's results of an earlier run in the same directory instead of running it
again (the rows say so: ``octave_reused``; their speed ratios then compare runs made at
different times, so quote speed only from rows without it).  Reuse is refused unless the
earlier run had the same inputs: the job file in ``--keep_dir`` (seed, bits,
hyper-parameters, cluster ids, mode; in the shared mode also the rank rule and the shared
init files), the data and the authors' files must equal this run's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

# jaxlib's LAPACK calls (QR, SVD, eigh) go to OpenBLAS, whose own thread pool fights
# XLA's for the cores: on a loaded 2-core machine a 4000 x 320 QR took 20x the CPU time
# with OpenBLAS threads than without.  Ours runs with one OpenBLAS thread (XLA still
# threads the matmuls) unless --openblas_threads says otherwise; Octave (all OpenBLAS)
# keeps the environment it was given.  This must happen before numpy / jax load.
_ORIGINAL_OPENBLAS = os.environ.get("OPENBLAS_NUM_THREADS")
for _arg in sys.argv[1:]:
    if _arg.startswith("--openblas_threads="):
        _threads = _arg.split("=", 1)[1]
        break
else:
    _threads = "1"
if _threads:
    os.environ["OPENBLAS_NUM_THREADS"] = _threads

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402  (configures JAX before fjsph_jax imports it)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MIRROR = "/work/.mirror/hutt94+JSPSH/repo"
AUTHOR_FILES = ("train_JSPSH.m", "rsign.m", "NormalizeFea.m", "mAP.m")
KEYS = ("I_tr", "T_tr", "L_tr", "I_te", "T_te", "L_te")


# ----------------------------------------------------------------------------- data


def synthetic(seed=0, n_train=4000, n_query=500, num_classes=24, num_concepts=12,
              d_image=512, d_text=1386, noise=3.0):
    """Clustered multi-label data: concepts with prototype label sets (plus 4% label
    flips, so there are many distinct label rows); image = label embedding + concept
    offset + noise; text = the same, clipped at 0 (bag-of-words-like)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = n_train + n_query
    prototypes = (rng.random((num_concepts, num_classes)) < 0.12).astype(float)
    prototypes[np.arange(num_concepts), rng.integers(0, num_classes, num_concepts)] = 1
    concept = rng.integers(0, num_concepts, n)
    labels = prototypes[concept]
    labels = np.where(rng.random((n, num_classes)) < 0.04, 1 - labels, labels)
    empty = labels.sum(1) == 0
    labels[empty, rng.integers(0, num_classes, int(empty.sum()))] = 1
    image = (labels @ rng.normal(size=(num_classes, d_image))
             + rng.normal(size=(num_concepts, d_image))[concept]
             + noise * rng.normal(size=(n, d_image)))
    text = np.maximum(labels @ rng.normal(size=(num_classes, d_text))
                      + rng.normal(size=(num_concepts, d_text))[concept]
                      + noise * rng.normal(size=(n, d_text)), 0.0)
    return {"I_tr": image[:n_train], "T_tr": text[:n_train], "L_tr": labels[:n_train],
            "I_te": image[n_train:], "T_te": text[n_train:], "L_te": labels[n_train:]}


def load_features(path):
    import numpy as np
    import scipy.io

    if path.endswith(".npz"):
        with np.load(path) as f:
            data = {k: f[k] for k in KEYS}
    else:
        mat = scipy.io.loadmat(path)
        data = {k: mat[k] for k in KEYS}
    return {k: np.asarray(v, np.float64) for k, v in data.items()}


def numpy_map(query_codes, db_codes, query_labels, db_labels, top=None):
    """The authors' mAP.m: stable descending sort of inner products, relevant = shares a
    label, AP over the top R (R = all by default) divided by #relevant in the top R."""
    import numpy as np

    order = np.argsort(-(query_codes.astype(np.float64) @ db_codes.T.astype(np.float64)),
                       axis=1, kind="stable")
    top = top or db_codes.shape[0]
    aps = np.zeros(query_codes.shape[0])
    for i, ranking in enumerate(order[:, :top]):
        relevant = (db_labels[ranking] @ query_labels[i]) > 0
        hits = relevant.sum()
        if hits:
            precision = np.cumsum(relevant) / np.arange(1, top + 1)
            aps[i] = np.sum(precision * relevant) / hits
    return float(aps.mean())


def maps(query_i, query_t, db, data):
    return {"i2t_map": numpy_map(query_i, db, data["L_te"], data["L_tr"]),
            "t2i_map": numpy_map(query_t, db, data["L_te"], data["L_tr"]),
            "i2t_map50": numpy_map(query_i, db, data["L_te"], data["L_tr"], 50),
            "t2i_map50": numpy_map(query_t, db, data["L_te"], data["L_tr"], 50)}


# --------------------------------------------------------------------------- octave


def extract_authors(target):
    mirror = os.environ.get("JSPSH_MIRROR", DEFAULT_MIRROR)
    git_dir = mirror if mirror.endswith(".git") or not os.path.isdir(
        os.path.join(mirror, ".git")) else os.path.join(mirror, ".git")
    os.makedirs(target, exist_ok=True)
    archive = subprocess.run(["git", "--git-dir", git_dir, "archive", "HEAD", *AUTHOR_FILES],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", target], input=archive, check=True)
    return target


def run_octave(job_path, out_dir):
    command = ["octave-cli", "--no-gui", "--norc", "--quiet", "--eval",
               f"addpath('{HERE}'); jspsh_octave_driver('{job_path}')"]
    env = dict(os.environ)
    env.pop("OPENBLAS_NUM_THREADS", None)
    if _ORIGINAL_OPENBLAS is not None:
        env["OPENBLAS_NUM_THREADS"] = _ORIGINAL_OPENBLAS
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if not os.path.exists(os.path.join(out_dir, "results.json")):
        raise RuntimeError(f"octave failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return read_octave_results(out_dir), wall


def read_octave_results(out_dir):
    """``{bits: result}`` from the driver's results.json in ``out_dir``."""
    with open(os.path.join(out_dir, "results.json")) as f:
        results = json.load(f)["results"]
    if isinstance(results, dict):
        results = [results]
    return {int(r["bits"]): r for r in results}


def write_randperm_shim(directory):
    """A ``randperm.m`` that caps k at n (``randperm(n, min(k, n))``), for training sets
    smaller than the authors' hard-coded anchor count; returns ``directory``."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "randperm.m"), "w") as f:
        f.write("function p = randperm(n, k)\n"
                "% Caps k at n (benchmarks/jspsh_vs_octave.py: fewer than 1000 training\n"
                "% rows, where train_JSPSH.m asks for 1000 anchors).\n"
                "  if nargin < 2\n    k = n;\n  end\n"
                "  p = builtin('randperm', n, min(k, n));\n"
                "end\n")
    return directory


def valid_bits(bits_list, n, sparsity):
    """``(bits with kdim = bits / sparsity < n, reasons for the others)``."""
    from fjsph_jax.methods.jspsh import solver

    valid, skipped = [], []
    for bits in bits_list:
        kdim = solver.code_dim(bits, sparsity)
        if kdim < n:
            valid.append(bits)
        else:
            skipped.append(f"{bits} bits: kdim = {bits} / {sparsity} = {kdim} >= n = {n} "
                           "training rows (the authors' train_JSPSH.m learns codes only if "
                           "kdim < n, the orthonormal H [n, kdim] needs n >= kdim)")
    return valid, skipped


def octave_codes(out_dir, bits):
    import numpy as np
    import scipy.io

    mat = scipy.io.loadmat(os.path.join(out_dir, f"codes_{bits}.mat"))
    return {k: np.asarray(mat[k], np.float64) for k in ("B", "BxTest", "ByTest", "XW", "YW")}


def read_authors(directory):
    out = {}
    for name in AUTHOR_FILES:
        path = os.path.join(directory, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                out[name] = f.read()
    return out


def previous_inputs(work, data_path, authors_dir):
    """What an earlier run in ``work`` gave Octave (data, authors' files), or None."""
    import scipy.io

    if not os.path.exists(data_path):
        return None
    mat = scipy.io.loadmat(data_path)
    return {"data": {k: mat[k] for k in KEYS}, "authors": read_authors(authors_dir)}


def check_same(old, new, what):
    """Raise SystemExit unless the mappings ``old`` and ``new`` hold equal values (for
    the keys of ``new``; arrays compared exactly, after squeezing the .mat shapes)."""
    import numpy as np

    for key, value in new.items():
        if key not in old:
            raise SystemExit(f"--reuse_octave: the earlier run's {what} has no {key!r}")
        a, b = old[key], value
        if isinstance(b, bytes) or isinstance(a, bytes):
            same = a == b
        else:
            a = np.squeeze(np.asarray(a, np.float64) if np.asarray(a).dtype != object else a)
            b = np.squeeze(np.asarray(b, np.float64) if np.asarray(b).dtype != object else b)
            same = a.shape == b.shape and bool(np.all(a == b))
        if not same:
            raise SystemExit(f"--reuse_octave: {what}, {key!r}: not the earlier run's; "
                             "run Octave again (drop --reuse_octave)")


# Job fields that decide what Octave computed (paths aside).
_JOB_KEYS = ("bits", "mu", "alpha", "omega", "beta", "theta", "lambda", "iter", "sf",
             "anchors", "km", "mode", "seed")


def check_reusable(job_path, job, shared):
    """``--reuse_octave``: the earlier job file must match ``job`` on the fields that
    decide Octave's results (the rank rule only in the shared mode: the independent mode
    runs their code whatever our rule; job files without it are 'row_space')."""
    import numpy as np
    import scipy.io

    if not os.path.exists(job_path):
        raise SystemExit(f"--reuse_octave: no earlier job file {job_path}")
    old = scipy.io.loadmat(job_path)
    old_text = {k: str(np.squeeze(old[k])) for k in ("mode", "rank_rule") if k in old}
    new = {k: job[k] for k in _JOB_KEYS if k not in ("mode",)}
    check_same(old, new, "job")
    if old_text.get("mode") != job["mode"]:
        raise SystemExit(f"--reuse_octave: earlier mode {old_text.get('mode')!r}, "
                         f"now {job['mode']!r}")
    if ("cluster_ids" in old) != ("cluster_ids" in job):
        raise SystemExit("--reuse_octave: the earlier run and this one differ in given "
                         "cluster ids (--our_clusters / --shared_init)")
    if "cluster_ids" in job:
        check_same(old, {"cluster_ids": job["cluster_ids"]}, "job")
    if shared and old_text.get("rank_rule", "row_space") != job["rank_rule"]:
        raise SystemExit(f"--reuse_octave: the earlier shared run used rank_rule "
                         f"{old_text.get('rank_rule', 'row_space')!r}, this one "
                         f"{job['rank_rule']!r}")


# ----------------------------------------------------------------------------- ours


def run_ours(data, bits, params, key, init, float64, repeats=1):
    """(state, query codes, first-call seconds, warm seconds, warm CPU seconds); warm =
    fit + encode, the fastest of ``repeats`` calls after the first."""
    import jax
    import numpy as np

    from fjsph_jax.methods.jspsh import solver

    dtype = np.float64 if float64 else np.float32
    arrays = {k: data[k].astype(dtype) for k in ("I_tr", "T_tr", "I_te", "T_te")}

    def once():
        state = solver.fit(arrays["I_tr"], arrays["T_tr"], data["L_tr"], bits=bits,
                           params=params, key=key, init=init)
        qi = solver.encode(arrays["I_te"], state.image_W, bits)
        qt = solver.encode(arrays["T_te"], state.text_W, bits)
        return jax.block_until_ready((state, qi, qt))

    with jax.enable_x64(float64):
        start = time.perf_counter()
        once()
        first = time.perf_counter() - start
        warm = warm_cpu = float("inf")
        for _ in range(max(1, repeats)):
            start, start_cpu = time.perf_counter(), time.process_time()
            state, qi, qt = once()
            warm = min(warm, time.perf_counter() - start)
            warm_cpu = min(warm_cpu, time.process_time() - start_cpu)
    return state, np.asarray(qi), np.asarray(qt), first, warm, warm_cpu


def shared_init(data, bits, params, clusters, seed, float64):
    import jax
    import numpy as np

    from fjsph_jax.methods.jspsh import solver

    n, d_text = data["L_tr"].shape[0], data["T_tr"].shape[1]
    kdim = solver.code_dim(bits, params.sparsity)
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), bits), 4)
    with jax.enable_x64(True):
        h0 = np.asarray(solver.initial_h(keys[0], num_items=n, kdim=kdim, bits=bits,
                                         dtype=np.float64))
    rng = np.random.default_rng([seed, bits])
    pad = rng.standard_normal((params.iterations, n, kdim), dtype=np.float32)
    sel = rng.permutation(n)[:params.anchors]
    yw0 = rng.random((d_text, kdim))
    dtype = np.float64 if float64 else np.float32
    init = solver.JSPSHInit(H0=h0.astype(dtype), anchor_ids=sel,
                            text_W0=yw0.astype(dtype), clusters=clusters,
                            pad_noise=pad.astype(dtype))
    octave = {"H0": h0, "sel_idx": (sel + 1).astype(np.float64)[None, :], "YW0": yw0,
              "pad_noise": pad}
    return init, octave


# ----------------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--synthetic", action="store_true", help="generate data (default)")
    source.add_argument("--features", help=".mat or .npz with " + ", ".join(KEYS))
    parser.add_argument("--bits", default="16,32,64")
    parser.add_argument("--shared_init", action="store_true")
    parser.add_argument("--seeds", type=int, default=3, help="seeds (independent mode)")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--float64", action="store_true", help="our solve in float64")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed training runs per side (the fastest is reported)")
    parser.add_argument("--n_train", type=int, default=4000)
    parser.add_argument("--n_query", type=int, default=500)
    parser.add_argument("--anchors", type=int, default=1000)
    parser.add_argument("--km", default="100,200,500")
    parser.add_argument("--authors_dir", help="directory with the authors' .m files")
    parser.add_argument("--keep_dir", help="keep the work files here (default: temp)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--openblas_threads", default="1",
                        help="OPENBLAS_NUM_THREADS for our process ('' = leave as is)")
    parser.add_argument("--polar", default="auto", choices=("auto", "gram", "qr"),
                        help="our H step's polar factor (JSPSHParams.polar); the driver's "
                             "shared loop takes an SVD of Z V_keep, which 'qr' matches")
    parser.add_argument("--our_clusters", action="store_true",
                        help="independent mode, but both sides use our k-means clusters "
                             "(Octave: their train_JSPSH unchanged on them)")
    parser.add_argument("--reuse_octave", action="store_true",
                        help="reuse Octave's results.json in --keep_dir when present "
                             "(checked: same job, data and authors' files)")
    parser.add_argument("--rank_rule", default="row_space", choices=("row_space", "authors"),
                        help="our H step's rank rule (JSPSHParams.rank_rule); with "
                             "--shared_init also the driver's")
    args = parser.parse_args(argv)

    import jax
    import numpy as np
    import scipy.io

    from fjsph_jax.methods.jspsh import solver

    data = load_features(args.features) if args.features else synthetic(
        n_train=args.n_train, n_query=args.n_query)
    n_train = int(data["L_tr"].shape[0])
    bits_list, skipped = valid_bits([int(b) for b in args.bits.split(",")], n_train,
                                    solver.JSPSHParams().sparsity)
    for note in skipped:
        print("skipped:", note)
    if not bits_list:
        raise SystemExit("no bit length is valid for this training set size")
    ks, note = solver.cap_cluster_ks(data["L_tr"], [int(k) for k in args.km.split(",")])
    if note:
        print("note:", note)
    anchors = min(args.anchors, n_train)
    if anchors < args.anchors:
        print(f"note: anchors {args.anchors} > n = {n_train}: both sides use all {n_train} "
              "training rows as anchors")
    params = solver.JSPSHParams(anchors=anchors, cluster_ks=ks, polar=args.polar,
                                rank_rule=args.rank_rule)
    work = args.keep_dir or tempfile.mkdtemp(prefix="jspsh_vs_octave_")
    os.makedirs(work, exist_ok=True)
    data_path = os.path.join(work, "data.mat")
    authors_target = os.path.join(work, "authors")
    previous = previous_inputs(work, data_path, authors_target) if args.reuse_octave else None
    authors = args.authors_dir or extract_authors(authors_target)
    scipy.io.savemat(data_path, data)
    if previous is not None:
        check_same(previous["data"], data, "data")
        if not args.authors_dir:
            check_same(previous["authors"], read_authors(authors_target), "authors' files")
    seeds = [args.seed] if args.shared_init else list(range(args.seed, args.seed + args.seeds))
    job = {"authors_dir": authors, "data_path": data_path, "bits": np.array(bits_list, float),
           "mu": params.mu, "alpha": params.alpha, "omega": params.omega,
           "beta": params.beta, "theta": params.theta, "lambda": params.lam,
           "iter": float(params.iterations), "sf": params.sparsity,
           "anchors": float(params.anchors), "km": np.array(ks, float),
           "repeats": float(args.repeats), "rank_rule": args.rank_rule}
    if anchors < args.anchors:
        job["shim_dir"] = write_randperm_shim(os.path.join(work, "shim"))
        job["anchors"] = float(args.anchors)  # their hard-coded count, capped by the shim
    info = {"machine": common.machine(), "n_train": int(data["L_tr"].shape[0]),
            "n_query": int(data["L_te"].shape[0]), "dims": [int(data["I_tr"].shape[1]),
                                                          int(data["T_tr"].shape[1])],
            "classes": int(data["L_tr"].shape[1]), "cluster_ks": list(ks),
            "mode": "shared_init" if args.shared_init else "independent",
            "our_clusters": bool(args.our_clusters),
            "ours_dtype": "float64" if args.float64 else "float32", "polar": args.polar,
            "rank_rule": args.rank_rule,
            "data": args.features or "synthetic",
            "ours_openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
            "octave_openblas_threads": _ORIGINAL_OPENBLAS, "anchors": anchors,
            "skipped_bits": skipped, "rows": []}
    for seed in seeds:
        out_dir = os.path.join(work, f"octave_seed{seed}")
        os.makedirs(out_dir, exist_ok=True)
        job_seed = dict(job, out_dir=out_dir, seed=float(seed))
        inits = {}
        if args.shared_init:
            clusters = solver.cluster_labels(data["L_tr"], ks, jax.random.key(seed),
                                             num_iters=params.kmeans_iters)
            job_seed.update(mode="shared", cluster_ids=np.asarray(clusters.ids, float) + 1)
            paths = []
            for bits in bits_list:
                init, octave = shared_init(data, bits, params, clusters, seed, args.float64)
                path = os.path.join(work, f"init_seed{seed}_{bits}.mat")
                if args.reuse_octave and os.path.exists(path):
                    check_same(scipy.io.loadmat(path), octave, f"shared init {path}")
                scipy.io.savemat(path, octave, do_compression=False)
                paths.append(path)
                inits[bits] = init
            job_seed["init_paths"] = np.array(paths, dtype=object)
        else:
            job_seed.update(mode="independent")
            if args.our_clusters:
                clusters = solver.cluster_labels(data["L_tr"], ks, jax.random.key(seed),
                                                 num_iters=params.kmeans_iters)
                job_seed["cluster_ids"] = np.asarray(clusters.ids, float) + 1
                for bits in bits_list:
                    inits[bits] = solver.JSPSHInit(clusters=clusters)
        job_path = os.path.join(work, f"job_seed{seed}.mat")
        reused = args.reuse_octave and os.path.exists(os.path.join(out_dir, "results.json"))
        if reused:
            check_reusable(job_path, job_seed, args.shared_init)
        scipy.io.savemat(job_path, job_seed)
        if reused:
            octave_results, octave_wall = read_octave_results(out_dir), float("nan")
        else:
            octave_results, octave_wall = run_octave(job_path, out_dir)

        for bits in bits_list:
            key = jax.random.key(seed)
            state, qi, qt, first, warm, warm_cpu = run_ours(data, bits, params, key,
                                                  inits.get(bits), args.float64,
                                                  args.repeats)
            b = np.asarray(state.B, np.float64)
            ours = maps(qi, qt, b, data)
            oct_r = octave_results[bits]
            oct_codes = octave_codes(out_dir, bits)
            check = maps(oct_codes["BxTest"], oct_codes["ByTest"], oct_codes["B"], data)
            times = oct_r["times"]
            octave_s = (times.get("kmeans", 0.0) if not args.shared_init else 0.0) \
                + times["train"] + times["encode"]
            octave_cpu_s = (times.get("kmeans_cpu", 0.0) if not args.shared_init else 0.0) \
                + times["train_cpu"]
            row = {"seed": seed, "bits": bits,
                   "ours": ours, "octave": {k: oct_r[k] for k in ours},
                   "abs_diff": {k: abs(ours[k] - oct_r[k]) for k in ours},
                   "map_impl_max_diff": max(abs(check[k] - oct_r[k]) for k in check),
                   "ours_first_s": first, "ours_s": warm, "octave_s": octave_s,
                   "octave_times": times, "octave_process_s": octave_wall,
                   "speed_ratio": octave_s / warm, "ours_cpu_s": warm_cpu,
                   "octave_cpu_s": octave_cpu_s, "cpu_ratio": octave_cpu_s / warm_cpu,
                   "ours_h_ranks": [int(r) for r in np.asarray(state.h_ranks)],
                   "octave_reused": reused,
                   "load_average_1min": round(os.getloadavg()[0], 2)}
            if args.shared_init:
                r = bits * b.shape[0]
                row["B_agreement"] = float(np.sum(b * oct_codes["B"]) / r)
                row["query_agreement"] = float(
                    (np.sum(qi * oct_codes["BxTest"]) + np.sum(qt * oct_codes["ByTest"]))
                    / (2 * bits * qi.shape[0]))
                row["octave_h_ranks"] = [int(v) for v in np.atleast_1d(oct_r["h_ranks"])]
                # max |W_ours - W_octave| / max |W_octave| (the hash functions, which
                # depend continuously on B: ~1e-12 when B agrees exactly in float64)
                row["W_rel_diff"] = max(
                    float(np.max(np.abs(np.asarray(w, np.float64) - oct_codes[k]))
                          / np.max(np.abs(oct_codes[k])))
                    for w, k in ((state.image_W, "XW"), (state.text_W, "YW")))
            info["rows"].append(row)
            print(format_row(row, args.shared_init), flush=True)

    print_table(info, args.shared_init)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)
    if not args.keep_dir:
        shutil.rmtree(work, ignore_errors=True)
    return info


def format_row(row, shared):
    o, m = row["ours"], row["octave"]
    text = (f"seed {row['seed']} {row['bits']:3d} bits | i2t {o['i2t_map']:.4f} vs "
            f"{m['i2t_map']:.4f} | t2i {o['t2i_map']:.4f} vs {m['t2i_map']:.4f} | "
            f"ours {row['ours_s']:.2f}s (first {row['ours_first_s']:.1f}s) octave "
            f"{row['octave_s']:.2f}s x{row['speed_ratio']:.2f} (CPU s ours "
            f"{row['ours_cpu_s']:.1f} octave {row['octave_cpu_s']:.1f})")
    if shared:
        text += (f" | B agree {row['B_agreement']:.4f} queries {row['query_agreement']:.4f}"
                 f" W rel diff {row['W_rel_diff']:.1e}")
    return text


def print_table(info, shared):
    import numpy as np

    print(f"\nJSPSH ours ({info['ours_dtype']}) vs Octave, {info['mode']}, "
          f"n={info['n_train']} q={info['n_query']} ks={info['cluster_ks']}")
    header = ("bits  MAP i2t ours/octave |diff|   MAP t2i ours/octave |diff|   "
              "ours s  octave s  ratio")
    if shared:
        header += "  B agree"
    print(header)
    for bits in sorted({r["bits"] for r in info["rows"]}):
        rows = [r for r in info["rows"] if r["bits"] == bits]

        def stat(side, key):
            values = np.array([r[side][key] for r in rows])
            return (f"{values.mean():.4f}" + (f"±{values.std():.4f}" if len(rows) > 1 else ""))

        diff_i = np.mean([r["abs_diff"]["i2t_map"] for r in rows])
        diff_t = np.mean([r["abs_diff"]["t2i_map"] for r in rows])
        ours_s = np.mean([r["ours_s"] for r in rows])
        octave_s = np.mean([r["octave_s"] for r in rows])
        line = (f"{bits:4d}  {stat('ours', 'i2t_map')} / {stat('octave', 'i2t_map')} "
                f"{diff_i:.4f}   {stat('ours', 't2i_map')} / {stat('octave', 't2i_map')} "
                f"{diff_t:.4f}   {ours_s:6.2f}  {octave_s:8.2f}  {octave_s / ours_s:5.2f}")
        if shared:
            line += f"  {np.mean([r['B_agreement'] for r in rows]):.4f}"
        print(line)


if __name__ == "__main__":
    main()
