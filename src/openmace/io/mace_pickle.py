"""Read a mace-torch ``.model`` file without running any of its code.

mace-torch saves a model with ``torch.save(module)``: a zip archive holding ``<name>/data.pkl``,
a pickle of the whole ``nn.Module`` tree (mace, e3nn, ``torch.nn`` and ``torch.fx`` objects), and
``<name>/data/<key>``, the raw bytes of each tensor storage. Unpickling it the ordinary way
imports mace and e3nn and runs code chosen by the file: ``torch.fx`` ``exec``\\ s the Python
source stored with each ``GraphModule`` and e3nn ``torch.jit.load``\\ s the TorchScript archives
stored in its modules' state (``__codegen__``).

:func:`read_mace_torch_model` reads the same file with a restricted unpickler instead:

* every global the pickle names is looked up in an allowlist (:func:`_find_global`); anything
  else (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) is refused with
  :class:`UnsafeModelFile`. Allowed classes are never imported: each object becomes a
  :class:`Record` (its class's module and name, its constructor arguments and its pickled state:
  attributes, ``_parameters``, ``_buffers``, ``_modules``, ``_non_persistent_buffers_set``);
* the only callables a pickle may invoke (``REDUCE``) are this module's own stand-ins
  (:data:`_REDUCERS`), each checking its arguments: ``OrderedDict``, ``set``, tensor rebuilding
  from the archive's storages, ...; ``torch.fx`` GraphModule reductions are recorded with their
  Python source kept as an inert string, never executed;
* e3nn's TorchScript blobs are kept as bytes and only read as data (their pickled buffers, with
  the same restricted unpickler), never ``torch.jit.load``\\ ed;
* sizes are checked before anything is read: declared entry sizes against the archive's size
  and the memory available, each storage's size against the number of elements the pickle
  claims, tensor views against their storage.

From the records it recovers the state dict (what mace-torch's ``module.state_dict()`` returns,
key for key and bit for bit, on CPU) and the configuration mace-torch's
``extract_config_mace_model`` returns, in JSON form (:func:`config_from_records`).
"""

from __future__ import annotations

import _compat_pickle
import io
import logging
import math
import pickle
import re
import reprlib
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openmace.io.errors import ConversionError
from openmace.memory import available_bytes

logger = logging.getLogger(__name__)


class UnsafeModelFile(ConversionError):
    """A model file that asks for something the safe reader refuses to do (a global outside the
    allowlist, a call with unexpected arguments, a zip bomb, a pickle opcode trick)."""


class UnsupportedModel(ConversionError):
    """A mace-torch model class that openmace does not convert (dipoles, polarisability, LES,
    POLAR, anything unknown)."""


SUPPORTED_MODEL_CLASSES = ("ScaleShiftMACE", "MACE")

# --- limits -------------------------------------------------------------------------------------

MAX_PICKLE_BYTES = 1 << 30  # data.pkl of the largest published models is a few MB
MAX_CODE_BYTES = 16 << 20  # one TorchScript source file
MAX_ENTRIES = 1_000_000
MAX_MARK_DEPTH = 1000  # nested MARKs (tuples/lists/dicts being built)
MAX_OBJECT_DEPTH = 200  # nesting of modules (a MACE model: about 8 levels)
MAX_NESTED_ARCHIVES = 3  # archive → codegen blob → fx pickle → legacy storage bytes
MAX_TENSOR_DIMS = 64
# a view may repeat its storage (stride 0), but one far larger than its storage would make any
# caller that copies it allocate without bound
MAX_VIEW_EXPANSION = 16
MAX_VISITS = 1_000_000  # modules and attribute values walked: shared sub-objects are revisited
# a torch archive stores its entries uncompressed: the uncompressed total is the file's size.
# Anything far above that is a zip bomb.
BOMB_RATIO = 4
BOMB_SLACK = 16 << 20


# --- inert stand-ins ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GlobalRef:
    """An allowed global named by the pickle (a class, a function, a type tag), never imported.

    It can be a value (``torch.nn.functional.silu`` as an activation attribute) or the class of
    a :class:`Record`; calling it (``REDUCE``) is refused."""

    module: str
    name: str

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return f"<global {self.qualname}>"


class Record:
    """An object of an allowed class (mace, e3nn, ``torch.nn``, ``torch.fx``, TorchScript), kept
    as data: the class's module and name, the ``NEWOBJ`` arguments and the ``BUILD`` state (for
    an ``nn.Module``: its ``__dict__``). GraphModules rebuilt by a ``torch.fx`` reduce function
    keep that function's name in ``reduced_by`` and their Python source, as an inert string, in
    ``source`` (``import_block`` + ``_code``)."""

    __slots__ = ("module", "name", "args", "state", "reduced_by", "source")

    def __init__(self, module: str, name: str, args: tuple = (), state: Any = None) -> None:
        self.module = module
        self.name = name
        self.args = args
        self.state = state
        self.reduced_by: str | None = None
        self.source: str | None = None

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return f"<record {self.qualname}>"

    # nn.Module attribute lookup: __dict__, then _parameters, _buffers, _modules
    def lookup(self, key: str, default: Any = None) -> Any:
        state = self.state if isinstance(self.state, dict) else {}
        if key in state:
            return state[key]
        for container in ("_parameters", "_buffers", "_modules"):
            values = state.get(container)
            if isinstance(values, dict) and key in values:
                return values[key]
        return default

    def has(self, key: str) -> bool:
        marker = object()
        return self.lookup(key, marker) is not marker

    def children(self) -> list[Any]:
        """The values of ``_modules`` in order (a ModuleList's elements)."""
        modules = self.state.get("_modules") if isinstance(self.state, dict) else None
        return list(modules.values()) if isinstance(modules, dict) else []


class _Storage:
    """A tensor storage read from an archive: a flat CPU tensor of ``numel`` elements."""

    __slots__ = ("dtype", "numel", "flat")

    def __init__(self, dtype: torch.dtype, numel: int, flat: torch.Tensor) -> None:
        self.dtype, self.numel, self.flat = dtype, numel, flat


class _NumpyDtype:
    """``numpy.dtype(spec)`` from a pickle: built from a fixed table, byte order set by BUILD."""

    __slots__ = ("spec", "byteorder")

    def __init__(self, spec: str) -> None:
        self.spec, self.byteorder = spec, "="

    def dtype(self) -> np.dtype:
        dtype = np.dtype(self.spec)
        return dtype.newbyteorder(self.byteorder) if self.byteorder in ("<", ">") else dtype


class _NumpyArray:
    """``numpy.core.multiarray._reconstruct`` from a pickle; BUILD supplies the data."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: np.ndarray | None = None


# --- allowlist ----------------------------------------------------------------------------------

# storage classes named in persistent ids → element type (legacy typed-storage names; what
# torch.save writes for every tensor). torch.cuda.* names are those of files from older torch
# saved on a GPU: the location tag is ignored, everything is built on the CPU.
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexDoubleStorage": torch.complex128,
    "ComplexFloatStorage": torch.complex64,
    "UntypedStorage": torch.uint8,
}
# torch dtypes pickle as ``getattr(torch, name)`` → GLOBAL 'torch float64': inert values
_TORCH_DTYPES = {
    name: getattr(torch, name)
    for name in (
        "float64 float32 float16 bfloat16 int64 int32 int16 int8 uint8 bool complex64 "
        "complex128 double float half long int short"
    ).split()
}
# activation functions a model may hold as an attribute (mace's gate_dict: silu, tanh, abs);
# torch.tanh/abs pickle as getattr(torch._C._VariableFunctionsClass, "tanh")
_TORCH_FUNCTIONS = frozenset(
    "tanh abs sigmoid relu exp log sin cos sqrt square erf softplus gelu silu".split()
)
_NUMPY_DTYPES = frozenset("f8 f4 f2 i8 i4 i2 i1 u8 u4 u2 u1 b1 c16 c8".split())
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
# packages whose classes become records and whose functions become inert references
_RECORD_PACKAGES = ("mace", "e3nn", "torch.nn", "torch.fx")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_STORAGE_KEY = re.compile(r"[A-Za-z0-9_]{1,64}\Z")


def _in_package(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


# --- the unpickler ------------------------------------------------------------------------------


class _Context:
    """What one archive's unpickler needs: its name (for messages), its storages, its depth."""

    def __init__(self, where: str, depth: int, torchscript: bool = False) -> None:
        self.where = where
        self.depth = depth
        self.torchscript = torchscript
        self.storage_loader: Callable[[tuple], _Storage] | None = None

    def unsafe(self, message: str) -> UnsafeModelFile:
        return UnsafeModelFile(f"{self.where}: {message}")


