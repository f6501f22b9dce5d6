"""llama.cpp for the GGUF tests: `open_llama(path, lora_path=None)` or a skip.

Two ways to get llama.cpp from PyPI, tried in order:
- `llama_cpp` (llama-cpp-python), built from its source distribution;
- `llama-cpp-cffi`'s prebuilt CPU library (`pip install --no-deps
  llama-cpp-cffi==0.4.42 cffi`; `scripts/setup_env.sh` does it on x86-64
  Linux). Its own Python layer pins transformers < 5, so only the compiled
  module is loaded here, through the llama.h C API. The wheel is built with
  GCC 14; on an older libstdc++ (Debian 12's GCC 12) two C++ runtime symbols
  it needs are missing, and a two-function shim compiled here with `g++`
  provides them.

Both give an object with llama-cpp-python's small surface the tests use:
`reset()`, `eval(ids)`, `scores` (one row of logits per evaluated token) and
`n_tokens`.
"""

import ctypes
import importlib.util
import pathlib
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

_SHIM_SOURCE = """
#include <exception>
#include <ios>
extern "C" void __cxa_call_terminate(void*) noexcept { std::terminate(); }
namespace std { void ios_base_library_init() { static ios_base::Init init; } }
"""
_CFFI_LIB = None


def _load_shim():
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("llama-cpp-cffi needs libstdc++ >= 13 or g++ to build a shim; neither found")
    folder = pathlib.Path(tempfile.mkdtemp(prefix="kerasft-llama-shim-"))
    (folder / "shim.cpp").write_text(_SHIM_SOURCE)
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(folder / "libshim.so"), str(folder / "shim.cpp")],
        check=True, capture_output=True,
    )  # fmt: skip
    ctypes.CDLL(str(folder / "libshim.so"), mode=ctypes.RTLD_GLOBAL)


def _cffi_lib():
    """llama-cpp-cffi's compiled CPU module (`lib`, `ffi`), or a skip."""
    global _CFFI_LIB
    if _CFFI_LIB is not None:
        return _CFFI_LIB
    spec = importlib.util.find_spec("llama")
    if spec is None or spec.submodule_search_locations is None or importlib.util.find_spec("_cffi_backend") is None:
        pytest.skip("llama.cpp is not installed (llama-cpp-python, or llama-cpp-cffi with cffi)")
    candidates = list(pathlib.Path(spec.submodule_search_locations[0]).glob("_llama_cpp_cpu*.so"))
    if not candidates:
        pytest.skip("the installed `llama` package has no llama-cpp-cffi CPU module")

    def load():
        module_spec = importlib.util.spec_from_file_location("_llama_cpp_cpu", candidates[0])
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module

    try:
        module = load()
    except ImportError as error:
        if "undefined symbol" not in str(error):
            pytest.skip(f"llama-cpp-cffi's CPU module does not load here: {error}")
        _load_shim()
        try:
            module = load()
        except ImportError as still:
            pytest.skip(f"llama-cpp-cffi's CPU module does not load here, even with the shim: {still}")
    module.lib.llama_backend_init()
    _CFFI_LIB = (module.lib, module.ffi)
    return _CFFI_LIB


class _CffiLlama:
    """A llama.cpp model and context on the C API, scoring every evaluated token."""

    def __init__(self, model_path, lora_path=None, n_ctx=256, n_threads=2):
        self._lib, self._ffi = lib, ffi = _cffi_lib()
        self._model = lib.llama_model_load_from_file(str(model_path).encode(), lib.llama_model_default_params())
        if self._model == ffi.NULL:
            raise RuntimeError(f"llama.cpp could not load {model_path}")
        params = lib.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
        params.n_threads = params.n_threads_batch = n_threads
        self._context = lib.llama_init_from_model(self._model, params)
        self._vocabulary_size = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self._model))
        self._adapter = None
        if lora_path is not None:
            self._adapter = lib.llama_adapter_lora_init(self._model, str(lora_path).encode())
            if self._adapter == ffi.NULL:
                raise RuntimeError(f"llama.cpp could not load the LoRA adapter {lora_path}")
            assert lib.llama_set_adapter_lora(self._context, self._adapter, 1.0) == 0
        self.scores = np.zeros((n_ctx, self._vocabulary_size), np.float32)
        self.n_tokens = 0

    def reset(self):
        self._lib.llama_kv_self_clear(self._context)
        self.n_tokens = 0

    def eval(self, ids):
        lib, ffi = self._lib, self._ffi
        batch = lib.llama_batch_init(len(ids), 0, 1)
        try:
            batch.n_tokens = len(ids)
            for index, token in enumerate(ids):
                batch.token[index] = int(token)
                batch.pos[index] = self.n_tokens + index
                batch.n_seq_id[index] = 1
                batch.seq_id[index][0] = 0
                batch.logits[index] = 1
            status = lib.llama_decode(self._context, batch)
            if status != 0:
                raise RuntimeError(f"llama_decode returned {status}")
            for index in range(len(ids)):
                row = lib.llama_get_logits_ith(self._context, index)
                self.scores[self.n_tokens + index] = np.frombuffer(
                    ffi.buffer(row, self._vocabulary_size * 4), dtype=np.float32
                )
        finally:
            lib.llama_batch_free(batch)
        self.n_tokens += len(ids)

    def close(self):
        lib = self._lib
        if self._adapter is not None:
            lib.llama_adapter_lora_free(self._adapter)
        lib.llama_free(self._context)
        lib.llama_model_free(self._model)


def open_llama(model_path, lora_path=None, n_ctx=256):
    """llama.cpp over the GGUF at `model_path` (and a LoRA adapter GGUF), or a skip."""
    try:
        import llama_cpp
    except ImportError:
        return _CffiLlama(model_path, lora_path=lora_path, n_ctx=n_ctx)
    kwargs = {"lora_path": str(lora_path)} if lora_path is not None else {}
    return llama_cpp.Llama(
        model_path=str(model_path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=2, **kwargs
    )


def llama_logits(model_path, ids, lora_path=None):
    """llama.cpp's logits `[len(ids), vocabulary]` for token `ids` from an empty context."""
    llm = open_llama(model_path, lora_path=lora_path)
    llm.reset()
    llm.eval(ids)
    return np.asarray(llm.scores[: len(ids)])
