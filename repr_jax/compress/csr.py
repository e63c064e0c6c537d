"""Compressed sparse row storage with relative indices (Han et al., NIPS 2015; Deep Compression,
ICLR 2016, §3 and Fig. 2).

A 2-D weight matrix ``W`` (rows: a conv's filters ``F × (kh·kw·c_in)``, a dense layer's output
neurons ``out × in``) is stored row by row as its non-zero values (float32) and, for each, the
number of zeros skipped since the previous stored entry of the row (its *relative index*),
packed at ``index_bits`` bits. A gap longer than ``2**b − 1`` zeros cannot be written, so a
*filler* entry — an explicit 0.0 with relative index ``2**b − 1`` — is inserted, as often as
needed: a gap ``g`` costs ``g // 2**b`` fillers and its entry stores ``g mod 2**b``. Row
pointers (int32, ``rows + 1``) give each row's first entry. Han et al. use 8 bits for conv and
5 bits for dense layers.

Storage, in bytes: ``4·entries + ceil(entries·b / 8) + 4·(rows + 1)``
(:attr:`CSR.nbytes`). :func:`csr_decode` rebuilds the matrix exactly (float32).
"""
from __future__ import annotations

import dataclasses

import numpy as np

CONV_INDEX_BITS, DENSE_INDEX_BITS = 8, 5   # Han et al. 2015, §4 (AlexNet / Deep Compression)


@dataclasses.dataclass(frozen=True)
class CSR:
    """One encoded matrix: ``values`` (float32, fillers included), ``packed_indices`` (the
    relative indices, ``index_bits`` bits each, big-endian bit order), ``row_ptr`` (int32)."""
    shape: tuple[int, int]
    values: np.ndarray
    packed_indices: np.ndarray
    row_ptr: np.ndarray
    index_bits: int

    @property
    def entries(self) -> int:
        """Stored entries: non-zeros plus fillers."""
        return int(self.values.size)

    @property
    def fillers(self) -> int:
        return int(self.entries - np.count_nonzero(self.values))

    @property
    def nbytes(self) -> int:
        """Bytes this encoding takes: values, packed indices and row pointers."""
        return int(self.values.nbytes + self.packed_indices.nbytes + self.row_ptr.nbytes)

    def relative_indices(self) -> np.ndarray:
        """The unpacked relative indices (one per entry)."""
        bits = np.unpackbits(self.packed_indices)[: self.entries * self.index_bits]
        bits = bits.reshape(self.entries, self.index_bits).astype(np.int64)
        return bits @ (1 << np.arange(self.index_bits - 1, -1, -1, dtype=np.int64))


def _check_bits(index_bits) -> int:
    if not isinstance(index_bits, (int, np.integer)) or not 1 <= int(index_bits) <= 16:
        raise ValueError(f"index_bits must be an integer in 1..16, got {index_bits!r}")
    return int(index_bits)


def csr_encode(weights_2d, index_bits: int) -> CSR:
    """Encode a 2-D matrix (non-zeros kept exactly as float32); see the module docstring."""
    bits = _check_bits(index_bits)
    w = np.asarray(weights_2d, np.float32)
    if w.ndim != 2:
        raise ValueError(f"csr_encode needs a 2-D matrix, got shape {w.shape}")
    rows, cols = np.nonzero(w)                     # row-major order
    prev = np.empty_like(cols)
    prev[1:] = cols[:-1]
    first = np.ones(cols.shape, bool)
    first[1:] = rows[1:] != rows[:-1]
    prev[first] = -1
    gap = cols - prev - 1                         # zeros skipped before each non-zero
    span = 1 << bits
    fillers = gap // span
    per_entry = fillers + 1
    total = int(per_entry.sum())
    real = np.cumsum(per_entry) - 1               # where each non-zero lands among the entries
    values = np.zeros(total, np.float32)
    values[real] = w[rows, cols]
    rel = np.full(total, span - 1, np.int64)
    rel[real] = gap % span
    counts = np.bincount(rows, weights=per_entry, minlength=w.shape[0]).astype(np.int64)
    row_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    bit_matrix = (rel[:, None] >> np.arange(bits - 1, -1, -1)) & 1
    packed = np.packbits(bit_matrix.astype(np.uint8).reshape(-1))
    return CSR(tuple(int(d) for d in w.shape), values, packed, row_ptr, bits)