# Opcodes the reader accepts: protocols 2-5 binary data, memo, MARK containers, and the four
# that involve globals or objects (GLOBAL, STACK_GLOBAL, REDUCE, NEWOBJ, BUILD, BINPERSID),
# which are re-implemented below. Refused: INST/OBJ (call a class), NEWOBJ_EX, EXT1/2/4 (the
# copyreg registry), text PERSID, the protocol-0 text forms, and out-of-band buffers.
_ALLOWED_OPCODES = {
    pickle.PROTO, pickle.FRAME, pickle.STOP, pickle.MARK, pickle.POP, pickle.POP_MARK,
    pickle.DUP, pickle.BININT, pickle.BININT1, pickle.BININT2, pickle.LONG1, pickle.LONG4,
    pickle.NONE, pickle.NEWTRUE, pickle.NEWFALSE, pickle.BINFLOAT, pickle.BINUNICODE,
    pickle.SHORT_BINUNICODE, pickle.BINUNICODE8, pickle.BINBYTES, pickle.SHORT_BINBYTES,
    pickle.BINBYTES8, pickle.EMPTY_TUPLE, pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2,
    pickle.TUPLE3, pickle.EMPTY_LIST, pickle.APPEND, pickle.APPENDS, pickle.LIST,
    pickle.EMPTY_DICT, pickle.DICT, pickle.SETITEM, pickle.SETITEMS, pickle.EMPTY_SET,
    pickle.ADDITEMS, pickle.FROZENSET, pickle.BINGET, pickle.LONG_BINGET, pickle.BINPUT,
    pickle.LONG_BINPUT, pickle.MEMOIZE, pickle.GLOBAL, pickle.STACK_GLOBAL, pickle.REDUCE,
    pickle.BUILD, pickle.NEWOBJ, pickle.BINPERSID,
}  # fmt: skip


class _SafeUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """A ``pickle.Unpickler`` whose every opcode is under our control.

    It derives from the pure-Python implementation (``pickle._Unpickler``, the reference the C
    ``pickle.Unpickler`` mirrors) because the C one cannot intercept ``BUILD`` and ``NEWOBJ``:
    here the dispatch table holds only the allowed opcodes, and the object-creating ones are
    re-implemented to create records instead of calling anything."""

    dispatch: dict = {}

    def __init__(self, file: io.BufferedIOBase, context: _Context) -> None:
        super().__init__(file)
        self.context = context

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and isinstance(module, str) and isinstance(name, str):
            # protocol 2 names globals as Python 2 did; map them back (names only) as the
            # standard unpickler does, so that refusals name what would have been called
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        return _find_global(module, name, self.context)

    def persistent_load(self, pid: Any) -> Any:
        if self.context.storage_loader is None:
            raise self.context.unsafe(f"unexpected persistent id {pid!r}")
        return self.context.storage_loader(pid)

    def load_mark(self) -> None:
        if len(self.metastack) >= MAX_MARK_DEPTH:
            raise self.context.unsafe(f"pickle nested deeper than {MAX_MARK_DEPTH} levels")
        pickle._Unpickler.load_mark(self)  # type: ignore[attr-defined]

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if not isinstance(args, tuple):
            raise self.context.unsafe("REDUCE with arguments that are not a tuple")
        if isinstance(func, _Reducer):
            self.stack[-1] = func.call(args, self.context)
        elif isinstance(func, GlobalRef):
            raise self.context.unsafe(
                f"the pickle calls {func.qualname} with arguments {_short(args)}: refused "
                "(allowed classes are rebuilt from their state, never called)"
            )
        else:
            raise self.context.unsafe(f"the pickle calls a {type(func).__name__}: refused")

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        if not isinstance(args, tuple):
            raise self.context.unsafe("NEWOBJ with arguments that are not a tuple")
        if not isinstance(cls, GlobalRef) or not _is_record_class(cls, self.context):
            what = cls.qualname if isinstance(cls, GlobalRef | _Reducer) else type(cls).__name__
            raise self.context.unsafe(f"the pickle creates an object of {what}: refused")
        self.append(Record(cls.module, cls.name, args))

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Record):
            if inst.state is not None:
                raise self.context.unsafe(f"BUILD applied twice to {inst.qualname}")
            if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slots)
                merged: dict = {}
                for part in state:
                    if part is not None and not isinstance(part, dict):
                        raise self.context.unsafe(f"BUILD of {inst.qualname} with bad state")
                    merged.update(part or {})
                state = merged
            inst.state = state
        elif isinstance(inst, _NumpyDtype):
            if not (
                isinstance(state, tuple) and len(state) >= 2 and state[1] in ("<", ">", "|", "=")
            ):
                raise self.context.unsafe("numpy dtype with an unexpected state")
            inst.byteorder = state[1]
        elif isinstance(inst, _NumpyArray):
            inst.value = _numpy_array_from_state(state, self.context)
        else:
            raise self.context.unsafe(
                f"BUILD on a {type(inst).__name__} (only records of allowed classes take state)"
            )


def _dispatch_table() -> dict:
    """Opcode → handler: the standard one for allowed opcodes, ours for the four that create
    objects, and a refusal naming the opcode for all others."""

    def refusal(code: int) -> Callable[[_SafeUnpickler], None]:
        def refuse(self: _SafeUnpickler) -> None:
            raise self.context.unsafe(
                f"pickle opcode {bytes([code])!r} is not allowed (it can call or import code)"
            )

        return refuse

    table = {code: refusal(code) for code in range(256)}
    for opcode in _ALLOWED_OPCODES:
        table[opcode[0]] = pickle._Unpickler.dispatch[opcode[0]]  # type: ignore[attr-defined]
    for opcode, method in (
        (pickle.MARK, _SafeUnpickler.load_mark),
        (pickle.REDUCE, _SafeUnpickler.load_reduce),
        (pickle.NEWOBJ, _SafeUnpickler.load_newobj),
        (pickle.BUILD, _SafeUnpickler.load_build),
    ):
        table[opcode[0]] = method
    return table


_SafeUnpickler.dispatch = _dispatch_table()


def _unpickle(data: bytes | io.BufferedIOBase, context: _Context) -> Any:
    """One pickle, read with :class:`_SafeUnpickler`; any failure is one clear error."""
    file = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    try:
        return _SafeUnpickler(file, context).load()
    except ConversionError:
        raise
    except RecursionError as err:
        raise context.unsafe("pickle nested too deeply") from err
    except MemoryError as err:
        raise context.unsafe("pickle needs more memory than available") from err
    except EOFError as err:
        raise ConversionError(f"{context.where}: truncated pickle") from err
    except Exception as err:  # malformed opcode stream: stack underflow, bad memo index, ...
        raise context.unsafe(f"malformed pickle ({type(err).__name__}: {err})") from err


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


def _short(value: Any) -> str:
    """A bounded description of a value from the file, for messages."""
    return _REPR.repr(value)


# --- globals ------------------------------------------------------------------------------------


class _Reducer:
    """An allowed callable: our own implementation, which checks its arguments."""

    def __init__(self, qualname: str, fn: Callable[[tuple, _Context], Any]) -> None:
        self.qualname, self.fn = qualname, fn

    def call(self, args: tuple, context: _Context) -> Any:
        return self.fn(args, context)

    def __repr__(self) -> str:
        return f"<safe stand-in for {self.qualname}>"


