"""Exact top-k retrieval over hash codes: packed-bit Hamming search and inner-product search.

Two indexes share one search engine and one interface, ``search(queries, k) ->
(values [Q, k], ids int64 [Q, k])``:

* :class:`HammingIndex` holds binary codes packed into bits (``{-1, +1}`` codes, or
  bytes as :func:`fjsph_jax.binary.pack_bits` and faiss store them) and ranks the
  database by Hamming distance ``d(q, x) = popcount(q XOR x)`` ascending; the values
  returned are the int32 distances.
* :class:`InnerProductIndex` holds real-valued or sparse codes (e.g. JSPSH's sparse
  high-dimensional codes) as dense float32 rows and ranks by ``<q, x>`` descending; the
  values returned are the float32 scores.

Ranking is exact and total: ties are broken by database row (lower row first), so a
search equals a stable sort of the brute-force distances (``np.argsort(d, kind='stable')``).

The engine (:func:`_local_top_k`) processes ``query_chunk`` queries at a time against
``db_chunk`` database rows at a time, so working memory is ``O(query_chunk * db_chunk)``.
For one chunk it

1. computes the distances ``D`` [db_chunk, query_chunk] (queries in the minor axis, so
   every elementwise op is vectorised over queries; Hamming: XOR + popcount over uint32
   words);
2. takes the minimum of each block of ``B`` consecutive rows, ``m_b``, and keeps the
   ``k`` blocks that come first in ``(m_b, b)`` order (a ``top_k`` over ``db_chunk / B``
   values instead of ``db_chunk``). This is exact: if row ``n`` of block ``b`` is in the
   top ``k`` and block ``b'`` precedes ``b``, then ``b'`` holds a row at distance
   ``m_b' <= m_b <= d_n`` that precedes ``n`` (smaller distance, or equal distance and a
   smaller row), so fewer than ``k`` blocks precede ``b``;
3. ranks the rows of those blocks (in row order) with a stable ``top_k``, then merges
   them with the running top ``k`` of the earlier chunks (placed first, so a stable
   ``top_k`` over the concatenation keeps row order among equal distances).

With a mesh, the database rows are split over the ``data`` axis (each device holds a
contiguous slice); every device runs the engine on its rows and one stable ``top_k``
over the gathered candidates (in device order, hence row order) gives the global result.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fjsph_jax import binary
from fjsph_jax import parallel

WORD_BITS = 32
DEFAULT_QUERY_CHUNK = 128
DEFAULT_DB_CHUNK = 262144
BLOCK_ROWS = 32  # rows per block in the block-minimum pre-selection (step 2 above)
FAISS_KINDS = ("flat", "ivf")
_NPZ_FORMAT = "fjsph_jax.index/1"


# ----------------------------------------------------------------------------------------
# Validation and bit packing
# ----------------------------------------------------------------------------------------


def _check_positive_int(value: Any, name: str) -> int:
    """``value`` as an int if it is an integer >= 1 (bool excluded), else a ValueError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer (>= 1), got {value}.")
    return int(value)


def _check_2d(array: Any, name: str) -> np.ndarray | jax.Array:
    """A non-empty 2-D array (numpy or jax), else a ValueError naming ``name``."""
    if not isinstance(array, (np.ndarray, jax.Array)):
        array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {tuple(array.shape)}.")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(array.shape)}.")
    return array


@jax.jit
def _all_plus_minus_one(array: jax.Array) -> jax.Array:
    return jnp.all(jnp.abs(array) == 1)