def csr_decode(encoded: CSR) -> np.ndarray:
    """The float32 matrix ``encoded`` stores."""
    rows, cols = encoded.shape
    out = np.zeros((rows, cols), np.float32)
    if encoded.entries == 0:
        return out
    step = encoded.relative_indices() + 1
    row_of = np.repeat(np.arange(rows), np.diff(encoded.row_ptr))
    running = np.cumsum(step)
    before_row = np.concatenate([[0], running])[encoded.row_ptr[:-1]]
    position = running - before_row[row_of] - 1
    out[row_of, position] = encoded.values
    return out


def as_matrix(kernel) -> np.ndarray:
    """A kernel as the matrix its CSR stores: rows are filters / output neurons
    (conv ``(kh, kw, c_in, F)`` → ``F × kh·kw·c_in``; dense ``(in, out)`` → ``out × in``)."""
    k = np.asarray(kernel, np.float32)
    return k.reshape(-1, k.shape[-1]).T


def storage_report(params, index_bits=None) -> dict:
    """Dense vs CSR bytes of every kernel of ``params`` (masked values already zero), with
    Han et al.'s parameter compression ratio (all parameters / non-zero ones).

    Kernels (2-D dense, 4-D conv) are stored as CSR at ``index_bits[kind]`` bits (default 8
    for conv, 5 for dense); biases and BatchNorm parameters stay dense float32 and are counted
    in the totals. Returns ``{"layers": [{name, kind, shape, params, nonzero, density,
    dense_bytes, csr_bytes, fillers, ratio}], "total": {...}}``.
    """
    import jax
    bits = {"conv": CONV_INDEX_BITS, "dense": DENSE_INDEX_BITS, **(index_bits or {})}
    layers, other_params = [], 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = "/".join(str(getattr(p, "key", p)) for p in path)
        a = np.asarray(leaf)
        if name.endswith("kernel") and a.ndim in (2, 4):
            kind = "conv" if a.ndim == 4 else "dense"
            enc = csr_encode(as_matrix(a), bits[kind])
            nonzero = int(np.count_nonzero(a))
            layers.append({"name": name[: -len("/kernel")], "kind": kind, "shape": list(a.shape),
                           "params": int(a.size), "nonzero": nonzero, "density": nonzero / a.size,
                           "index_bits": bits[kind], "dense_bytes": int(a.size * 4),
                           "csr_bytes": enc.nbytes, "fillers": enc.fillers,
                           "ratio": a.size * 4 / enc.nbytes})
        else:
            other_params += int(a.size)
    total_params = sum(l["params"] for l in layers) + other_params
    nonzero = sum(l["nonzero"] for l in layers) + other_params
    dense_bytes = 4 * total_params
    csr_bytes = sum(l["csr_bytes"] for l in layers) + 4 * other_params
    return {"layers": layers, "total": {
        "params": total_params, "nonzero": nonzero, "other_params": other_params,
        "param_ratio": total_params / max(nonzero, 1), "dense_bytes": dense_bytes,
        "csr_bytes": csr_bytes, "byte_ratio": dense_bytes / max(csr_bytes, 1)}}


def storage_markdown(report: dict) -> str:
    """A per-layer markdown table of :func:`storage_report`."""
    lines = ["| layer | kind | params | non-zero | dense bytes | CSR bytes | ratio |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for l in report["layers"]:
        lines.append(f"| {l['name']} | {l['kind']} ({l['index_bits']}-bit) | {l['params']:,} | "
                     f"{l['nonzero']:,} ({100 * l['density']:.1f} %) | {l['dense_bytes']:,} | "
                     f"{l['csr_bytes']:,} | {l['ratio']:.1f}× |")
    t = report["total"]
    lines.append(f"| **total** (biases, BatchNorm dense) | | {t['params']:,} | {t['nonzero']:,} | "
                 f"{t['dense_bytes']:,} | {t['csr_bytes']:,} | {t['byte_ratio']:.1f}× "
                 f"(params {t['param_ratio']:.1f}×) |")
    return "\n".join(lines)


__all__ = ["CONV_INDEX_BITS", "CSR", "DENSE_INDEX_BITS", "as_matrix", "csr_decode", "csr_encode",
           "storage_markdown", "storage_report"]