def _bad_args(context: _Context, name: str, args: tuple) -> UnsafeModelFile:
    return context.unsafe(f"{name} called with unexpected arguments {_short(args)}: refused")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ordered_dict(args: tuple, context: _Context) -> OrderedDict:
    # torch writes OrderedDict() then SETITEMS; a list of pairs is the other legitimate form
    if args == ():
        return OrderedDict()
    if len(args) == 1 and isinstance(args[0], list):
        if all(isinstance(p, tuple) and len(p) == 2 and _hashable(p[0]) for p in args[0]):
            return OrderedDict(args[0])
    raise _bad_args(context, "collections.OrderedDict", args)


def _hashable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | type(None) | GlobalRef | Record) or (
        isinstance(value, tuple) and all(_hashable(v) for v in value)
    )


def _set_of(kind: type) -> Callable[[tuple, _Context], Any]:
    def build(args: tuple, context: _Context) -> Any:
        # protocol 2 writes set(list) (a module's _non_persistent_buffers_set)
        if args == ():
            return kind()
        if len(args) == 1 and isinstance(args[0], list) and all(_hashable(v) for v in args[0]):
            return kind(args[0])
        raise _bad_args(context, f"builtins.{kind.__name__}", args)

    return build


def _slice(args: tuple, context: _Context) -> slice:
    # e3nn >= 0.5 keeps slices of its weights
    if 1 <= len(args) <= 3 and all(a is None or _is_int(a) for a in args):
        return slice(*args)
    raise _bad_args(context, "builtins.slice", args)


def _complex(args: tuple, context: _Context) -> complex:
    if len(args) == 2 and all(isinstance(a, float | int) for a in args):
        return complex(*args)
    raise _bad_args(context, "builtins.complex", args)


def _codecs_encode(args: tuple, context: _Context) -> bytes:
    # protocol 2 writes bytes as _codecs.encode(text, "latin1") (e3nn's TorchScript blobs)
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return args[0].encode("latin1")
    raise _bad_args(context, "_codecs.encode", args)


def _getattr(args: tuple, context: _Context) -> GlobalRef:
    # torch.tanh / torch.abs pickle as getattr(torch._C._VariableFunctionsClass, "tanh"): that
    # exact form, for a fixed set of element-wise functions, is the only getattr accepted
    if (
        len(args) == 2
        and args[0] == GlobalRef("torch._C", "_VariableFunctionsClass")
        and args[1] in _TORCH_FUNCTIONS
    ):
        return GlobalRef("torch", args[1])
    raise context.unsafe(
        f"builtins.getattr{_short(args)}: refused (attribute lookups can reach code)"
    )


def _torch_device(args: tuple, context: _Context) -> str:
    if 1 <= len(args) <= 2 and isinstance(args[0], str) and len(args[0]) < 64:
        if len(args) == 1 or _is_int(args[1]):
            return args[0] if len(args) == 1 else f"{args[0]}:{args[1]}"
    raise _bad_args(context, "torch.device", args)


def _torch_size(args: tuple, context: _Context) -> tuple:
    if len(args) == 1 and isinstance(args[0], tuple) and all(_is_int(s) for s in args[0]):
        return args[0]
    raise _bad_args(context, "torch.Size", args)


def _check_empty_hooks(hooks: Any, context: _Context, name: str, args: tuple) -> None:
    if hooks is not None and not (isinstance(hooks, dict) and not hooks):
        raise _bad_args(context, name, args)


def _rebuild_tensor(
    context: _Context, name: str, args: tuple, storage: Any, offset: Any, size: Any, stride: Any
) -> torch.Tensor:
    if not isinstance(storage, _Storage):
        raise _bad_args(context, name, args)
    if not (
        _is_int(offset)
        and isinstance(size, tuple)
        and isinstance(stride, tuple)
        and len(size) == len(stride) <= MAX_TENSOR_DIMS
        and all(_is_int(s) and s >= 0 for s in size + stride)
        and offset >= 0
    ):
        raise _bad_args(context, name, args)
    numel = math.prod(size)
    if numel and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.numel:
        raise context.unsafe(
            f"{name}: a tensor of shape {list(size)} (offset {offset}, strides {list(stride)}) "
            f"reaches beyond its storage of {storage.numel} elements"
        )
    if numel > MAX_VIEW_EXPANSION * storage.numel + (1 << 20):
        raise context.unsafe(
            f"{name}: a tensor of {numel} elements viewing a storage of {storage.numel}: refused"
        )
    if not numel:
        return torch.empty(size, dtype=storage.dtype)
    return torch.as_strided(storage.flat, size, stride, offset)


def _rebuild_tensor_v2(args: tuple, context: _Context) -> torch.Tensor:
    # (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
    name = "torch._utils._rebuild_tensor_v2"
    if len(args) not in (6, 7) or not isinstance(args[4], bool):
        raise _bad_args(context, name, args)
    _check_empty_hooks(args[5], context, name, args)
    if len(args) == 7 and args[6] not in (None, {}):
        raise _bad_args(context, name, args)
    return _rebuild_tensor(context, name, args, *args[:4])


def _rebuild_tensor_v3(args: tuple, context: _Context) -> torch.Tensor:
    # (storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype[, metadata])
    name = "torch._utils._rebuild_tensor_v3"
    if len(args) not in (7, 8) or not isinstance(args[4], bool):
        raise _bad_args(context, name, args)
    _check_empty_hooks(args[5], context, name, args)
    if len(args) == 8 and args[7] not in (None, {}):
        raise _bad_args(context, name, args)
    if not isinstance(args[0], _Storage) or args[6] != args[0].dtype:
        raise _bad_args(context, name, args)
    return _rebuild_tensor(context, name, args, *args[:4])


def _rebuild_parameter(args: tuple, context: _Context) -> torch.Tensor:
    # (data, requires_grad, backward_hooks): the tensor; parameters are told from buffers by the
    # container they sit in (_parameters), as Module.state_dict does
    name = "torch._utils._rebuild_parameter"
    if len(args) == 3 and isinstance(args[0], torch.Tensor) and isinstance(args[1], bool):
        _check_empty_hooks(args[2], context, name, args)
        return args[0]
    raise _bad_args(context, name, args)


def _rebuild_parameter_with_state(args: tuple, context: _Context) -> torch.Tensor:
    name = "torch._utils._rebuild_parameter_with_state"
    if len(args) == 4 and args[3] in (None, {}):
        return _rebuild_parameter(args[:3], context)
    raise _bad_args(context, name, args)


def _rebuild_from_type_v2(args: tuple, context: _Context) -> torch.Tensor:
    # (func, new_type, args, state): a plain tensor or parameter without extra state
    name = "torch._tensor._rebuild_from_type_v2"
    if (
        len(args) == 4
        and isinstance(args[0], _Reducer)
        and args[0].fn in (_rebuild_tensor_v2, _rebuild_tensor_v3)
        and args[1] in (GlobalRef("torch", "Tensor"), GlobalRef("torch.nn.parameter", "Parameter"))
        and isinstance(args[2], tuple)
        and args[3] in (None, {})
    ):
        return args[0].call(args[2], context)
    raise _bad_args(context, name, args)


def _graph_module_reducer(name: str, body_index: int, arity: tuple[int, ...]) -> _Reducer:
    """torch.fx reduce functions: the call is recorded, the source kept as a string, and
    nothing is traced, compiled or executed."""

    def reduce(args: tuple, context: _Context) -> Record:
        if len(args) not in arity or not isinstance(args[body_index], dict):
            raise _bad_args(context, name, args)
        body = args[body_index]
        if not all(isinstance(k, str) for k in body):
            raise _bad_args(context, name, args)
        record = Record("torch.fx.graph_module", "GraphModule", (), body)
        record.reduced_by = name
        code = body.get("_code")
        imports = [a for a in args if isinstance(a, str)]
        record.source = "\n".join([*imports, code if isinstance(code, str) else ""])
        return record

    return _Reducer(name, reduce)


