"""Messages as bytes without pickle: tensors in safetensors, control values as JSON.

A message is one `safetensors <https://huggingface.co/docs/safetensors>`_ blob: its tensors are
named ``"0"``, ``"1"``, ... (dtype, shape and byte offsets in its typed header, all checked by the
safetensors library when read), and its metadata holds the rest of the value as JSON under
:data:`TREE_KEY`, where each tensor stands as ``{"$tensor": "<name>"}``. JSON has no tuples, no
non-string keys and no dtypes, so those are tagged too:

================================  =====================================
value                             JSON
================================  =====================================
``None``, bool, int, float, str   itself (floats round-trip exactly; NaN and infinities too)
list                              a list
dict with str keys (no ``$``)     an object
other dicts (e.g. int keys)       ``{"$dict": [[key, value], ...]}``
tuple                             ``{"$tuple": [...]}``
``torch.Tensor``                  ``{"$tensor": "<name>"}``
``torch.dtype``                   ``{"$dtype": "bfloat16"}``
================================  =====================================

Decoding builds only these types, so a message can carry data but never code: a malformed one
raises :class:`WireError` and nothing else happens.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from safetensors import SafetensorError, deserialize  # a transformers dependency
from safetensors.torch import save

#: The metadata key of the control values' JSON.
TREE_KEY = "fellrec"
#: The metadata key of the format's version (a peer of another fellrec version is told so).
FORMAT_KEY = "fellrec-wire"
FORMAT = "1"
_HEADER_LENGTH_BYTES = 8
#: The safetensors dtypes a message may hold (what fellrec sends: floats, ids, masks, RNG states).
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class WireError(ValueError):
    """A message that is not a well-formed fellrec wire message."""


def encode(value: Any) -> bytes:
    """``value`` as one message (see the module docstring for what it may contain).

    Raises:
        TypeError: For a value the format does not carry (a sender's mistake, not the peer's).
    """
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()

    def tree(node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, torch.Tensor):
            name = str(len(tensors))
            tensor = node.detach().to("cpu").contiguous()
            storage = tensor.untyped_storage().data_ptr()
            if storage in storages and tensor.numel():  # safetensors refuses shared memory
                tensor = tensor.clone()
            storages.add(tensor.untyped_storage().data_ptr())
            tensors[name] = tensor
            return {"$tensor": name}
        if isinstance(node, torch.dtype):
            return {"$dtype": str(node).removeprefix("torch.")}
        if isinstance(node, tuple):
            return {"$tuple": [tree(item) for item in node]}
        if isinstance(node, list):
            return [tree(item) for item in node]
        if isinstance(node, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in node):
                return {k: tree(v) for k, v in node.items()}
            return {"$dict": [[tree(k), tree(v)] for k, v in node.items()]}
        raise TypeError(f"the fellrec wire does not carry {type(node).__name__} values")

    control = json.dumps(tree(value), separators=(",", ":"), allow_nan=True)
    return save(tensors, metadata={FORMAT_KEY: FORMAT, TREE_KEY: control})


def decode(data: bytes) -> Any:
    """The value of a message :func:`encode` made.

    Raises:
        WireError: Naming what is wrong when ``data`` is not such a message.
    """
    if len(data) < _HEADER_LENGTH_BYTES:
        raise WireError(f"a message of {len(data)} bytes is too short for a header")
    header_length = int.from_bytes(data[:_HEADER_LENGTH_BYTES], "little")
    if header_length > len(data) - _HEADER_LENGTH_BYTES:
        raise WireError(
            f"the message's header claims {header_length} bytes, but only "
            f"{len(data) - _HEADER_LENGTH_BYTES} follow"
        )
    try:
        # The safetensors library checks the header, every dtype, shape and offset.
        tensors = {name: _tensor(view) for name, view in deserialize(data)}
        header = json.loads(data[_HEADER_LENGTH_BYTES : _HEADER_LENGTH_BYTES + header_length])
        metadata = header.get("__metadata__") or {}
        version = metadata.get(FORMAT_KEY)
        if version != FORMAT:
            raise WireError(
                f"not a fellrec wire message of format {FORMAT} (format {version!r}): are both "
                "ends on the same fellrec version?"
            )
        control = json.loads(metadata[TREE_KEY])
        return _value(control, tensors)
    except WireError:
        raise
    except (SafetensorError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise WireError(f"malformed message: {error}") from None
    except RecursionError:
        raise WireError("malformed message: its control values nest too deeply") from None


def _tensor(view: dict[str, Any]) -> torch.Tensor:
    """A tensor of ``deserialize``'s view (its own writable buffer)."""
    dtype = _DTYPES.get(view["dtype"])
    if dtype is None:
        raise WireError(f"malformed message: a tensor of dtype {view['dtype']}")
    if not view["data"]:
        return torch.empty(view["shape"], dtype=dtype)
    return torch.frombuffer(view["data"], dtype=dtype).reshape(view["shape"])


def _value(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [_value(item, tensors) for item in node]
    if not isinstance(node, dict):
        raise WireError(f"malformed message: unexpected {type(node).__name__} in its values")
    tags = [k for k in node if k.startswith("$")]
    if not tags:
        return {k: _value(v, tensors) for k, v in node.items()}
    if len(node) != 1:
        raise WireError(f"malformed message: a tagged value with other keys ({sorted(node)})")
    tag, content = tags[0], node[tags[0]]
    if tag == "$tensor":
        if not isinstance(content, str) or content not in tensors:
            raise WireError(f"malformed message: no tensor named {content!r} in it")
        return tensors[content]
    if tag == "$tuple" and isinstance(content, list):
        return tuple(_value(item, tensors) for item in content)
    if tag == "$dict" and isinstance(content, list):
        pairs = [_value(pair, tensors) for pair in content]
        if not all(isinstance(pair, list) and len(pair) == 2 for pair in pairs):
            raise WireError("malformed message: a $dict entry is not a [key, value] pair")
        return {_hashable(key): value for key, value in pairs}
    if tag == "$dtype" and isinstance(content, str):
        dtype = getattr(torch, content, None)
        if not isinstance(dtype, torch.dtype):
            raise WireError(f"malformed message: {content!r} is not a torch dtype")
        return dtype
    raise WireError(f"malformed message: unknown tag {tag!r}")


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        raise WireError("malformed message: a list as a dict key")
    if isinstance(key, torch.Tensor):
        raise WireError("malformed message: a tensor as a dict key")
    return key