@jax.jit
def _bytes_to_words(packed_nb: jax.Array) -> jax.Array:
    """uint8 [N, B] -> uint32 [N, ceil(B / 4)] (zero bytes appended; byte order is the
    same for every row, which is all that popcount(q XOR x) and (q AND x) need)."""
    num_rows, num_bytes = packed_nb.shape
    num_words = -(-num_bytes // 4)
    padded = jnp.pad(packed_nb, ((0, 0), (0, 4 * num_words - num_bytes)))
    return jax.lax.bitcast_convert_type(padded.reshape(num_rows, num_words, 4), jnp.uint32)


def _mask_padding_bits(packed_nb, bits: int):
    """Clears the bits after ``bits`` in the last byte (big-endian within a byte)."""
    spare = 8 * packed_nb.shape[1] - bits
    if spare == 0:
        return packed_nb
    keep = np.uint8((0xFF << spare) & 0xFF)
    return packed_nb.at[:, -1].set(packed_nb[:, -1] & keep) if isinstance(
        packed_nb, jax.Array) else np.concatenate(
        [packed_nb[:, :-1], packed_nb[:, -1:] & keep], axis=1)


def pack_codes(codes: Any, *, bits: int | None = None, name: str = "codes") -> tuple[jax.Array, int]:
    """Binary codes as packed bytes: ``(uint8 [N, ceil(K / 8)], K)``.

    Args:
      codes: either ``[N, K]`` codes in {-1, +1} (signed integer or floating dtype), or
        already packed uint8 bytes ``[N, ceil(K / 8)]`` as :func:`fjsph_jax.binary.pack_bits`
        or faiss store them (bit 1 for +1); then ``bits`` gives K (default ``8 * bytes``).
      bits: K for packed input; must be omitted or equal to K for ``{-1, +1}`` input.
      name: the argument name used in error messages.

    Returns:
      The packed bytes (bits after K cleared) and K.
    """
    codes = _check_2d(codes, name)
    if codes.dtype == np.uint8:
        num_bytes = codes.shape[1]
        if bits is None:
            bits = 8 * num_bytes
        bits = _check_positive_int(bits, "bits")
        if not 8 * (num_bytes - 1) < bits <= 8 * num_bytes:
            raise ValueError(
                f"bits={bits} does not match {name} with {num_bytes} bytes per row: "
                f"allowed values are {8 * (num_bytes - 1) + 1}..{8 * num_bytes}.")
        return jnp.asarray(_mask_padding_bits(codes, bits)), bits
    if not (np.issubdtype(codes.dtype, np.signedinteger) or np.issubdtype(codes.dtype, np.floating)):
        raise ValueError(
            f"{name} must be {{-1, +1}} codes (signed integer or floating dtype) or packed "
            f"uint8 bytes, got dtype {codes.dtype}.")
    if not bool(_all_plus_minus_one(jnp.asarray(codes))):
        raise ValueError(f"{name} must hold only the values -1 and +1 (or be packed uint8 bytes).")
    if bits is not None and bits != codes.shape[1]:
        raise ValueError(f"bits={bits!r} contradicts {name}, which has K={codes.shape[1]} columns.")
    return binary.pack_bits(jnp.asarray(codes)), int(codes.shape[1])


def code_words(codes: Any, *, bits: int | None = None, name: str = "codes") -> tuple[jax.Array, int]:
    """Binary codes as uint32 words for XOR/popcount: ``(uint32 [N, ceil(K / 32)], K)``.

    Accepts the same inputs as :func:`pack_codes`. Two code sets packed this way have
    ``hamming = sum_w popcount(a_w XOR b_w)``.
    """
    packed, bits = pack_codes(codes, bits=bits, name=name)
    return _bytes_to_words(packed), bits


def label_words(labels: Any, *, name: str = "labels") -> jax.Array:
    """Multi-hot ``{0, 1}`` labels [N, C] as uint32 words [N, ceil(C / 32)], so that two
    items share a label exactly when ``any_w (a_w AND b_w) != 0``."""
    labels = jnp.asarray(_check_2d(labels, name))
    return _bytes_to_words(binary.pack_bits(labels))


# ----------------------------------------------------------------------------------------
# Distances of a block of database rows to a chunk of queries ([R, Qc], queries minor)
# ----------------------------------------------------------------------------------------


def hamming_rows_by_queries(db_words_rw: jax.Array, query_words_wq: jax.Array) -> jax.Array:
    """``d[r, q] = sum_w popcount(db[r, w] XOR query[w, q])`` as uint32 [R, Qc]."""
    total = None
    for w in range(db_words_rw.shape[1]):
        count = jax.lax.population_count(db_words_rw[:, w : w + 1] ^ query_words_wq[w][None, :])
        total = count if total is None else total + count
    return total


@functools.lru_cache(maxsize=None)
def _hamming_distance_fn(num_bits: int):
    """Distances of rows to queries for the engine: uint8 when K < 255, else int32."""
    dtype = jnp.uint8 if num_bits < 255 else jnp.int32
    sentinel = num_bits + 1  # invalid (padding) rows come after every real row

    def distances(db_words_rw, query_words_wq, valid_r):
        d = hamming_rows_by_queries(db_words_rw, query_words_wq)
        return jnp.where(valid_r[:, None], d, sentinel).astype(dtype)

    return distances


def _negative_inner_product_fn(db_rows_rd, queries_dq, valid_r):
    """``-<db_r, q>`` float32 [R, Qc] (smaller is better); invalid rows get +inf."""
    scores = jnp.matmul(db_rows_rd, queries_dq, precision=jax.lax.Precision.HIGHEST)
    return jnp.where(valid_r[:, None], -scores, jnp.inf)


# ----------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------


def _stable_smallest(values_qm: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The ``k`` smallest entries of each row, ties in position order: ``(values, pos)``."""
    keys = -values_qm.astype(jnp.float32)
    _, positions = jax.lax.top_k(keys, k)
    return jnp.take_along_axis(values_qm, positions, axis=1), positions


def _local_top_k(distance_fn, db_cmx, queries_xq, row_offset, num_valid, *, k: int, block: int):
    """Exact top-k rows of a local database for one query chunk (module docstring steps).

    Args:
      distance_fn: ``(db_rx, queries_xq, valid_r) -> distances [R, Qc]`` (smaller is
        better; invalid rows must compare after every valid row).
      db_cmx: the local database split into ``C`` chunks of ``M`` rows ``[C, M, X]``.
      queries_xq: one query chunk, features in rows, queries in columns ``[X, Qc]``.
      row_offset: global row of local row 0 (int32 scalar); num_valid: global row count.
      k: results per query (static, ``<= M``); block: rows per block (divides ``M``).

    Returns:
      ``(distances [Qc, k], global rows int32 [Qc, k])`` sorted by (distance, row).
    """
    num_chunks, chunk_rows = db_cmx.shape[:2]
    num_queries = queries_xq.shape[1]
    num_blocks = chunk_rows // block
    blocks_kept = min(k, num_blocks)
    lanes = jnp.arange(num_queries, dtype=jnp.int32)[:, None]
    local_rows = jnp.arange(chunk_rows, dtype=jnp.int32)

    def step(carry, chunk):
        best_d, best_rows = carry
        chunk_db, chunk_index = chunk
        chunk_start = row_offset + chunk_index * chunk_rows
        valid = chunk_start + local_rows < num_valid
        # Materialise the distances once (XLA would otherwise recompute them per use).
        dist_mq = jax.lax.optimization_barrier(distance_fn(chunk_db, queries_xq, valid))
        block_min_bq = jnp.min(dist_mq.reshape(num_blocks, block, num_queries), axis=1)
        _, top_blocks_qb = _stable_smallest(block_min_bq.T, blocks_kept)
        top_blocks_qb = jnp.sort(top_blocks_qb, axis=1)  # row order among candidates
        cand_rows = (top_blocks_qb[:, :, None] * block + jnp.arange(block, dtype=jnp.int32))
        cand_rows = cand_rows.reshape(num_queries, blocks_kept * block)
        cand_d = dist_mq[cand_rows, lanes]
        chunk_d, pos = _stable_smallest(cand_d, k)
        chunk_rows_qk = jnp.take_along_axis(cand_rows, pos, axis=1) + chunk_start
        merged_d = jnp.concatenate([best_d, chunk_d.astype(best_d.dtype)], axis=1)
        merged_rows = jnp.concatenate([best_rows, chunk_rows_qk], axis=1)
        best_d, pos = _stable_smallest(merged_d, k)
        return (best_d, jnp.take_along_axis(merged_rows, pos, axis=1)), None

    sample = jax.eval_shape(
        distance_fn, db_cmx[0, :block], queries_xq, jnp.ones((block,), jnp.bool_))
    worst = jnp.inf if jnp.issubdtype(sample.dtype, jnp.floating) else jnp.iinfo(sample.dtype).max
    init = (jnp.full((num_queries, k), worst, sample.dtype),
            jnp.full((num_queries, k), -1, jnp.int32))
    chunk_ids = jnp.arange(num_chunks, dtype=jnp.int32)
    (best_d, best_rows), _ = jax.lax.scan(step, init, (db_cmx, chunk_ids))
    return best_d, best_rows


def _merge_shards(dist_sqk, rows_sqk, k: int):
    """Global top-k from per-shard results ``[S, Qc, k]`` listed in row order of shards."""
    num_shards, num_queries, _ = dist_sqk.shape
    dist_q_sk = jnp.moveaxis(dist_sqk, 0, 1).reshape(num_queries, num_shards * k)
    rows_q_sk = jnp.moveaxis(rows_sqk, 0, 1).reshape(num_queries, num_shards * k)
    best_d, pos = _stable_smallest(dist_q_sk, k)
    return best_d, jnp.take_along_axis(rows_q_sk, pos, axis=1)


@functools.partial(
    jax.jit, static_argnames=("distance_fn", "k", "block", "query_chunk", "mesh"))
def _search(distance_fn, db_scmx, queries_qx, num_valid, *, k, block, query_chunk, mesh):
    """Top-k for all queries: lax.map over query chunks, each searching every shard.

    ``db_scmx`` is ``[S, C, M, X]`` (S = shards; with a mesh its leading axis is split
    over the ``data`` axis). Returns ``(distances [Q, k], rows int32 [Q, k])``.
    """
    num_queries = queries_qx.shape[0]
    num_query_chunks = -(-num_queries // query_chunk)
    padded = jnp.pad(queries_qx, ((0, num_query_chunks * query_chunk - num_queries), (0, 0)))
    query_chunks_txq = jnp.swapaxes(
        padded.reshape(num_query_chunks, query_chunk, queries_qx.shape[1]), 1, 2)
    shard_rows = db_scmx.shape[1] * db_scmx.shape[2]

    def one_shard(db_cmx, shard_index, queries_xq):
        return _local_top_k(distance_fn, db_cmx, queries_xq, shard_index * shard_rows,
                            num_valid, k=k, block=block)

    if mesh is None:
        def search_chunk(queries_xq):
            results = [one_shard(db_scmx[s], s, queries_xq) for s in range(db_scmx.shape[0])]
            if len(results) == 1:
                return results[0]
            return _merge_shards(jnp.stack([r[0] for r in results]),
                                 jnp.stack([r[1] for r in results]), k)
    else:
        def sharded(db_1cmx, queries_xq):
            shard_index = jax.lax.axis_index(parallel.DATA_AXIS)
            local_d, local_rows = one_shard(db_1cmx[0], shard_index, queries_xq)
            all_d = jax.lax.all_gather(local_d, parallel.DATA_AXIS)
            all_rows = jax.lax.all_gather(local_rows, parallel.DATA_AXIS)
            return _merge_shards(all_d, all_rows, k)

        search_chunk = functools.partial(jax.shard_map(
            sharded, mesh=mesh, in_specs=(P(parallel.DATA_AXIS), P()), out_specs=(P(), P()),
            check_vma=False), db_scmx)

    dist_tqk, rows_tqk = jax.lax.map(search_chunk, query_chunks_txq)
    dist = dist_tqk.reshape(num_query_chunks * query_chunk, k)[:num_queries]
    rows = rows_tqk.reshape(num_query_chunks * query_chunk, k)[:num_queries]
    return dist, rows


def _layout_rows(rows_nx: jax.Array, *, num_shards: int, chunk_rows: int, mesh: Mesh | None):
    """Pads ``[N, X]`` rows to ``S * C * M`` and reshapes to ``[S, C, M, X]`` (placed with
    the leading axis over the mesh's ``data`` axis when a mesh is given)."""
    num_rows = rows_nx.shape[0]
    per_shard = -(-num_rows // num_shards)
    chunks = -(-per_shard // chunk_rows)
    total = num_shards * chunks * chunk_rows
    padded = jnp.pad(rows_nx, ((0, total - num_rows), (0, 0)))
    laid_out = padded.reshape(num_shards, chunks, chunk_rows, rows_nx.shape[1])
    if mesh is not None:
        laid_out = jax.device_put(laid_out, NamedSharding(mesh, P(parallel.DATA_AXIS)))
    return laid_out


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class _ExactIndex:
    """Shared storage layout, argument checks and search driver of both indexes."""

    _distance_fn: Any

    def __init__(self, rows_nx: jax.Array, *, ids, mesh: Mesh | None, db_chunk: int):
        self.num_rows = int(rows_nx.shape[0])
        self.ids = None if ids is None else self._check_ids(ids, self.num_rows)
        self.mesh = mesh
        self.num_shards = 1 if mesh is None else parallel.num_data_shards(mesh)
        db_chunk = _check_positive_int(db_chunk, "db_chunk")
        per_shard = -(-self.num_rows // self.num_shards)
        self.chunk_rows = _round_up(min(db_chunk, per_shard), BLOCK_ROWS)
        self._rows = rows_nx
        self._layouts: dict[int, jax.Array] = {}

    @staticmethod
    def _check_ids(ids, num_rows: int) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.shape != (num_rows,) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"ids must be an integer array of shape ({num_rows},), one per database "
                f"row, got {ids.dtype}{ids.shape}.")
        return ids.astype(np.int64)

    def __len__(self) -> int:
        return self.num_rows

    def _layout(self, k: int) -> jax.Array:
        """The database laid out for search; a chunk must hold at least ``k`` rows."""
        chunk_rows = max(self.chunk_rows, _round_up(k, BLOCK_ROWS))
        if chunk_rows not in self._layouts:
            self._layouts[chunk_rows] = _layout_rows(
                self._rows, num_shards=self.num_shards, chunk_rows=chunk_rows, mesh=self.mesh)
        return self._layouts[chunk_rows]

    def _run(self, queries_qx: jax.Array, k: Any, query_chunk: Any):
        k = _check_positive_int(k, "k")
        if k > self.num_rows:
            raise ValueError(
                f"k={k} exceeds the number of database rows ({self.num_rows}); "
                f"allowed values are 1..{self.num_rows}.")
        query_chunk = _check_positive_int(query_chunk, "query_chunk")
        query_chunk = min(query_chunk, _round_up(queries_qx.shape[0], 8))
        values, rows = _search(
            self._distance_fn, self._layout(k), queries_qx, np.int32(self.num_rows),
            k=k, block=BLOCK_ROWS, query_chunk=query_chunk, mesh=self.mesh)
        rows = np.asarray(rows).astype(np.int64)
        return values, (rows if self.ids is None else self.ids[rows])


# ----------------------------------------------------------------------------------------
# Hamming index
# ----------------------------------------------------------------------------------------


class HammingIndex(_ExactIndex):
    """Exact Hamming top-k over packed binary codes (optionally sharded over a mesh).

    Build with :meth:`from_codes`; query with :meth:`search`; persist with :meth:`save` /
    :meth:`load`; serve with faiss through :meth:`to_faiss` / :meth:`from_faiss`.

    Attributes:
      bits: K, the code length.
      num_rows: N, the number of database codes.
      ids: int64 [N] external ids returned by :meth:`search`, or None (row numbers).
      packed: uint8 [N, ceil(K / 8)] codes, bit 1 for +1 (as ``np.packbits``/faiss).
    """

    def __init__(self, packed_nb: jax.Array, bits: int, *, ids=None, mesh: Mesh | None = None,
                 db_chunk: int = DEFAULT_DB_CHUNK):
        self.bits = int(bits)
        self.packed = np.asarray(packed_nb)
        self._distance_fn = _hamming_distance_fn(self.bits)
        super().__init__(_bytes_to_words(jnp.asarray(packed_nb)), ids=ids, mesh=mesh,
                         db_chunk=db_chunk)

    @classmethod
    def from_codes(cls, codes: Any, *, bits: int | None = None, ids: Any = None,
                   mesh: Mesh | None = None, db_chunk: int = DEFAULT_DB_CHUNK) -> "HammingIndex":
        """Index ``[N, K]`` codes in {-1, +1}, or packed uint8 bytes with ``bits = K``.

        Args:
          codes: the database codes (see :func:`pack_codes`).
          bits: K for packed input (default ``8 * bytes``).
          ids: optional integer [N] ids to return instead of row numbers.
          mesh: optional mesh; database rows are split over its ``data`` axis.
          db_chunk: database rows per device processed at once (memory ``O(query_chunk *
            db_chunk)``).
        """
        packed, bits = pack_codes(codes, bits=bits, name="codes")
        return cls(packed, bits, ids=ids, mesh=mesh, db_chunk=db_chunk)

    def search(self, query_codes: Any, k: int, *,
               query_chunk: int = DEFAULT_QUERY_CHUNK) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest codes of each query, by (Hamming distance, row) ascending.

        Args:
          query_codes: ``[Q, K]`` codes in {-1, +1}, or packed uint8 ``[Q, ceil(K / 8)]``.
          k: results per query, ``1 <= k <= N``.
          query_chunk: queries processed at once.

        Returns:
          ``(distances int32 [Q, k], ids int64 [Q, k])`` as numpy arrays.
        """
        words, bits = code_words(query_codes, bits=self.bits if _is_packed(query_codes) else None,
                                 name="query_codes")
        if bits != self.bits:
            raise ValueError(
                f"query_codes have K={bits} bits but the index holds K={self.bits}-bit codes.")
        distances, ids = self._run(words, k, query_chunk)
        return np.asarray(distances).astype(np.int32), ids

    # -- persistence -------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Writes ``packed``, ``bits`` and ``ids`` to an ``.npz`` file."""
        arrays = {"format": np.array(_NPZ_FORMAT), "packed": self.packed,
                  "bits": np.array(self.bits)}
        if self.ids is not None:
            arrays["ids"] = self.ids
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, *, mesh: Mesh | None = None,
             db_chunk: int = DEFAULT_DB_CHUNK) -> "HammingIndex":
        """Reads an index written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            if "format" not in data or str(data["format"]) != _NPZ_FORMAT:
                raise ValueError(
                    f"{os.fspath(path)} is not a HammingIndex file (written by "
                    f"HammingIndex.save); rebuild the index with HammingIndex.from_codes.")
            ids = data["ids"] if "ids" in data else None
            return cls.from_codes(data["packed"], bits=int(data["bits"]), ids=ids, mesh=mesh,
                                  db_chunk=db_chunk)

    # -- faiss interop -----------------------------------------------------------------

    def to_faiss(self, kind: str = "flat", *, nlist: int | None = None, nprobe: int = 1):
        """A faiss binary index holding the same codes (and ids).

        Args:
          kind: ``'flat'`` for ``faiss.IndexBinaryFlat`` (exact) or ``'ivf'`` for
            ``faiss.IndexBinaryIVF`` (inverted lists over a flat binary quantizer, trained on
            the codes; approximate unless ``nprobe == nlist``), for very large collections.
          nlist: number of IVF lists (default ``~ 4 sqrt(N)``, at most N); ``'ivf'`` only.
          nprobe: lists visited per query; ``'ivf'`` only.

        Returns:
          The faiss index; wrapped in ``faiss.IndexBinaryIDMap2`` when the index has ids.
          faiss requires K to be a multiple of 8.
        """
        faiss = _import_faiss()
        if kind not in FAISS_KINDS:
            raise ValueError(f"kind must be one of {FAISS_KINDS}, got {kind!r}.")
        if self.bits % 8:
            raise ValueError(f"faiss binary indexes need K to be a multiple of 8, got K={self.bits}.")
        if kind == "flat":
            if nlist is not None:
                raise ValueError("nlist applies only to kind='ivf'.")
            index = faiss.IndexBinaryFlat(self.bits)
        else:
            nlist = (min(self.num_rows, max(1, int(4 * np.sqrt(self.num_rows))))
                     if nlist is None else _check_positive_int(nlist, "nlist"))
            if nlist > self.num_rows:
                raise ValueError(f"nlist={nlist} exceeds the number of codes ({self.num_rows}).")
            quantizer = faiss.IndexBinaryFlat(self.bits)
            index = faiss.IndexBinaryIVF(quantizer, self.bits, nlist)
            index.own_fields = True
            quantizer.this.disown()
            index.train(self.packed)
            index.nprobe = _check_positive_int(nprobe, "nprobe")
        if self.ids is None:
            index.add(self.packed)
            return index
        mapped = faiss.IndexBinaryIDMap2(index)
        mapped.own_fields = True
        index.this.disown()
        mapped.add_with_ids(self.packed, self.ids)
        return mapped

    @classmethod
    def from_faiss(cls, index, *, mesh: Mesh | None = None,
                   db_chunk: int = DEFAULT_DB_CHUNK) -> "HammingIndex":
        """An exact index over the codes (and ids) stored in a faiss binary index.

        Supports ``IndexBinaryFlat``, ``IndexBinaryIVF`` and ``IndexBinaryIDMap``/``IDMap2``
        around either. Flat codes keep their insertion order; IVF codes (read from the
        inverted lists, the index is not modified) are ordered by id, which is the insertion
        order unless ids were given. Ids other than ``0..N-1`` are kept as :attr:`ids`.
        """
        faiss = _import_faiss()
        index = faiss.downcast_IndexBinary(index)
        ids = None
        if isinstance(index, (faiss.IndexBinaryIDMap, faiss.IndexBinaryIDMap2)):
            ids = faiss.vector_to_array(index.id_map).astype(np.int64)
            index = faiss.downcast_IndexBinary(index.index)
        if index.ntotal == 0:
            raise ValueError("the faiss index holds no codes; add codes before converting.")
        if isinstance(index, faiss.IndexBinaryFlat):
            packed = faiss.vector_to_array(index.xb).reshape(index.ntotal, index.code_size)
        elif isinstance(index, faiss.IndexBinaryIVF):
            packed, list_ids = _ivf_codes_by_id(faiss, index)
            if ids is None and not np.array_equal(list_ids, np.arange(len(list_ids))):
                ids = list_ids
            elif ids is not None:  # IDMap around IVF: the IVF holds positions in id_map
                ids = ids[list_ids]
        else:
            raise ValueError(
                f"unsupported faiss index type {type(index).__name__}; supported: "
                "IndexBinaryFlat, IndexBinaryIVF and IndexBinaryIDMap(2) around them.")
        return cls.from_codes(np.ascontiguousarray(packed, dtype=np.uint8), bits=index.d,
                              ids=ids, mesh=mesh, db_chunk=db_chunk)


def _ivf_codes_by_id(faiss, index) -> tuple[np.ndarray, np.ndarray]:
    """All ``(codes uint8 [N, B], ids int64 [N])`` of a binary IVF index, sorted by id."""
    lists = index.invlists
    codes, ids = [], []
    for list_no in range(index.nlist):
        size = lists.list_size(list_no)
        if size == 0:
            continue
        ids.append(faiss.rev_swig_ptr(lists.get_ids(list_no), size).copy())
        codes.append(faiss.rev_swig_ptr(lists.get_codes(list_no), size * index.code_size)
                     .copy().reshape(size, index.code_size))
    ids = np.concatenate(ids).astype(np.int64)
    order = np.argsort(ids, kind="stable")
    return np.concatenate(codes)[order], ids[order]


def _is_packed(codes: Any) -> bool:
    return getattr(codes, "dtype", None) == np.uint8


def _import_faiss():
    try:
        import faiss  # optional dependency
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "faiss interop needs the optional faiss-cpu package: pip install "
            "'fjsph-jax[faiss]' (or pip install faiss-cpu).") from error
    return faiss


# ----------------------------------------------------------------------------------------
# Inner-product index (sparse / real-valued codes)
# ----------------------------------------------------------------------------------------


class InnerProductIndex(_ExactIndex):
    """Exact top-k by inner product ``<q, x>`` (descending; ties by row).

    For real-valued or sparse codes (JSPSH's sparse high-dimensional codes are passed as
    dense ``[N, D]`` arrays). Scores are float32 matmuls at highest precision, exact for
    integer-valued codes with ``|<q, x>| < 2**24``.
    """

    def __init__(self, vectors_nd: jax.Array, *, ids=None, mesh: Mesh | None = None,
                 db_chunk: int = DEFAULT_DB_CHUNK):
        self.dim = int(vectors_nd.shape[1])
        self._distance_fn = _negative_inner_product_fn
        super().__init__(vectors_nd, ids=ids, mesh=mesh, db_chunk=db_chunk)

    @classmethod
    def from_vectors(cls, vectors: Any, *, ids: Any = None, mesh: Mesh | None = None,
                     db_chunk: int = DEFAULT_DB_CHUNK) -> "InnerProductIndex":
        """Index ``[N, D]`` real (or sparse as dense) codes; ``ids`` as in HammingIndex."""
        return cls(_check_vectors(vectors, "vectors"), ids=ids, mesh=mesh, db_chunk=db_chunk)

    def search(self, queries: Any, k: int, *,
               query_chunk: int = DEFAULT_QUERY_CHUNK) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` highest-scoring rows per query, by (score descending, row ascending).

        Returns:
          ``(scores float32 [Q, k], ids int64 [Q, k])`` as numpy arrays.
        """
        queries = _check_vectors(queries, "queries")
        if queries.shape[1] != self.dim:
            raise ValueError(
                f"queries have dimension {queries.shape[1]} but the index holds "
                f"{self.dim}-dimensional vectors.")
        negative_scores, ids = self._run(queries, k, query_chunk)
        return -np.asarray(negative_scores), ids


def _check_vectors(vectors: Any, name: str) -> jax.Array:
    """A finite float32 ``[M, D]`` array (scipy.sparse input is densified)."""
    if hasattr(vectors, "toarray"):  # scipy.sparse matrices
        vectors = vectors.toarray()
    vectors = _check_2d(vectors, name)
    if not (np.issubdtype(vectors.dtype, np.number) or vectors.dtype == np.bool_):
        raise ValueError(f"{name} must be numeric, got dtype {vectors.dtype}.")
    vectors = jnp.asarray(vectors, jnp.float32)
    if not bool(jnp.all(jnp.isfinite(vectors))):
        raise ValueError(f"{name} must be finite (no NaN or inf).")
    return vectors


__all__ = [
    "HammingIndex",
    "InnerProductIndex",
    "code_words",
    "hamming_rows_by_queries",
    "label_words",
    "pack_codes",
]