def _restore_type_tag(args: tuple, context: _Context) -> Any:
    # TorchScript pickles: (value, "Dict[int, int]") → the value
    if len(args) == 2 and isinstance(args[1], str):
        return args[0]
    raise _bad_args(context, "torch.jit._pickle.restore_type_tag", args)


def _build_list(kind: type | tuple[type, ...]) -> Callable[[tuple, _Context], list]:
    def build(args: tuple, context: _Context) -> list:
        if len(args) == 1 and isinstance(args[0], list):
            if all(isinstance(v, kind) for v in args[0]):
                return args[0]
        raise _bad_args(context, "torch.jit._pickle.build_*list", args)

    return build


def _numpy_dtype(args: tuple, context: _Context) -> _NumpyDtype:
    if len(args) == 3 and args[0] in _NUMPY_DTYPES and all(isinstance(a, bool) for a in args[1:]):
        return _NumpyDtype(args[0])
    raise _bad_args(context, "numpy.dtype", args)


def _numpy_scalar(args: tuple, context: _Context) -> Any:
    if len(args) == 2 and isinstance(args[0], _NumpyDtype) and isinstance(args[1], bytes):
        dtype = args[0].dtype()
        if len(args[1]) == dtype.itemsize:
            return np.frombuffer(args[1], dtype=dtype)[0].item()
    raise _bad_args(context, "numpy scalar", args)


def _numpy_reconstruct(args: tuple, context: _Context) -> _NumpyArray:
    if (
        len(args) == 3
        and args[0] in (GlobalRef(m, "ndarray") for m in ("numpy", *_NUMPY_MODULES))
        and args[1] == (0,)
        and args[2] in (b"b", "b")
    ):
        return _NumpyArray()
    raise _bad_args(context, "numpy.core.multiarray._reconstruct", args)


def _numpy_array_from_state(state: Any, context: _Context) -> np.ndarray:
    # (version, shape, dtype, is_fortran, raw bytes)
    if (
        isinstance(state, tuple)
        and len(state) == 5
        and isinstance(state[1], tuple)
        and all(_is_int(s) and s >= 0 for s in state[1])
        and isinstance(state[2], _NumpyDtype)
        and isinstance(state[3], bool)
        and isinstance(state[4], bytes)
    ):
        dtype = state[2].dtype()
        if len(state[4]) == math.prod(state[1]) * dtype.itemsize:
            flat = np.frombuffer(state[4], dtype=dtype).copy()
            return flat.reshape(state[1], order="F" if state[3] else "C")
    raise context.unsafe(f"numpy array with an unexpected state {_short(state)}")


def _load_from_bytes(args: tuple, context: _Context) -> _Storage:
    # e3nn >= 0.5.2 pickles its fx GraphModules with pickle.dumps: their storages are nested
    # legacy-format torch.save bytes
    if len(args) == 1 and isinstance(args[0], bytes):
        return _legacy_storage(args[0], context)
    raise _bad_args(context, "torch.storage._load_from_bytes", args)


_REDUCERS: dict[tuple[str, str], _Reducer] = {
    key: _Reducer(f"{key[0]}.{key[1]}", fn)
    for key, fn in {
        ("collections", "OrderedDict"): _ordered_dict,
        ("builtins", "set"): _set_of(set),
        ("builtins", "frozenset"): _set_of(frozenset),
        ("builtins", "slice"): _slice,
        ("builtins", "complex"): _complex,
        ("builtins", "getattr"): _getattr,
        ("_codecs", "encode"): _codecs_encode,
        ("torch", "device"): _torch_device,
        ("torch", "Size"): _torch_size,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch.storage", "_load_from_bytes"): _load_from_bytes,
        ("numpy", "dtype"): _numpy_dtype,
        **{(m, "scalar"): _numpy_scalar for m in _NUMPY_MODULES},
        **{(m, "_reconstruct"): _numpy_reconstruct for m in _NUMPY_MODULES},
    }.items()
}
for _name, _body_index, _arity in (
    ("reduce_graph_module", 0, (2,)),  # (body, import_block)
    ("reduce_package_graph_module", 1, (3,)),  # (importer, body, generated_module_name)
    ("reduce_deploy_graph_module", 1, (3,)),  # (importer, body, import_block)
    ("_deserialize_graph_module", 1, (2, 3)),  # (forward, body[, graph_module_cls])
):
    _REDUCERS[("torch.fx.graph_module", _name)] = _graph_module_reducer(
        f"torch.fx.graph_module.{_name}", _body_index, _arity
    )
_TORCHSCRIPT_REDUCERS = {
    ("torch.jit._pickle", "restore_type_tag"): _Reducer(
        "torch.jit._pickle.restore_type_tag", _restore_type_tag
    ),
    ("torch.jit._pickle", "build_intlist"): _Reducer("build_intlist", _build_list(int)),
    ("torch.jit._pickle", "build_doublelist"): _Reducer("build_doublelist", _build_list(float)),
    ("torch.jit._pickle", "build_boollist"): _Reducer("build_boollist", _build_list(bool)),
    ("torch.jit._pickle", "build_tensorlist"): _Reducer(
        "build_tensorlist", _build_list(torch.Tensor)
    ),
}


def _find_global(module: str, name: str, context: _Context) -> Any:
    """The allowlist: what each global the pickle names becomes. Nothing is imported."""
    if not (isinstance(module, str) and isinstance(name, str)):
        raise context.unsafe("a global with a non-string name")
    qualname = f"{module}.{name}"
    if not _MODULE_NAME.match(module) or not _IDENTIFIER.match(name):
        raise context.unsafe(f"refused global {qualname!r} (not a plain module and name)")
    if (module, name) in _REDUCERS:
        return _REDUCERS[(module, name)]
    if context.torchscript and (module, name) in _TORCHSCRIPT_REDUCERS:
        return _TORCHSCRIPT_REDUCERS[(module, name)]
    if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
        return GlobalRef("torch", name)  # storage type named in persistent ids
    if module == "torch" and name in _TORCH_DTYPES:
        return _TORCH_DTYPES[name]
    if (module, name) in {
        ("torch", "Tensor"),  # the type tag of _rebuild_from_type_v2
        ("torch._C", "_VariableFunctionsClass"),  # only as getattr's first argument
        ("numpy", "ndarray"),  # only as _reconstruct's first argument
        *((m, "ndarray") for m in _NUMPY_MODULES),
    }:
        return GlobalRef(module, name)
    if module in ("torch", "torch._C._nn") and name in _TORCH_FUNCTIONS:
        return GlobalRef(module, name)  # an activation function held as an attribute
    if name.startswith("__") and name.endswith("__"):
        raise context.unsafe(f"refused global {qualname} (a dunder name)")
    if _in_package(module, _RECORD_PACKAGES):
        # mace/e3nn/torch.nn classes → records; their functions (activations, e3nn's
        # _spherical_harmonics, torch.fx's Tracer class) → inert references
        return GlobalRef(module, name)
    if context.torchscript and _in_package(module, ("__torch__",)):
        return GlobalRef(module, name)  # classes of a TorchScript archive's own code
    hint = ""
    if _in_package(module, ("cuequivariance", "cuequivariance_torch", "cuequivariance_ops_torch")):
        hint = (
            " (a model saved with cuequivariance acceleration: convert it back to e3nn with "
            "mace-torch's mace_cueq_to_e3nn first)"
        )
    raise context.unsafe(
        f"refused global {qualname}: outside the allowlist (mace, e3nn, torch.nn, torch.fx "
        f"classes and torch's tensor rebuilding){hint}"
    )


def _is_record_class(ref: GlobalRef, context: _Context) -> bool:
    if _in_package(ref.module, _RECORD_PACKAGES):
        return True
    return context.torchscript and _in_package(ref.module, ("__torch__",))


# --- archives -----------------------------------------------------------------------------------


