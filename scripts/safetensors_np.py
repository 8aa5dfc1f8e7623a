"""Minimal safetensors and checkpoint helpers shared by make_test_checkpoint.py and check_layer.py (numpy only).

Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}, "__metadata__"},
then the raw little-endian row-major data. BF16 is handled as uint16 bit patterns (numpy has no bfloat16), FP8 as
OCP e4m3fn codes (uint8).
"""
import json
import os
import struct

import numpy as np

NP_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
             "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32,
             "U64": np.uint64, "BOOL": np.bool_, "F8_E4M3": np.uint8, "F8_E5M2": np.uint8}


# ---- number formats --------------------------------------------------------------------------------------------
def f32_to_bf16_bits(x):
    """Round float32 to bfloat16 (nearest, ties to even); returns the uint16 bit patterns."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    b = b + 0x7FFF + ((b >> 16) & 1)
    return (b >> 16).astype(np.uint16)


def bf16_bits_to_f32(u):
    return (np.asarray(u, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_bf16(x):
    return bf16_bits_to_f32(f32_to_bf16_bits(x))


def _e4m3_table():
    t = np.zeros(256, dtype=np.float32)
    for code in range(256):
        e, m = (code >> 3) & 0xF, code & 7
        if code & 0x7F == 0x7F:
            v = np.nan
        elif e == 0:
            v = m * 2.0 ** -9
        else:
            v = (1 + m / 8.0) * 2.0 ** (e - 7)
        t[code] = -v if code & 0x80 else v
    return t


E4M3 = _e4m3_table()          # code -> value
E4M3_POS = E4M3[:0x7F].astype(np.float64)  # codes 0..126, ascending, finite


def f32_to_e4m3(x):
    """Nearest e4m3fn code (ties to the even code), saturating at +-448."""
    x = np.asarray(x, dtype=np.float32)
    a = np.abs(x).astype(np.float64)
    hi = np.clip(np.searchsorted(E4M3_POS, a, side="left"), 0, 126)
    lo = np.clip(hi - 1, 0, 126)
    dl, dh = a - E4M3_POS[lo], E4M3_POS[hi] - a
    pick = np.where(dl < dh, lo, np.where(dh < dl, hi, np.where(lo % 2 == 0, lo, hi)))
    pick = np.where(E4M3_POS[hi] == a, hi, pick)
    pick = np.where(a >= 448.0, 126, pick)
    return (pick.astype(np.uint8) | (np.signbit(x).astype(np.uint8) << 7)).astype(np.uint8)


def quantize_fp8_blocks(w, block=(128, 128)):
    """DeepSeek-style FP8 weights: (codes uint8 [R, C], scale_inv float32 [ceil(R/br), ceil(C/bc)]) with
    W ~= e4m3(codes) * scale_inv[i // br, j // bc]."""
    w = np.asarray(w, dtype=np.float32)
    br, bc = block
    rows, cols = w.shape
    sr, sc = -(-rows // br), -(-cols // bc)
    scales = np.ones((sr, sc), dtype=np.float32)
    q = np.zeros(w.shape, dtype=np.uint8)
    for i in range(sr):
        for j in range(sc):
            blk = w[i * br:(i + 1) * br, j * bc:(j + 1) * bc]
            amax = np.float32(np.max(np.abs(blk))) if blk.size else np.float32(0)
            s = np.float32(amax / np.float32(448.0)) if amax > 0 else np.float32(1.0)
            scales[i, j] = s
            q[i * br:(i + 1) * br, j * bc:(j + 1) * bc] = f32_to_e4m3(blk / s)
    return q, scales


def dequantize_fp8_blocks(q, scales, block=(128, 128)):
    br, bc = block
    s = np.repeat(np.repeat(scales.astype(np.float32), br, axis=0), bc, axis=1)[:q.shape[0], :q.shape[1]]
    return (E4M3[q] * s).astype(np.float32)  # float32 product, like waveep


# ---- files -----------------------------------------------------------------------------------------------------
def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, dtype string, numpy array holding that dtype's storage)."""
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    for name, dtype, arr in tensors:
        arr = np.ascontiguousarray(arr, dtype=NP_DTYPES[dtype])
        data = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


class SafetensorsFile:
    """Header of one file; tensors are memory-mapped on access."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError(f"{path}: truncated (shorter than the 8-byte header length)")
            (n,) = struct.unpack("<Q", raw)
            size = os.path.getsize(path)
            if n > size - 8:
                raise ValueError(f"{path}: header length {n} exceeds the file size {size} - 8")
            self.header = json.loads(f.read(n))
        self.data_start = 8 + n
        self.metadata = self.header.pop("__metadata__", {}) or {}

    def __contains__(self, name):
        return name in self.header

    def dtype(self, name):
        return self.header[name]["dtype"]

    def raw(self, name):
        h = self.header[name]
        b, e = h["data_offsets"]
        np_dt = NP_DTYPES[h["dtype"]]
        count = (e - b) // np.dtype(np_dt).itemsize
        arr = np.memmap(self.path, dtype=np_dt, mode="r", offset=self.data_start + b, shape=(count,)) if count else \
            np.zeros(0, dtype=np_dt)
        return np.asarray(arr).reshape(h["shape"])

    def float32(self, name):
        """F32 / BF16 / F16 / F8_E4M3 (unscaled) -> float32."""
        dt, a = self.dtype(name), self.raw(name)
        if dt == "F32":
            return a.astype(np.float32)
        if dt == "BF16":
            return bf16_bits_to_f32(a)
        if dt == "F16":
            return a.astype(np.float32)
        if dt == "F8_E4M3":
            return E4M3[a]
        raise ValueError(f"{self.path}: tensor '{name}' has dtype {dt}, not a float type")


class Checkpoint:
    """model.safetensors.index.json, model.safetensors, or every *.safetensors of a directory."""

    def __init__(self, directory):
        self.dir = directory
        self.files, self.file_of = {}, {}
        index = os.path.join(directory, "model.safetensors.index.json")
        if os.path.exists(index):
            self.file_of = json.load(open(index))["weight_map"]
        else:
            names = ["model.safetensors"] if os.path.exists(os.path.join(directory, "model.safetensors")) else \
                sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
            for fn in names:
                for t in self._file(fn).header:
                    self.file_of[t] = fn

    def _file(self, fn):
        if fn not in self.files:
            self.files[fn] = SafetensorsFile(os.path.join(self.dir, fn))
        return self.files[fn]

    def __contains__(self, name):
        return name in self.file_of

    def names(self):
        return sorted(self.file_of)

    def file(self, name):
        if name not in self.file_of:
            raise KeyError(f"tensor '{name}' is not in checkpoint {self.dir}")
        return self._file(self.file_of[name])

    def float32(self, name, block=(128, 128)):
        """A weight as float32; F8_E4M3 is dequantized with '<name>_scale_inv' blocks."""
        f = self.file(name)
        if f.dtype(name) != "F8_E4M3":
            return f.float32(name)
        q = f.raw(name)
        scales = self.file(name + "_scale_inv").float32(name + "_scale_inv")
        return dequantize_fp8_blocks(q, scales, block)