class _Archive:
    """A torch zip archive (``torch.save`` or ``torch.jit.save``), checked before reading."""

    def __init__(self, source: str | Path | bytes, where: str, depth: int) -> None:
        self.where = where
        self.depth = depth
        if depth > MAX_NESTED_ARCHIVES:
            raise UnsafeModelFile(f"{where}: archives nested more than {MAX_NESTED_ARCHIVES} deep")
        file: Any
        if isinstance(source, bytes):
            size, file, head = len(source), io.BytesIO(source), source[:4]
        else:
            size, file = Path(source).stat().st_size, str(source)
            with open(source, "rb") as fh:
                head = fh.read(4)
        self.size = size
        try:
            self.zip = zipfile.ZipFile(file)
        except zipfile.BadZipFile as err:
            if head[:1] == b"\x80":
                raise ConversionError(
                    f"{where}: a legacy (pre-zip) torch file: not supported; save it again with "
                    "torch >= 1.6 (torch.save without _use_new_zipfile_serialization=False)"
                ) from err
            if head == b"PK\x03\x04":
                raise ConversionError(f"{where}: truncated or corrupt zip archive ({err})") from err
            raise ConversionError(f"{where}: not a torch zip archive ({err})") from err
        except (OSError, ValueError, EOFError, RuntimeError, struct.error) as err:
            raise ConversionError(f"{where}: unreadable archive ({err})") from err
        infos = self.zip.infolist()
        if len(infos) > MAX_ENTRIES:
            raise UnsafeModelFile(f"{where}: {len(infos)} archive entries")
        self.entries: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if info.filename in self.entries:
                raise UnsafeModelFile(f"{where}: duplicate archive entry {info.filename}")
            self.entries[info.filename] = info
        total = sum(info.file_size for info in infos)
        if total > BOMB_RATIO * size + BOMB_SLACK:
            raise UnsafeModelFile(
                f"{where}: the archive claims {total / 2**20:.0f} MiB uncompressed for a "
                f"{size / 2**20:.1f} MiB file (a zip bomb?): refused"
            )
        available = available_bytes()
        if available is not None and total > available:
            raise UnsafeModelFile(
                f"{where}: the archive claims {total / 2**30:.1f} GiB uncompressed, more than "
                f"the {available / 2**30:.1f} GiB of memory available: refused"
            )
        prefixes = {n.split("/", 1)[0] for n in self.entries if n.count("/") == 1}
        candidates = [p for p in prefixes if f"{p}/data.pkl" in self.entries]
        if len(candidates) != 1:
            raise ConversionError(
                f"{where}: not a torch archive (expected one <name>/data.pkl, found "
                f"{len(candidates)})"
            )
        self.prefix = candidates[0]
        byteorder = self.read_small("byteorder", default=b"little").decode("ascii", "replace")
        if byteorder not in ("little", "big"):
            raise ConversionError(f"{where}: unknown byte order {byteorder!r}")
        self.big_endian = byteorder == "big"
        self.storages: dict[str, _Storage] = {}

    def read_small(self, name: str, default: bytes) -> bytes:
        info = self.entries.get(f"{self.prefix}/{name}")
        if info is None:
            return default
        if info.file_size > 64:
            raise UnsafeModelFile(f"{self.where}: {info.filename} of {info.file_size} bytes")
        return self.read(info)

    def read(self, info: zipfile.ZipInfo, limit: int | None = None) -> bytearray:
        """An entry's bytes, after checking its declared size (which zipfile enforces)."""
        if limit is not None and info.file_size > limit:
            raise UnsafeModelFile(
                f"{self.where}: archive entry {info.filename} claims {info.file_size} bytes "
                f"(limit {limit}): refused"
            )
        buffer = bytearray(info.file_size)
        try:
            with self.zip.open(info) as fh:
                view, got = memoryview(buffer), 0
                while got < info.file_size:
                    n = fh.readinto(view[got:])
                    if not n:
                        break
                    got += n
                if got != info.file_size or fh.read(1):
                    raise ConversionError(
                        f"{self.where}: archive entry {info.filename} is truncated"
                    )
        except ConversionError:
            raise
        except (
            zipfile.BadZipFile,  # a bad CRC, a damaged header
            RuntimeError,  # encrypted entries, unsupported compression
            EOFError,
            OSError,
            ValueError,
            zlib.error,
            struct.error,
        ) as err:
            raise ConversionError(
                f"{self.where}: truncated or corrupt archive entry {info.filename} ({err})"
            ) from err
        return buffer

    def data_pickle(self) -> bytearray:
        return self.read(self.entries[f"{self.prefix}/data.pkl"], MAX_PICKLE_BYTES)

    def storage(self, pid: Any) -> _Storage:
        """persistent_load: ``('storage', storage type, key, location, numel)``."""
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], GlobalRef)
            and pid[1].module == "torch"
            and pid[1].name in _STORAGE_DTYPES
            and isinstance(pid[2], str)
            and _STORAGE_KEY.match(pid[2])
            and isinstance(pid[3], str)
            and _is_int(pid[4])
            and pid[4] >= 0
        ):
            raise UnsafeModelFile(f"{self.where}: unexpected persistent id {_short(pid)}")
        dtype, key, numel = _STORAGE_DTYPES[pid[1].name], pid[2], pid[4]
        cached = self.storages.get(key)
        if cached is not None:
            if cached.dtype != dtype or cached.numel != numel:
                raise UnsafeModelFile(f"{self.where}: storage {key} used with two types")
            return cached
        info = self.entries.get(f"{self.prefix}/data/{key}")
        if info is None:
            raise ConversionError(f"{self.where}: missing storage data/{key} in the archive")
        itemsize = torch.empty((), dtype=dtype).element_size()
        if info.file_size != numel * itemsize:
            raise UnsafeModelFile(
                f"{self.where}: storage data/{key} holds {info.file_size} bytes where "
                f"{numel} {dtype} elements need {numel * itemsize}: refused"
            )
        raw = self.read(info)
        flat = _flat_tensor(raw, dtype, numel, self.big_endian, self.where)
        storage = _Storage(dtype, numel, flat)
        self.storages[key] = storage
        return storage

    def code_file(self, module: str) -> str | None:
        """The TorchScript source file of ``__torch__.a.b`` (``code/__torch__/a/b.py``)."""
        info = self.entries.get(f"{self.prefix}/code/{module.replace('.', '/')}.py")
        if info is None:
            return None
        return self.read(info, MAX_CODE_BYTES).decode("utf-8", "replace")


def _flat_tensor(
    raw: bytearray, dtype: torch.dtype, numel: int, big_endian: bool, where: str
) -> torch.Tensor:
    if numel == 0:
        return torch.empty(0, dtype=dtype)
    flat = torch.frombuffer(raw, dtype=torch.uint8)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if big_endian and itemsize > 1:
        flat = flat.reshape(numel, itemsize).flip(1).reshape(-1).clone()
    if dtype == torch.bool and bool((flat > 1).any()):
        raise UnsafeModelFile(f"{where}: a bool storage holds values other than 0 and 1")
    return flat.view(dtype)


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _legacy_storage(data: bytes, parent: _Context) -> _Storage:
    """``torch.storage._load_from_bytes``: one storage in torch's legacy format (five pickles:
    magic, protocol, system info, the storage's persistent id, the key list; then the data)."""
    where = f"{parent.where} (nested storage bytes)"
    context = _Context(where, parent.depth + 1)
    if context.depth > MAX_NESTED_ARCHIVES:
        raise UnsafeModelFile(f"{where}: nested more than {MAX_NESTED_ARCHIVES} deep")
    file = io.BytesIO(data)
    for expected in (_LEGACY_MAGIC, _LEGACY_PROTOCOL):
        value = _unpickle(file, context)
        if not (_is_int(value) and value == expected):
            raise ConversionError(f"{where}: not a torch legacy storage")
    info = _unpickle(file, context)
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        raise ConversionError(f"{where}: unsupported system info {_short(info)}")
    pending: list[tuple] = []

    def load(pid: Any) -> Any:
        if not (
            isinstance(pid, tuple)
            and len(pid) == 6
            and pid[0] == "storage"
            and isinstance(pid[1], GlobalRef)
            and pid[1].module == "torch"
            and pid[1].name in _STORAGE_DTYPES
            and isinstance(pid[2], str)
            and isinstance(pid[3], str)
            and _is_int(pid[4])
            and pid[4] >= 0
            and pid[5] is None
            and not pending
        ):
            raise UnsafeModelFile(f"{where}: unexpected persistent id {_short(pid)}")
        pending.append(pid)
        return pid

    context.storage_loader = load
    pid = _unpickle(file, context)
    keys = _unpickle(file, context)
    if not pending or pid is not pending[0] or keys != [pid[2]]:
        raise ConversionError(f"{where}: not a single torch storage")
    dtype, numel = _STORAGE_DTYPES[pid[1].name], pid[4]
    itemsize = torch.empty((), dtype=dtype).element_size()
    header = file.read(8)
    if len(header) != 8 or struct.unpack("<q", header)[0] != numel:
        raise ConversionError(f"{where}: storage size does not match its header")
    raw = bytearray(file.read(numel * itemsize))
    if len(raw) != numel * itemsize:
        raise ConversionError(f"{where}: truncated storage")
    return _Storage(dtype, numel, _flat_tensor(raw, dtype, numel, False, where))


# --- reading the module tree --------------------------------------------------------------------


@dataclass
class ModelRecords:
    """A ``.model`` file read as data: the root record and where it came from."""

    root: Any
    path: str
    archive: _Archive


def load_records(path: str | Path) -> ModelRecords:
    """Read a ``torch.save`` archive into :class:`Record` objects without running its code.

    Raises :class:`UnsafeModelFile` for anything outside what mace-torch files contain and
    :class:`~openmace.io.mace_torch.ConversionError` for damaged files."""
    where = str(path)
    if not Path(path).is_file():
        raise ConversionError(f"{where}: no such file")
    archive = _Archive(path, where, depth=0)
    prefix = f"{archive.prefix}/"
    if f"{prefix}constants.pkl" in archive.entries or any(
        name.startswith(f"{prefix}code/") for name in archive.entries
    ):
        archive.zip.close()
        raise UnsupportedModel(
            f"{where}: a TorchScript (compiled) model, such as mace-torch's LAMMPS export: "
            "openmace reads the model file mace-torch trains and saves (torch.save)"
        )
    context = _Context(where, depth=0)
    context.storage_loader = archive.storage
    try:
        root = _unpickle(archive.data_pickle(), context)
    finally:
        archive.zip.close()
    logger.debug("%s: read %d storages", where, len(archive.storages))
    return ModelRecords(root, where, archive)


def _module_state(record: Record, where: str) -> dict:
    state = record.state
    if not isinstance(state, dict) or not isinstance(state.get("_modules", {}), dict):
        raise UnsupportedModel(f"{where}: {record.qualname} is not a torch module")
    return state


def _check_no_hooks(record: Record, state: dict, where: str) -> None:
    for hooks in ("_state_dict_hooks", "_state_dict_pre_hooks"):
        value = state.get(hooks)
        if value:
            raise UnsupportedModel(
                f"{where}: {record.qualname} has state-dict hooks ({hooks}): a customised "
                "state dict is not supported"
            )


def _tensor(value: Any, key: str, where: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise UnsafeModelFile(f"{where}: {key} is a {type(value).__name__}, not a tensor")
    return value


def state_dict_from_records(records: ModelRecords) -> dict[str, torch.Tensor]:
    """What ``module.state_dict()`` of the unpickled module returns, in the same order: for each
    module its parameters, its persistent buffers, then its children (e3nn's TorchScript
    submodules, which its ``__setstate__`` appends last, read from their archives)."""
    out: dict[str, torch.Tensor] = {}
    _collect(records.root, "", out, records.path, 0, set(), _Budget(records.path))
    return out


class _Budget:
    """Counts the objects a walk visits: a module shared by many parents (a DAG) is visited once
    per path, as ``Module.state_dict`` does, which a hostile file can make exponential."""

    def __init__(self, where: str, limit: int | None = None) -> None:
        self.where, self.limit = where, limit or MAX_VISITS
        self.left = self.limit

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise UnsafeModelFile(f"{self.where}: more than {self.limit} objects to visit")


def _collect(
    record: Any, prefix: str, out: dict, where: str, depth: int, path: set, budget: _Budget
) -> None:
    budget.spend()
    if depth > MAX_OBJECT_DEPTH:
        raise UnsafeModelFile(f"{where}: modules nested deeper than {MAX_OBJECT_DEPTH}")
    if not isinstance(record, Record):
        raise UnsafeModelFile(f"{where}: {prefix or 'the root'} is a {type(record).__name__}")
    if id(record) in path:
        raise UnsafeModelFile(f"{where}: module {prefix} contains itself")
    path = path | {id(record)}
    state = _module_state(record, where)
    _check_no_hooks(record, state, where)
    params = state.get("_parameters") or {}
    buffers = state.get("_buffers") or {}
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    if not isinstance(params, dict) or not isinstance(buffers, dict):
        raise UnsafeModelFile(f"{where}: {record.qualname} with malformed parameters")
    for name, value in params.items():
        if value is not None:
            out[prefix + name] = _tensor(value, prefix + name, where)
    for name, value in buffers.items():
        if value is not None and name not in non_persistent:
            out[prefix + name] = _tensor(value, prefix + name, where)
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _collect(child, f"{prefix}{name}.", out, where, depth + 1, path, budget)
    codegen = state.get("__codegen__")
    if codegen is not None:
        if not isinstance(codegen, dict):
            raise UnsafeModelFile(f"{where}: {record.qualname} with a malformed __codegen__")
        for name, blob in codegen.items():
            sub = f"{where} (codegen blob {prefix}{name})"
            scripted = _codegen_module(name, blob, sub)
            _collect_torchscript(scripted, f"{prefix}{name}.", out, sub, depth + 1, budget)


def _codegen_module(name: Any, blob: Any, where: str) -> Any:
    """An e3nn ``__codegen__`` entry: TorchScript bytes (e3nn <= 0.5.1) or ``(kind, bytes)``
    with kind ``"torchscript"`` or ``"fx"`` (a pickled GraphModule, e3nn >= 0.5.2). The bytes
    are read as data; a TorchScript archive is never loaded."""
    if not isinstance(name, str):
        raise UnsafeModelFile(f"{where}: malformed __codegen__ entry")
    kind = "torchscript"
    if isinstance(blob, tuple) and len(blob) == 2 and isinstance(blob[0], str):
        kind, blob = blob
    if not isinstance(blob, bytes) or kind not in ("torchscript", "fx"):
        raise UnsafeModelFile(f"{where}: malformed __codegen__ entry ({kind!r})")
    if kind == "fx":
        context = _Context(where, depth=1)
        module = _unpickle(blob, context)
        if not (isinstance(module, Record) and module.reduced_by is not None):
            raise UnsafeModelFile(f"{where}: an fx codegen blob that is not a GraphModule")
        return module
    archive = _Archive(bytes(blob), where, depth=1)
    context = _Context(where, depth=1, torchscript=True)
    context.storage_loader = archive.storage
    root = _unpickle(archive.data_pickle(), context)
    return _TorchScriptModule(root, archive, where)


class _TorchScriptModule:
    """A TorchScript archive's module object with its class declarations (read as text)."""

    def __init__(self, root: Any, archive: _Archive, where: str) -> None:
        self.root, self.archive, self.where = root, archive, where
        self.classes: dict[str, tuple[list[str], list[str], bool]] = {}

    def declaration(self, record: Record) -> tuple[list[str], list[str], bool]:
        """(parameters, buffers, is a module) of a TorchScript class, from ``__parameters__``
        and ``__buffers__`` in its generated source (parsed as text, never compiled)."""
        key = record.qualname
        if key not in self.classes:
            text = self.archive.code_file(record.module)
            if text is None:
                raise ConversionError(f"{self.where}: no source for {key} in the archive")
            self.classes[key] = _parse_declaration(text, record.name, self.where)
        return self.classes[key]


_CLASS_LINE = re.compile(r"^class (\w+)\((\w+)\):\s*$", re.M)
_NAMES_LINE = re.compile(r"^  (__parameters__|__buffers__) = \[(.*)\]\s*$", re.M)
_QUOTED = re.compile(r'"([A-Za-z_][A-Za-z0-9_]*)"')


def _parse_declaration(text: str, name: str, where: str) -> tuple[list[str], list[str], bool]:
    matches = list(_CLASS_LINE.finditer(text))
    for i, match in enumerate(matches):
        if match.group(1) != name:
            continue
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        block = text[match.end() : end]
        found = {m.group(1): _QUOTED.findall(m.group(2)) for m in _NAMES_LINE.finditer(block)}
        is_module = match.group(2) == "Module"
        return found.get("__parameters__", []), found.get("__buffers__", []), is_module
    raise ConversionError(f"{where}: class {name} not declared in its TorchScript source")


def _collect_torchscript(
    module: Any, prefix: str, out: dict, where: str, depth: int, budget: _Budget
) -> None:
    if isinstance(module, Record):  # an fx GraphModule (e3nn >= 0.5.2 eager codegen)
        _collect(module, prefix, out, where, depth, set(), budget)
        return
    if not isinstance(module, _TorchScriptModule) or not isinstance(module.root, Record):
        raise UnsafeModelFile(f"{where}: the TorchScript archive does not hold a module")
    _collect_script_record(module, module.root, prefix, out, depth, set(), budget)


def _collect_script_record(
    module: _TorchScriptModule,
    record: Record,
    prefix: str,
    out: dict,
    depth: int,
    path: set,
    budget: _Budget,
) -> None:
    where = module.where
    budget.spend()
    if depth > MAX_OBJECT_DEPTH or id(record) in path:
        raise UnsafeModelFile(f"{where}: TorchScript modules nested too deeply or in a cycle")
    path = path | {id(record)}
    if not isinstance(record.state, dict):
        raise UnsafeModelFile(f"{where}: TorchScript object {record.qualname} without state")
    params, buffers, _ = module.declaration(record)
    for names in (params, buffers):
        for name in names:
            value = record.state.get(name)
            if value is not None:
                out[prefix + name] = _tensor(value, prefix + name, where)
    for name, value in record.state.items():
        if isinstance(value, Record) and module.declaration(value)[2]:
            _collect_script_record(module, value, f"{prefix}{name}.", out, depth + 1, path, budget)


# --- configuration ------------------------------------------------------------------------------


def _irreps_str(value: Any, where: str) -> str:
    """e3nn ``Irreps`` (records of ``(_MulIr(mul, Irrep(l, p)), ...)``) or a string → "4x0e+..."."""
    if isinstance(value, str):
        return value
    items = _irreps_items(value, where)
    return "+".join(f"{mul}x{l}{'e' if p == 1 else 'o'}" for mul, l, p in items)


def _irreps_items(value: Any, where: str) -> list[tuple[int, int, int]]:
    def unwrap(v: Any) -> Any:
        while isinstance(v, Record) and v.module.startswith("e3nn") and len(v.args) == 1:
            v = v.args[0]
        return v

    seq = unwrap(value)
    if not isinstance(seq, tuple | list):
        raise ConversionError(f"{where}: cannot read irreps from {_short(value)}")
    items = []
    for entry in seq:
        entry = unwrap(entry)
        if isinstance(entry, tuple | list) and len(entry) == 2:
            mul, ir = entry[0], unwrap(entry[1])
            if _is_int(mul) and isinstance(ir, tuple | list) and len(ir) == 2:
                if _is_int(ir[0]) and ir[1] in (1, -1):
                    items.append((mul, ir[0], ir[1]))
                    continue
        raise ConversionError(f"{where}: cannot read irreps from {_short(value)}")
    return items


_IRREP_TERM = re.compile(r"(?:(\d+)x)?(\d+)([eo])\Z")


def _parse_irreps(text: str, where: str) -> list[tuple[int, int, int]]:
    """ "4x0e+4x1o" → [(4, 0, 1), (4, 1, -1)] (e3nn's string form)."""
    items = []
    for term in text.replace(" ", "").split("+"):
        match = _IRREP_TERM.match(term)
        if term and not match:
            raise ConversionError(f"{where}: cannot read irreps {text!r}")
        if match:
            mul, l, p = match.groups()
            items.append((int(mul or 1), int(l), 1 if p == "e" else -1))
    return items


def _count_scalars(value: Any, where: str) -> int:
    """``o3.Irreps.count((0, 1))``: the multiplicity of 0e."""
    items = _parse_irreps(value, where) if isinstance(value, str) else _irreps_items(value, where)
    return sum(mul for mul, l, p in items if l == 0 and p == 1)


def _jsonable(value: Any, where: str, depth: int = 0, budget: _Budget | None = None) -> Any:
    """Plain data (numbers, strings, lists, dicts; tensors and arrays as lists) for JSON."""
    budget = budget or _Budget(where, limit=100_000)
    budget.spend()
    if depth > 32:
        raise UnsafeModelFile(f"{where}: attribute nested too deeply")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor | np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v, where, depth + 1, budget) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, where, depth + 1, budget) for v in value]
    raise ConversionError(f"{where}: attribute value {_short(value)} is not plain data")


def _number(value: Any, where: str, what: str) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.reshape(()).item()
    if isinstance(value, np.generic | np.ndarray) and np.size(value) == 1:
        return np.asarray(value).reshape(()).item()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    raise ConversionError(f"{where}: {what} is {_short(value)}, not a number")


def _child(record: Any, name: str, where: str, what: str | None = None) -> Record:
    value = record.lookup(name) if isinstance(record, Record) else None
    if not isinstance(value, Record):
        raise ConversionError(f"{where}: the model has no {what or name}")
    return value


def _items(record: Record, where: str, what: str) -> list[Record]:
    children = record.children()
    if not children or not all(isinstance(c, Record) for c in children):
        raise ConversionError(f"{where}: the model's {what} are missing or malformed")
    return children


_RADIAL_TYPES = {
    "BesselBasis": "bessel",
    "GaussianBasis": "gaussian",
    "ChebychevBasis": "chebyshev",
}
_TRANSFORMS = {"AgnesiTransform": "Agnesi", "SoftTransform": "Soft"}


def config_from_records(records: ModelRecords) -> dict:
    """The configuration mace-torch's ``extract_config_mace_model`` returns for this module, in
    JSON form (class and function names as strings, irreps as e3nn strings, arrays as lists),
    plus ``model_class`` and ``keep_last_layer_irreps``, and ``correlation`` per layer where
    layers differ. Attributes absent from files of older mace-torch versions take the defaults
    mace-torch assumes for them."""
    model, where = records.root, records.path
    if not isinstance(model, Record):
        raise UnsupportedModel(
            f"{where}: holds a {type(model).__name__}, not a pickled mace-torch model (a "
            "checkpoint or a state dict?)"
        )
    if not model.module.startswith("mace.") or model.name not in SUPPORTED_MODEL_CLASSES:
        raise UnsupportedModel(
            f"{where}: model class {model.qualname} is not supported (supported: "
            f"{', '.join(SUPPORTED_MODEL_CLASSES)} energy models)"
        )
    _module_state(model, where)
    radial = _child(model, "radial_embedding", where)
    basis = _child(radial, "bessel_fn", where, "radial basis")
    interactions = _items(_child(model, "interactions", where), where, "interactions")
    products = _items(_child(model, "products", where), where, "products")
    readouts = _items(_child(model, "readouts", where), where, "readouts")
    heads = model.lookup("heads") if model.has("heads") else ["default"]
    if not (isinstance(heads, list) and all(isinstance(h, str) for h in heads) and heads):
        raise ConversionError(f"{where}: malformed head names {_short(heads)}")

    last_readout = readouts[-1]
    hidden = last_readout.lookup("hidden_irreps")
    mlp_scalars = _count_scalars(hidden, where) if last_readout.has("hidden_irreps") else 1
    gate = None
    activation = last_readout.lookup("non_linearity")
    if isinstance(activation, Record):
        acts = activation.lookup("acts")
        first = acts.children()[0] if isinstance(acts, Record) and acts.children() else None
        if isinstance(first, Record) and first.has("f"):
            gate = _function_name(first.lookup("f"), where)

    correlation = [_correlation(p, where) for p in products]
    hidden_irreps = _irreps_str(_child(products[0], "linear", where).lookup("irreps_out"), where)
    last_irreps = _irreps_str(_child(products[-1], "linear", where).lookup("irreps_out"), where)
    edge_irreps = model.lookup("edge_irreps") if model.has("edge_irreps") else None
    scale_shift = model.lookup("scale_shift")
    if model.name == "MACE" or not isinstance(scale_shift, Record):
        scale, shift = 1.0, 0.0
    else:
        scale = _jsonable(_tensor(scale_shift.lookup("scale"), "scale", where), where)
        shift = _jsonable(_tensor(scale_shift.lookup("shift"), "shift", where), where)
    transform = radial.lookup("distance_transform") if radial.has("distance_transform") else None
    if transform is not None and not isinstance(transform, Record):
        raise ConversionError(f"{where}: unrecognised distance transform {_short(transform)}")

    def flag(name: str, default: Any) -> Any:
        return _jsonable(model.lookup(name), where) if model.has(name) else default

    num_interactions = int(_number(model.lookup("num_interactions"), where, "num_interactions"))
    config = {
        "model_class": model.name,
        "r_max": float(_number(model.lookup("r_max"), where, "r_max")),
        "num_bessel": _num_basis(basis, where),
        "num_polynomial_cutoff": _as_int(
            _number(_child(radial, "cutoff_fn", where).lookup("p"), where, "cutoff p")
        ),
        "max_ell": _max_ell(_child(model, "spherical_harmonics", where), where),
        "interaction_cls": interactions[-1].name,
        "interaction_cls_first": interactions[0].name,
        "num_interactions": num_interactions,
        "num_elements": len(_int_list(model.lookup("atomic_numbers"), where)),
        "hidden_irreps": hidden_irreps,
        "edge_irreps": None if edge_irreps is None else _irreps_str(edge_irreps, where),
        "MLP_irreps": f"{max(1, mlp_scalars // len(heads))}x0e",
        "gate": gate,
        "use_reduced_cg": flag("use_reduced_cg", False),
        "use_so3": flag("use_so3", False),
        "use_edge_irreps_first": flag("use_edge_irreps_first", False),
        "use_agnostic_product": flag("use_agnostic_product", False),
        "use_last_readout_only": flag("use_last_readout_only", False),
        "use_embedding_readout": model.has("embedding_readout"),
        "readout_cls": last_readout.name,
        "atomic_energies": _jsonable(
            _tensor(
                _child(model, "atomic_energies_fn", where).lookup("atomic_energies"),
                "atomic_energies",
                where,
            ),
            where,
        ),
        "avg_num_neighbors": float(
            _number(interactions[0].lookup("avg_num_neighbors"), where, "avg_num_neighbors")
        ),
        "atomic_numbers": _int_list(model.lookup("atomic_numbers"), where),
        "correlation": correlation[0] if len(set(correlation)) == 1 else correlation,
        "radial_type": _RADIAL_TYPES.get(basis.name, basis.name),
        "embedding_specs": flag("embedding_specs", None),
        "apply_cutoff": flag("apply_cutoff", True),
        "radial_MLP": _radial_mlp(interactions[0], where),
        "pair_repulsion": model.has("pair_repulsion_fn"),
        "distance_transform": None
        if transform is None
        else _TRANSFORMS.get(transform.name, transform.name),
        "atomic_inter_scale": scale,
        "atomic_inter_shift": shift,
        "heads": list(heads),
        # not stored: the last layer keeps all hidden irreps instead of the scalars only
        "keep_last_layer_irreps": num_interactions > 1
        and last_irreps == hidden_irreps
        and any((l, p) != (0, 1) for _, l, p in _parse_irreps(hidden_irreps, where)),
    }
    return config


def _as_int(value: Any) -> int:
    return int(round(value)) if isinstance(value, float) else int(value)


def _int_list(value: Any, where: str) -> list[int]:
    if isinstance(value, torch.Tensor) and not value.is_floating_point():
        return [int(z) for z in value.reshape(-1).tolist()]
    raise ConversionError(f"{where}: atomic_numbers is {_short(value)}, not an integer tensor")


def _function_name(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, GlobalRef):
        return value.name
    if isinstance(value, Record):  # an activation module (torch.nn.SiLU, ...)
        return value.name
    raise ConversionError(f"{where}: unrecognised activation {_short(value)}")


def _num_basis(basis: Record, where: str) -> int:
    for name in ("bessel_weights", "gaussian_weights"):
        weights = basis.lookup(name)
        if isinstance(weights, torch.Tensor):
            return len(weights)
    if basis.has("num_basis"):
        return int(_number(basis.lookup("num_basis"), where, "num_basis"))
    raise ConversionError(f"{where}: cannot read the number of radial basis functions")


def _max_ell(harmonics: Record, where: str) -> int:
    if harmonics.has("_lmax"):
        return int(_number(harmonics.lookup("_lmax"), where, "lmax"))
    irreps = harmonics.lookup("irreps_out")
    if irreps is not None:
        return max(l for _, l, _ in _irreps_items(irreps, where))
    raise ConversionError(f"{where}: cannot read max_ell from the spherical harmonics")


def _correlation(product: Record, where: str) -> int:
    """Per layer, from the first contraction's weights (``len(weights) + 1``)."""
    contractions = _child(
        _child(product, "symmetric_contractions", where), "contractions", where, "contractions"
    )
    first = contractions.children()[0] if contractions.children() else None
    if isinstance(first, Record):
        weights = first.lookup("weights")
        if isinstance(weights, Record):
            return len([w for w in (weights.lookup("_parameters") or {}).values()]) + 1
    symmetric = _child(product, "symmetric_contractions", where)
    if symmetric.has("contraction_degree"):
        return int(_number(symmetric.lookup("contraction_degree"), where, "correlation"))
    raise ConversionError(f"{where}: cannot read the correlation order")


def _radial_mlp(interaction: Record, where: str) -> list[int]:
    """mace-torch's ``extract_radial_MLP``: the hidden widths of the first radial MLP."""
    net = interaction.lookup("conv_tp_weights")
    if not isinstance(net, Record):
        return []
    hs = net.lookup("hs")
    if isinstance(hs, list | tuple) and all(_is_int(h) for h in hs):
        return list(hs[1:-1])
    inner = net.lookup("net")
    if isinstance(inner, Record):
        layers = inner.children()
        widths = []
        for k in range(1, len(layers), 3):
            shape = layers[k].lookup("normalized_shape") if isinstance(layers[k], Record) else None
            if not (isinstance(shape, tuple | list) and shape and _is_int(shape[0])):
                return []
            widths.append(int(shape[0]))
        return widths
    return []


def read_mace_torch_model(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a mace-torch ``.model`` file (``torch.save`` of a ``ScaleShiftMACE`` or ``MACE``)
    safely: nothing from mace or e3nn is imported and nothing in the file is executed.

    Returns ``(config, state_dict)``: ``config`` is what mace-torch's
    ``extract_config_mace_model`` recovers (see :func:`config_from_records`; lengths in Å,
    energies in eV, as the model stores them), ``state_dict`` equals mace-torch's
    ``module.state_dict()`` (same keys and order, bitwise equal CPU tensors, whatever device the
    file was saved from).

    Raises :class:`UnsafeModelFile` for a file the reader refuses (a global outside the
    allowlist, a call with unexpected arguments, a zip bomb, an opcode trick),
    :class:`UnsupportedModel` for a model class other than ``ScaleShiftMACE``/``MACE``, and
    :class:`~openmace.io.mace_torch.ConversionError` for a damaged or legacy file."""
    records = load_records(path)
    config = config_from_records(records)
    state = state_dict_from_records(records)
    return config, state
